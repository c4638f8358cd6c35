"""Validates a training checkpoint on its held-out pairs and ships it.

  python benchmarks/ship.py --checkpoint runs/tno/ckpt-00000900.h5 --model_dir runs/tno \
      --command "ddcgan-train ..." [--mode pet-mri] [--notes "..."] [--bn_mode moving] [--stretch]
      [--state runs/tno/ckpt-00001200.h5] [--names held_out_8] [--dry_run]

vis-ir is scored on the held-out TNO scenes next to the official DDcGAN numbers; pet-mri on the
held-out MRI/PET pairs 13 and 14 (there is no official bar for it).
Writes checkpoints/<mode>/{generator.h5, train_state.h5, manifest.json} (ddcgan_tf.shipped.ship).
The manifest keeps the data description of the manifest it replaces and adds up the wall time:
the replaced manifest's `wall_time_s` plus the batches of model_dir/steps.jsonl after its
`steps` (a gap over 10 minutes between two batches, a restart, counts as one median batch).
A fine-tune of the shipped weights (`ddcgan-train --init_from checkpoints/<mode>`) counts its
batches from 0: its manifest keeps `steps` (this run's, which resume uses), adds all of its
batches to the wall time, records the replaced manifest's run under `init_from` and the
batches of the whole history as `total_steps`.
"""
import argparse
import json
import os

import numpy as np

from ddcgan_tf.callbacks import read_step_log
from ddcgan_tf.checkpoint import PATTERN, warm_start_file
from ddcgan_tf.config import TNO_NEAR_COPIES
from ddcgan_tf.patches import source_names
from ddcgan_tf.record import TF_TRAINER, batch_ranges, segments
from ddcgan_tf.shipped import CHECKPOINT_ROOT, MANIFEST_FILE, ship, this_machine
from validate_tno import HELD_OUT, NAMES_HELP, OFFICIAL, SHARED, TNO, resolve_names, table, validate

# mode -> (held-out names, high-resolution folder, low-resolution folder)
HELD_OUT_PAIRS = {
    "vis-ir": (HELD_OUT, os.path.join(TNO, "vis"), os.path.join(TNO, "ir")),
    "pet-mri": (("13", "14"), os.path.join(SHARED, "medical", "mri"), os.path.join(SHARED, "medical", "pet")),
}


def training_seconds(logged, after_step):
    """Seconds of the logged batches (steps.jsonl rows) after after_step."""
    times = [r["time"] for r in logged if r["step"] > after_step]
    gaps = np.diff(times)
    if not len(gaps):
        return 0.0
    typical = float(np.median(gaps))
    return float(np.sum(np.where(gaps > 600, typical, gaps)) + typical)


def shipped_data(previous_data, held_out, patch_set):
    """The manifest's `data`: the replaced manifest's description, with this run's held-out names
    (vis-ir) and, when the run's patch set is here, its training pairs and the near-copies of
    held-out scenes among them (config.TNO_NEAR_COPIES; a clean set has none)."""
    data = {k: v for k, v in previous_data.items() if k not in ("near_copies_trained_on", "trained_pairs")}
    if held_out is None:
        return data
    data["held_out"] = list(held_out)
    if patch_set and os.path.exists(patch_set):
        trained = source_names(patch_set)
        data["trained_pairs"] = trained
        copies = {h: c for h in held_out for c in TNO_NEAR_COPIES.get(h, ()) if c in trained}
        if copies:
            data["near_copies_trained_on"] = copies
    return data


