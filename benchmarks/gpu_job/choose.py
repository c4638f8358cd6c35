"""The pre-declared choice of a retrain's checkpoint (WORKSPACE.md, "held_out_8"). Measured: with
TensorFlow (TF_ENABLE_ONEDNN_OPTS=1) on the 2-core CPU, about 230 s a checkpoint (24 pairs, two BN
modes, 3.3 s a fuse); on the lent H200 with --backend jax, 105 s for the first (compiles for 24
image sizes) and over 65 s for the next, so run.sh leaves it to the CPU by default.

  python3 benchmarks/gpu_job/choose.py RUNS_DIR PATCHES.h5 TNO_DIR OUT_JSON \\
      [--last 3] [--backend jax|tf] [--workers N] [--held_out held_out_8]

Candidates: the newest --last checkpoints of every run directory in RUNS_DIR (those pack.py
brings back), each in four fusing modes: BN "batch" or "moving", each as the 8-bit output and
min-max stretched as the official imsave wrote it. Every candidate is scored on the pairs
PATCHES.h5 was cut from (its `sources`: the pairs it trained on); the one that beats the most of
the bar's 13 numbers there wins, ties going to the larger smallest score / bar ratio
(validate_tno.wins and margin). Only the winner is scored on the held-out set, whatever it
scores, next to the plain average. OUT_JSON records all of it; the two tables are printed and
written beside it as a .md file.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]  # benchmarks/, the repo

from ddcgan_tf import config  # noqa: E402  (TensorFlow-free modules only)
from ddcgan_tf.checkpoint import list_checkpoints  # noqa: E402
from ddcgan_tf import images  # noqa: E402
from ddcgan_tf.patches import near_copies, source_names  # noqa: E402
from validate_tno import load_scenes, make_pool, margin, table, validate, wins  # noqa: E402

MODES = ("batch", "moving")
RULE = ("every candidate (checkpoint x BN mode x stretch) scored on its training pairs; the most of "
        "the 13 bar numbers beaten wins, ties to the larger smallest score/bar ratio; only the "
        "winner is scored on the held-out set")


def candidates(runs_dir, last):
    """[(run, checkpoint path)]: the newest `last` ckpt-*.h5 of each run directory, by run name."""
    out = []
    for run in sorted(os.listdir(runs_dir)):
        d = os.path.join(runs_dir, run)
        if os.path.isdir(d):
            out += [(run, path) for _, path in list_checkpoints(d)[-last:]]
    return out


def pick(scored):
    """The rule: the key of the entry that beats the most of the bar's numbers, ties going to the
    larger smallest score / bar ratio."""
    return max(scored, key=lambda k: _rank(scored[k]))


def _rank(entry):
    return len(entry["beats"]), entry["min_ratio"]


def choose(runs_dir, patches, tno_dir, last=3, backend="jax", pool=None, held_out="held_out_8", log=print):
    """-> the record written to OUT_JSON (see the module docstring)."""
    dirs = os.path.join(tno_dir, "vis"), os.path.join(tno_dir, "ir")
    trained, held = source_names(patches), list(config.TNO_SPLITS[held_out])
    seen = sorted(set(trained) & set(held))
    if seen:
        raise SystemExit(f"{patches}: was cut from held-out scenes {seen}; choose on a set without them")
    pairs = images.pair_by_name(*dirs)  # a held-out scene under another name (patches.near_copy)
    copies = near_copies([p for p in pairs if p[0] in set(trained)], [p for p in pairs if p[0] in set(held)])
    if copies:
        raise SystemExit(f"{patches}: was cut from near-copies of held-out scenes "
                         f"{[(c[0], c[1]) for c in copies]}; choose on a set without them")
    found = candidates(runs_dir, last)
    if not found:
        raise SystemExit(f"{runs_dir}: no ckpt-*.h5 in any run directory")
    t0 = time.time()
    scenes = list(load_scenes(trained, *dirs))  # read once, scored for every candidate
    scored = {}
    for run, path in found:
        r = validate(path, modes=MODES, stretch=True, backend=backend, pool=pool, baseline=False,
                     log=lambda *a: None, scenes=scenes)
        for method, res in r.items():
            scored[f"{run}/{os.path.basename(path)} {method}"] = {
                "run": run, "checkpoint": os.path.basename(path), "method": method, "mean": res["mean"],
                "beats": wins(res["mean"]), "min_ratio": margin(res["mean"])}
        log(f"scored {run}/{os.path.basename(path)} on {len(trained)} training pairs ({time.time() - t0:.0f} s)")
    baseline = validate(None, modes=(), stretch=True, pool=pool, log=lambda *a: None, scenes=scenes)
    best = pick(scored)
    chosen = scored[best]
    bn, _, stretch = chosen["method"].partition("+")
    path = os.path.join(runs_dir, chosen["run"], chosen["checkpoint"])
    res = validate(path, held, *dirs, modes=(bn,), stretch=bool(stretch), backend=backend, pool=pool,
                   log=lambda *a: None)
    held_results = {m: res[m] for m in (chosen["method"], "average" + ("+stretch" if stretch else ""))}
    mean = held_results[chosen["method"]]["mean"]
    log(f"chose {best}; scored it on {held_out} ({time.time() - t0:.0f} s in all)")
    return {"rule": RULE, "trained_pairs": trained, "candidates": scored, "chosen": best,
            "trained_baseline": {m: r["mean"] for m, r in baseline.items()},
            "held_out": {"set": held_out, "names": held, "method": chosen["method"],
                         "checkpoint": f"{chosen['run']}/{chosen['checkpoint']}",
                         "mean": mean, "beats": wins(mean), "min_ratio": margin(mean),
                         "results": held_results},
            "backend": backend, "seconds": round(time.time() - t0, 1)}


def report(record):
    """The two markdown tables: the candidates on their training pairs (best first), the winner
    on the held-out set."""
    order = sorted(record["candidates"], key=lambda k: _rank(record["candidates"][k]), reverse=True)
    rows = {k: record["candidates"][k] for k in order}
    rows.update({f"{m} (baseline)": {"mean": v} for m, v in record["trained_baseline"].items()})
    h = record["held_out"]
    return "\n".join([
        f"## Candidates on their {len(record['trained_pairs'])} training pairs", "", table(rows), "",
        f"Chosen by the rule ({record['rule']}): **{record['chosen']}**", "",
        f"## The chosen one on {h['set']} ({', '.join(h['names'])})", "",
        table({f"{h['checkpoint']} {m}" if m == h["method"] else m: r for m, r in h["results"].items()}), ""])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_dir")
    ap.add_argument("patches", help="the patch set the runs trained on (its sources are scored)")
    ap.add_argument("tno_dir", help="holding vis/ and ir/")
    ap.add_argument("out_json")
    ap.add_argument("--last", type=int, default=3, help="checkpoints per run (newest)")
    ap.add_argument("--backend", choices=("jax", "tf"), default="jax")
    ap.add_argument("--workers", type=int, default=1, help="processes to score in")
    ap.add_argument("--held_out", default="held_out_8", choices=list(config.TNO_SPLITS))
    args = ap.parse_args(argv)
    if args.backend == "jax":  # score float32 outputs, as TensorFlow on the CPU gives users (no TF32)
        import jax
        jax.config.update("jax_default_matmul_precision", "highest")
    with make_pool(args.workers) as pool:
        record = choose(args.runs_dir, args.patches, args.tno_dir, args.last, args.backend, pool, args.held_out)
    with open(args.out_json, "w") as f:
        json.dump(record, f, indent=1)
    text = report(record)
    with open(os.path.splitext(args.out_json)[0] + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
