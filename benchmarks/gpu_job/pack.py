"""Packs the device job's run directories for the trip back (at most 8 files, 64 MiB together).

  python3 benchmarks/gpu_job/pack.py RUNS_DIR OUT

Per run: its newest checkpoint whole (to resume from), as OUT/<run>_ckpt-N.h5, and up to two
earlier ones as generator-only files (to score) in OUT/<run>_gens.tar; and one OUT/logs.tar of
every run's steps.jsonl, config.json and stdout, and of choose.py's choice.json / choice.md and
its log when RUNS_DIR holds them. Generator files are left out, oldest first, while the total would pass
BUDGET; the chosen checkpoint's is kept before any other.
"""
import json
import os
import sys
import tarfile

import h5py

from ddcgan_tf.checkpoint import list_checkpoints  # TensorFlow-free, as jax_train.py uses it

BUDGET = 60 * 2**20
EARLIER = 2


def generator_only(src, dst):
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        a.copy("generator", b)
        b.attrs.update(dict(a.attrs))


def main(src, out):
    os.makedirs(out, exist_ok=True)
    runs = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    total, earlier = 0, []
    chosen = None
    if os.path.exists(os.path.join(src, "choice.json")):
        with open(os.path.join(src, "choice.json")) as f:
            chosen = tuple(json.load(f)["held_out"]["checkpoint"].split("/"))  # (run, ckpt-N.h5)
    with tarfile.open(os.path.join(out, "logs.tar"), "w") as logs:
        for name in ("choice.json", "choice.md", "choose.log"):
            if os.path.exists(os.path.join(src, name)):
                logs.add(os.path.join(src, name), name)
        for run in runs:
            d = os.path.join(src, run)
            for name in ("steps.jsonl", "config.json"):
                if os.path.exists(os.path.join(d, name)):
                    logs.add(os.path.join(d, name), f"{run}/{name}")
            if os.path.exists(os.path.join(src, run + ".log")):
                logs.add(os.path.join(src, run + ".log"), f"{run}/stdout.log")
            ckpts = list_checkpoints(d)  # [(batch, path)], oldest first
            if not ckpts:
                continue
            newest = os.path.join(out, f"{run}_{os.path.basename(ckpts[-1][1])}")
            os.replace(ckpts[-1][1], newest)
            total += os.path.getsize(newest)
            for batch, path in ckpts[:-1][-EARLIER:]:
                g = os.path.join(d, "gen-" + os.path.basename(path))
                generator_only(path, g)
                earlier.append((batch, run, os.path.basename(path), g))
    kept = {}
    # the chosen one first, then the newest batches
    for _, run, n, g in sorted(earlier, key=lambda e: ((e[1], e[2]) == chosen, e[0]), reverse=True):
        if total + os.path.getsize(g) <= BUDGET:
            total += os.path.getsize(g)
            kept.setdefault(run, []).append((n, g))
        else:
            print(f"left out {run}/{n}: over the {BUDGET >> 20} MiB budget")
    for run, items in kept.items():
        with tarfile.open(os.path.join(out, f"{run}_gens.tar"), "w") as t:
            for n, g in items:
                t.add(g, f"{run}/{n}")
    print(f"packed {len(runs)} runs, {total / 2**20:.1f} MiB of checkpoints")


if __name__ == "__main__":
    main(*sys.argv[1:3])
