#!/bin/bash
# GPU device job (runs there, JAX without TensorFlow): builds the TNO patch set without the
# held-out scenes, trains three runs side by side with benchmarks/jax_train.py for SECONDS each,
# and packs them into OUT for the trip back (pack.py). Staged by stage.sh.
#   usage: bash benchmarks/gpu_job/run.sh SECONDS OUT [HELD_OUT_SET]
# The choice among the checkpoints (choose.py, the rule WORKSPACE.md declares) runs here on the
# CPU afterwards, not on the GPU: measured on the second lease (one H200), choose.py scored one
# candidate in 105 s and timed out on the second at 170 s, while TensorFlow with oneDNN on the
# 2-core CPU scores one in about 230 s (8 candidates: 31 min), so device time goes to training.
# CHOOSE_SECS=N (default 0: skipped) still runs it there, bounded by `timeout` so the pack runs.
# Within the device tool's 600 s a call: SECONDS 540 leaves about 20 s for the patch set, JAX
# start-up and compiles, and the pack, and 40 s to spare.
# A smoke test on a CPU: TNO=<a folder with a few pairs, the 8 held-out scenes and Movie_14 among
# them: the patch set excludes them by name> JAX_ARGS="--batch_size 2 --max_repeats 1 --steps 2
# --checkpoint_every 1" (JAX_ARGS is appended to every run's flags).
# HELD_OUT_SET: a key of ddcgan_tf.config.TNO_SPLITS (default held_out_8).
# The runs, all from the same fresh state (.gpu/init.h5), I_max 20, seed 311, a checkpoint every
# 1000 batches. Restaged 2026-11-28 after the third lease: the official recipe run 8000-10000
# batches from three data orders (rep20b, rep20_alt, rep20_altc, WORKSPACE "The third GPU
# lease") never reached the bar's EN, SD or SCD even on its training pairs, so these change what
# is trained, towards the contrast and SCD the CPU probes moved (WORKSPACE: the lambda 0.5 and
# paper-threshold probes, and the alternation probe):
#   alt_cw05    the official alternation with the paper's lambda 0.5 (more adversarial weight)
#   alt_paper   the same with the paper's thresholds too, L_max 1.8 and L_min 1.2 (the probe
#               with the highest SCD); lr, decay, clipping and L_Gmax 200 stay official
#   paper       the paper preset (Algorithm 1: every net every batch, relative L_Gmax 0.8,
#               decay 0.75 per epoch) at the official lr 2e-4 with clipping 8: at its own lr 2e-3
#               it went non-finite within 11 batches on the first lease. Its relative L_Gmax
#               rarely stops G before I_max (20 G steps on a CPU batch), so it may run ~1000
#               batches: a checkpoint every 250 (an estimate, not measured on the GPU)
# The rule, fixed before the runs: choose.py on the training pairs (all three runs' returned
# checkpoints, four modes each); the winner is scored on held_out_8 and replaces the shipped
# weights only if it beats more than 8 of the 13 numbers there.
set -u
SECS=${1:?SECONDS}; O=${2:?OUT}; SET=${3:-held_out_8}; TNO=${TNO:-.gpu/tno}; X=${JAX_ARGS:-}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.28
nvidia-smi -L 2>/dev/null; python3 -c "import jax; print(jax.__version__, jax.devices())"
# /tmp/gpu_job is kept between calls: on a warm machine a second run.sh resumes the runs there
# (jax_train.py picks up a run folder's newest checkpoint); rm -rf it first for fresh runs
W=/tmp/gpu_job; mkdir -p $W
python3 -c "
from ddcgan_tf import config
from ddcgan_tf.patches import build_patch_set
held = config.tno_training_exclude('$SET')  # the split's scenes and their near-copies
print('left out:', ','.join(held))
s = build_patch_set('$TNO/vis', '$TNO/ir', '$W/tno.h5', exclude=held, log=lambda *a: None)
print(s['patches'], 'patches from', s['pairs'], 'pairs; skipped', [k['name'] for k in s['skipped']])
" || exit 1
T="python3 benchmarks/jax_train.py --data $W/tno.h5 --init .gpu/init.h5 --steps 10000000 --max_seconds $SECS --log_every 100 --checkpoint_every 1000"
$T --model_dir $W/alt_cw05 --preset official --max_repeats 20 --content_weight 0.5 --seed 311 $X > $W/alt_cw05.log 2>&1 &
$T --model_dir $W/alt_paper --preset official --max_repeats 20 --content_weight 0.5 --l_max 1.8 --l_min 1.2 --seed 311 $X > $W/alt_paper.log 2>&1 &
$T --model_dir $W/paper --preset paper --learning_rate 2e-4 --clip_value 8 --checkpoint_every 250 --seed 311 $X > $W/paper.log 2>&1 &
wait
tail -n 2 $W/*.log
# the pre-declared choice among the runs' newest 3 checkpoints (choose.py), only if CHOOSE_SECS > 0;
# autotuning is off: each image size compiles once for a ~20 ms forward pass
if [ "${CHOOSE_SECS:-0}" -gt 0 ]; then
    XLA_FLAGS=--xla_gpu_autotune_level=0 timeout $CHOOSE_SECS python3 benchmarks/gpu_job/choose.py \
        $W $W/tno.h5 $TNO $W/choice.json --backend jax --workers ${WORKERS:-14} --held_out $SET > $W/choose.log 2>&1
    echo "choose.py: exit $?"; tail -n 30 $W/choose.log
fi
python3 benchmarks/gpu_job/pack.py $W "$O"
ls -la "$O"
