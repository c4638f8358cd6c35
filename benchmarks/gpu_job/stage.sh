#!/bin/bash
# Stages a GPU device job, here (needs TensorFlow and ../shared): copies the TNO pairs and a fresh
# initial state into .gpu/, which git ignores and the device `run` carries (about 20 MB; the
# working tree that travels must stay under 64 MiB). Then, with the device tool:
#   run(command="bash benchmarks/gpu_job/run.sh 300 $OUT", carry=[".gpu"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/tno
cp -r ../shared/data/tno/vis ../shared/data/tno/ir .gpu/tno/
[ -f .gpu/init.h5 ] || python benchmarks/jax_train.py --write_init .gpu/init.h5 --seed 300
du -sh .gpu
