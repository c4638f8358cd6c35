#!/bin/bash
# Stages a GPU device job, here (needs TensorFlow and ../shared): copies the TNO pairs and a fresh
# initial state into .gpu/, which git ignores and the device `run` carries (about 20 MB; the
# working tree that travels must stay under 64 MiB: pack.py --room, last below, says which
# committed files to set aside for the call when the checkpoints and the carry pass it).
# Then, with the device tool:
#   run(command="bash benchmarks/gpu_job/run.sh 540 $OUT", carry=[".gpu/tno", ".gpu/init.h5"],
#       timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/tno
cp -r ../shared/data/tno/vis ../shared/data/tno/ir .gpu/tno/
[ -f .gpu/init.h5 ] || python benchmarks/jax_train.py --write_init .gpu/init.h5 --seed 300
du -sh .gpu/tno .gpu/init.h5
python benchmarks/gpu_job/pack.py --room .gpu/tno .gpu/init.h5
