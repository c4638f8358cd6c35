"""Loss curves of a training run from its MODEL_DIR/steps.jsonl, as a markdown table.

  python benchmarks/loss_curves.py runs/tno [--every 20]

Each row averages the batches of one window: the losses, the discriminator scores and the
number of steps each net took per batch (the adaptive schedule at work).
"""
import argparse
import os

import numpy as np

from ddcgan_tf.callbacks import read_step_log

COLUMNS = ("g_loss", "g_adv", "ir_loss", "grad_loss", "dv_loss", "di_loss", "dv_fake", "di_fake",
           "dv_steps", "di_steps", "g_steps", "lr")


def table(rows, every):
    lines = ["| steps | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for start in range(0, len(rows), every):
        window = rows[start:start + every]
        means = [np.mean([r[k] for r in window]) for k in COLUMNS]
        lines.append(f"| {window[0]['step']}-{window[-1]['step']} | "
                     + " | ".join(f"{m:.3g}" for m in means) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--every", type=int, default=20)
    args = ap.parse_args()
    rows = read_step_log(os.path.join(args.model_dir, "steps.jsonl"))
    print(table(rows, args.every))
    times = [r["time"] for r in rows if "time" in r]
    if len(times) > 1:
        print(f"\n{len(rows)} batches; {(times[-1] - times[0]) / (len(times) - 1):.1f} s per batch")


if __name__ == "__main__":
    main()