def history(previous, config, rows, steps, shipped_state=None):
    """How a checkpoint at batch `steps` of a run (its config.json, its steps.jsonl rows) follows
    the manifest it replaces: (lineage fields, the batches before this run, wall time in seconds,
    the run's first logged time, its first logged batch, whether it is the shipped run itself).
    shipped_state: the file `--init_from checkpoints/<mode>` reads (for a fine-tune's check).
    ValueError when the run's history is unknown here."""
    logged = [r for r in rows if r["step"] <= steps]
    started = logged[0]["time"] if logged else None  # identifies the run across its ships
    first = logged[0]["step"] if logged else 1
    same_run = previous.get("run_started") == started
    if config.get("init_from") and not same_run:
        # A fine-tune (--init_from) counts its batches from 0; record what it started from.
        if os.path.realpath(config["init_from"]) != os.path.realpath(shipped_state or ""):
            raise ValueError(f"started from {config['init_from']}, not from the shipped weights, so its "
                             f"history is unknown here")
        kept = ("command", "notes", "steps", "total_steps", "epochs", "wall_time_s", "train",
                "source_checkpoint", "init_from")
        lineage = {"init_from": {k: previous[k] for k in kept if k in previous}}
        previous_steps = previous.get("total_steps", previous["steps"])
        wall = previous["wall_time_s"] + training_seconds(logged, 0)
    elif not same_run and first == 1:  # a new run from fresh weights: no history
        lineage, previous_steps, wall = {}, 0, training_seconds(logged, 0)
    else:  # the run the replaced manifest shipped, further on: from its generator's batch, or
        # from the later full state it shipped (README: resume from checkpoints/<mode>/train_state.h5)
        ended = previous["steps"]
        if not same_run and first == previous.get("state_steps", -1) + 1:
            ended = previous["state_steps"]
        if not same_run and first != ended + 1:
            raise ValueError(f"its log starts at batch {first}, but the shipped run ended at {previous['steps']} "
                             f"(state {previous.get('state_steps', previous['steps'])}), so its history is "
                             f"unknown here")
        lineage = {k: previous[k] for k in ("init_from",) if k in previous}
        if ended > previous["steps"]:  # the shipped manifest timed its generator's batches only
            lineage["untimed_batches"] = f"{previous['steps'] + 1}-{ended}"
        previous_steps = previous.get("total_steps", previous["steps"]) - previous["steps"]
        if same_run and steps < ended:  # an earlier checkpoint of the shipped run: its batches after
            # `steps` come off the shipped wall time
            wall = previous["wall_time_s"] - training_seconds([r for r in rows if r["step"] <= ended], steps)
        else:
            wall = previous["wall_time_s"] + training_seconds(logged, ended)
    return lineage, previous_steps, wall, started, first, same_run


