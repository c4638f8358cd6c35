"""Can any simple hand-made fusion beat the official bar on every metric, on a set of TNO scenes?

  python benchmarks/bar_frontier.py                       # the three held-out scenes
  python benchmarks/bar_frontier.py --names held_out_8 --evals 100

A feasibility check for the weights issue's bar, with no network involved. It searches a family
of fusions tuned with the bar in view (an oracle that a trained generator cannot be):

  F = clip(mu + g * (a * vis + (1 - a) * ir_up + k * (vis - gauss(vis, s)) - mu), 0, 1)
  F = (1 - t) * F + t * equalize(F)        then the 8-bit file, optionally min-max stretched

(a: the visible weight, k: visible high-pass gain, g: contrast gain about the image mean mu,
t: share of histogram equalization), scores each member with validate_tno's metrics, and
maximizes the smallest ratio score / bar over the 13 numbers (above 1 = beats every one).
It prints the best member and the one that beats the most numbers. If even this oracle
cannot beat all 13 on a scene set, the set asks for more than the official outputs showed
(the bar comes from 20 other test pairs), whatever the weights.
"""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.ndimage as ndimage  # noqa: E402

from ddcgan_tf import images  # noqa: E402

import validate_tno  # noqa: E402
from validate_tno import margin, wins  # noqa: E402

BOUNDS = {"a": (0.1, 0.8), "k": (0.0, 1.5), "g": (1.0, 2.5), "t": (0.0, 0.8)}
SIGMAS = (1.0, 2.0, 4.0)


def equalize(img):
    """Histogram equalization by rank (ties broken by position), to [0, 1]."""
    ranks = np.empty(img.size)
    ranks[np.argsort(img.ravel(), kind="stable")] = np.arange(img.size)
    return (ranks / (img.size - 1)).reshape(img.shape)


def fuse(vis, up, a, k, s, g, t, stretch):
    f = a * vis + (1 - a) * up + k * (vis - ndimage.gaussian_filter(vis, s))
    mu = f.mean()
    f = np.clip(mu + g * (f - mu), 0, 1)
    f = (1 - t) * f + t * equalize(f)
    return images.to_uint8(f, stretch=stretch) / 255.0


def evaluate(scenes, p):
    """Mean of validate_tno.score over the scenes for parameters p."""
    per = [validate_tno.score(fuse(vis, up, **p), vis, ir) for vis, ir, up in scenes]
    mean = validate_tno.mean_scores(per)
    return {key: mean[key] for key in validate_tno.OFFICIAL}


def search(scenes, evals, seed=0, log=print):
    """Random search, then shrinking local perturbations around the best; -> [(p, mean)]."""
    rng = np.random.default_rng(seed)

    def draw(centre=None, width=1.0):
        p = {}
        for key, (lo, hi) in BOUNDS.items():
            x = rng.uniform(lo, hi) if centre is None else centre[key] + rng.normal(0, width * (hi - lo) / 4)
            p[key] = float(np.clip(x, lo, hi))
        p["s"] = float(rng.choice(SIGMAS)) if centre is None or rng.random() < 0.2 else centre["s"]
        p["stretch"] = bool(rng.random() < 0.5) if centre is None or rng.random() < 0.2 else centre["stretch"]
        return p

    tried = []
    best = None
    for i in range(evals):
        explore = i < evals // 3 or best is None
        p = draw() if explore else draw(best[0], width=max(0.1, 1.0 - i / evals))
        mean = evaluate(scenes, p)
        tried.append((p, mean))
        if best is None or margin(mean) > margin(best[1]):
            best = (p, mean)
            log(f"eval {i + 1}: margin {margin(mean):.3f}, beats {len(wins(mean))} of {len(validate_tno.OFFICIAL)}, "
                f"{describe(p)}")
    return tried


def describe(p):
    return (f"a={p['a']:.2f} k={p['k']:.2f} s={p['s']:g} g={p['g']:.2f} t={p['t']:.2f}"
            + (" stretched" if p["stretch"] else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", default="held_out", help=validate_tno.NAMES_HELP)
    ap.add_argument("--vis_dir", default=os.path.join(validate_tno.TNO, "vis"))
    ap.add_argument("--ir_dir", default=os.path.join(validate_tno.TNO, "ir"))
    ap.add_argument("--evals", type=int, default=300, help="fusions to score")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = validate_tno.resolve_names(args.names, args.vis_dir)
    scenes = [scene[1:] for scene in validate_tno.load_scenes(names, args.vis_dir, args.ir_dir)]
    print(f"{len(scenes)} scenes, {args.evals} fusions")
    tried = search(scenes, args.evals, args.seed)
    by_margin = max(tried, key=lambda r: margin(r[1]))
    by_wins = max(tried, key=lambda r: (len(wins(r[1])), margin(r[1])))
    rows = {"best smallest ratio: " + describe(by_margin[0]): {"mean": by_margin[1]},
            "most numbers beaten: " + describe(by_wins[0]): {"mean": by_wins[1]}}
    print(validate_tno.table(rows))
    for label, (p, mean) in (("best smallest ratio", by_margin), ("most numbers beaten", by_wins)):
        lost = [k for k in validate_tno.OFFICIAL if k not in wins(mean)]
        print(f"{label}: beats {len(validate_tno.OFFICIAL) - len(lost)} of {len(validate_tno.OFFICIAL)}; short on {', '.join(lost) or 'nothing'}; "
              f"smallest ratio {margin(mean):.3f}")
    reach = {k: max(m[k] for _, m in tried) for k in validate_tno.OFFICIAL}
    print("best of each number over all fusions tried: "
          + ", ".join(f"{k} {v:.3g}" for k, v in reach.items()))


if __name__ == "__main__":
    main()