def machine_history(config, previous_machine, first, steps, same_run):
    """The manifest's `machine`: which trainer on which device ran batches 1..steps, by range.

    This run's batches, from `first` (its first logged batch), come from its config.json
    segments (ddcgan_tf.record; batches no segment covers: "unknown"); a record older than
    segments names one trainer for the run (the JAX trainer's `trainer`/`device`, else
    ddcgan-train here). A run that goes on with the
    shipped one (first > 1: the same run, or resumed from its train_state.h5) keeps the replaced
    manifest's entries before `first`; resumed from the state (not `same_run`), the last of those
    is extended to first - 1, since the state's batches ran where its last segment did."""
    if "segments" in config:
        segs = segments(config)
    else:
        where = ({"trainer": config["trainer"], "device": config.get("device")} if config.get("trainer")
                 else dict(this_machine(), trainer=TF_TRAINER))
        segs = [{"first_batch": first, **where}]
    # this run's batches start at `first`: what ran before belongs to the shipped history, and a
    # gap (config.json lost mid-run) is named, not dropped
    covering = [s for s in segs if s["first_batch"] <= first]
    segs = ([dict(covering[-1], first_batch=first)] if covering else
            [{"first_batch": first, "trainer": "unknown (config.json lost)"}]) + [
        s for s in segs if s["first_batch"] > first]
    earlier = []
    if first > 1:
        earlier = previous_machine if isinstance(previous_machine, list) else [
            dict(previous_machine, batches=f"1-{first - 1}")]
        # a re-ship of the same run replaces its own entries
        earlier = [dict(m) for m in earlier if int(m["batches"].split("-")[0]) < first]
        if earlier and not same_run:
            earlier[-1]["batches"] = f"{earlier[-1]['batches'].split('-')[0]}-{first - 1}"
    return earlier + batch_ranges(segs, steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="a ckpt-*.h5 training checkpoint")
    ap.add_argument("--model_dir", required=True, help="its run directory (steps.jsonl, config.json)")
    ap.add_argument("--command", required=True, help="the ddcgan-train command that resumes it")
    ap.add_argument("--mode", choices=sorted(HELD_OUT_PAIRS), default="vis-ir")
    ap.add_argument("--names", help="held-out scenes the run never saw (vis-ir default: held_out_8); "
                    + NAMES_HELP)
    ap.add_argument("--notes", default="")
    ap.add_argument("--bn_mode", choices=["batch", "moving"],
                    help="BN statistics the shipped generator fuses with (default: the checkpoint's)")
    ap.add_argument("--state", help="the run's full state to ship as train_state.h5 when --checkpoint "
                    "is an earlier (or generator-only) checkpoint of the same run; the manifest's "
                    "steps and wall time are the generator's, state_steps the state's")
    ap.add_argument("--stretch", action="store_true",
                    help="ship the generator writing min-max stretched output (ddcgan-fuse's default "
                         "for it) and score the stretched output too")
    ap.add_argument("--dry_run", action="store_true", help="validate and print; ship nothing")
    args = ap.parse_args()

    previous = json.load(open(os.path.join(CHECKPOINT_ROOT, args.mode, MANIFEST_FILE)))
    config = json.load(open(os.path.join(args.model_dir, "config.json")))
    match = PATTERN.match(os.path.basename(args.checkpoint))
    if not match:
        ap.error(f"{args.checkpoint}: not a ckpt-<batch>.h5 training checkpoint")
    steps = int(match.group(1))
    names, high_dir, low_dir = HELD_OUT_PAIRS[args.mode]
    names = resolve_names(args.names, high_dir) if args.names else list(names)
    has_bar = args.mode == "vis-ir"  # the official numbers are for visible/infrared only
    results = validate(args.checkpoint, names, high_dir, low_dir, stretch=args.stretch)
    print(table(results, official=has_bar))
    rows = read_step_log(os.path.join(args.model_dir, "steps.jsonl"))
    try:
        shipped_state = (warm_start_file(os.path.join(CHECKPOINT_ROOT, args.mode))  # what --init_from read
                         if config.get("init_from") else None)
        lineage, previous_steps, wall, started, first, same_run = history(previous, config, rows, steps, shipped_state)
    except ValueError as e:
        ap.error(f"{args.model_dir}: {e}")
    data = shipped_data(previous["data"], names if args.mode == "vis-ir" else None, config.get("data"))
    run_info = {
        "batch_size": config["batch_size"], "command": args.command, "data": data,
        "patches": config["patches"], "steps": steps, "steps_per_epoch": config["steps_per_epoch"],
        "epochs": round(steps / config["steps_per_epoch"], 4), "wall_time_s": round(wall, 1),
        "mixed_precision": config.get("mixed_precision", "float32"), "notes": args.notes,
        "total_steps": previous_steps + steps, "run_started": started, **lineage,
    }
    if args.state:
        state_match = PATTERN.match(os.path.basename(args.state))
        if not state_match or int(state_match.group(1)) < steps:
            ap.error(f"{args.state}: not a ckpt-<batch>.h5 of this run at or after batch {steps}")
        run_info["state_steps"] = int(state_match.group(1))
    run_info["machine"] = machine_history(config, previous["machine"], first, steps, same_run)
    bar = {"official_ddcgan_20_pairs": OFFICIAL} if has_bar else {}
    validation = {"protocol": previous["validation"].get("protocol"), "scenes": list(names), **bar,
                  **{(m.replace("average", "average_fusion_baseline") if m.startswith("average") else f"bn_{m}"):
                     r["mean"] for m, r in results.items()}}
    if args.bn_mode or args.stretch:  # which of the scored ways of fusing ddcgan-fuse will use
        validation["shipped_as"] = f"bn_{args.bn_mode or config['model'].get('bn_mode', 'batch')}" + (
            "+stretch" if args.stretch else "")
    print(json.dumps(run_info, indent=1))
    if not args.dry_run:
        print("shipped to", ship(args.checkpoint, args.mode, run_info, validation, bn_mode=args.bn_mode,
                                     stretch=args.stretch or None, state=args.state))


if __name__ == "__main__":
    main()
