"""Scores a generator on held-out TNO scenes (multi-resolution setting), next to baselines.

  python benchmarks/validate_tno.py --checkpoint runs/tno [--names a,b,c] [--json out.json]
  python benchmarks/validate_tno.py --checkpoint runs/pet --vis_dir medical/mri \
      --ir_dir medical/pet --names 13,14          # PET-MRI (PET already at 1/4)
  python benchmarks/validate_tno.py --names all --modes ""   # the average baseline, every pair

For each scene: the visible image is cropped to a multiple of 4, the infrared image is
downsampled 4x the way training does (scipy zoom 1/4), the pair is fused with BN in "batch"
and in "moving" mode, and every metric is computed (default convention: grey 0..255, MI in
bits, SSIM/CC averaged over the two sources, the infrared upsampled bicubically), plus
PSNR_lr / SSIM_lr of the fused image average-pooled 4x against the low-resolution infrared.
The average fusion (VIS + bicubic IR) / 2 is scored the same way as a baseline.
With --stretch each method is also scored after the official output step: the official
generate.py saves the float output with scipy.misc.imsave, which min-max stretches every image
to 0..255 (scipy.misc.bytescale), so the published DDcGAN images, and the bar, went through it.
--backend jax fuses with the JAX transcription (jax_train.Fuser, same outputs to ~1e-5) on
machines without TensorFlow; --workers N scores in N processes.
"""
import argparse
import contextlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ddcgan_tf import config, images, metrics  # noqa: E402  (TensorFlow-free modules only:
from ddcgan_tf.patches import fit_sizes, source_names  # noqa: E402  --backend jax runs without it)

HELD_OUT = config.TNO_HELD_OUT_8  # what the shipped vis-ir weights never saw
# held_out (3 scenes) is for the earlier weights trained on the other 31 pairs
NAMES_HELP = ('comma list of stems, "all" pairs, "trained:PATCHES.h5" (the pairs a patch set was cut '
              'from), or a named set: ' + ", ".join(config.TNO_SPLITS))
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
TNO = os.path.join(SHARED, "tno")
# The official DDcGAN outputs on 20 multi-resolution TNO test pairs (issue "pretrained weights").
OFFICIAL = {"EN": 7.47, "SD": 48.3, "SF": 13.7, "AG": 5.78, "MI": 1.66, "SCD": 1.64, "VIF": 0.54,
            "Qabf": 0.38, "SSIM": 0.56, "CC": 0.50, "PSNR": 12.9, "PSNR_lr": 14.8, "SSIM_lr": 0.43}


def resolve_names(names, vis_dir):
    """--names: a named set, "all" (every image in vis_dir), "trained:PATCHES.h5" (the pairs that
    patch set was cut from), or a comma list of stems."""
    if names in config.TNO_SPLITS:
        return list(config.TNO_SPLITS[names])
    if names.startswith("trained:"):
        return source_names(names[len("trained:"):])
    return sorted(images.list_images(vis_dir)) if names == "all" else names.split(",")


def load_scenes(names, vis_dir, ir_dir):
    """Yields (name, vis, ir at 1/4, bicubic ir upsampled and clipped to [0, 1]) per scene:
    the visible image cropped to a multiple of 4, the infrared one downsampled as training does."""
    vis_files, ir_files = images.list_images(vis_dir), images.list_images(ir_dir)
    for name in names:
        vis, ir = fit_sizes(images.read_grey(vis_files[name]), images.read_grey(ir_files[name]), 4)
        yield name, vis, ir, np.clip(metrics.upsample_bicubic(ir * 255.0, vis.shape) / 255.0, 0, 1)


def score(fused, vis, ir):
    s = metrics.evaluate_triple(fused, vis, ir)
    s.update(metrics.lowres_fidelity(fused, ir, 4))
    return s


def mean_scores(per_image):
    """Each metric's mean over the images, leaving out the images where it is undefined (NaN,
    e.g. CC of a flat image); NaN, without numpy's empty-slice warning, where it is on all."""
    out = {}
    for k in next(iter(per_image)).keys():
        v = np.asarray([s[k] for s in per_image], np.float64)
        v = v[~np.isnan(v)]
        out[k] = float(v.mean()) if v.size else float("nan")
    return out


def _score8(args):
    """score() of an 8-bit output (what a user gets: the file); a picklable pool task."""
    fused8, vis, ir = args
    return score(fused8 / 255.0, vis, ir)


def make_fusers(checkpoint, modes, backend="tf"):
    """{bn_mode: fuse(vis, ir) -> fused float image}: ddcgan_tf.fuse.Fuser (TensorFlow), or
    jax_train.Fuser, the JAX transcription, where TensorFlow is missing (backend="jax")."""
    if backend == "jax":
        from jax_train import Fuser as JaxFuser
        return {m: JaxFuser(checkpoint, m) for m in modes}
    from ddcgan_tf.checkpoint import load_generator
    from ddcgan_tf.fuse import Fuser
    return {m: Fuser(load_generator(checkpoint, bn_mode=m)) for m in modes}


def validate(checkpoint, names=HELD_OUT, vis_dir=os.path.join(TNO, "vis"), ir_dir=os.path.join(TNO, "ir"),
             modes=("batch", "moving"), log=print, stretch=False, backend="tf", pool=None, baseline=True,
             scenes=None):
    """-> {method: {"per_image": {name: scores}, "mean": scores}}.

    The infrared (or PET) image may be full resolution (downsampled here) or already 1/4.
    stretch=True adds "<method>+stretch": the same output min-max stretched (official imsave).
    baseline=True adds the "average" method. pool: an Executor to score in (its map is used).
    scenes: load_scenes()'s tuples, read once for many checkpoints (names and dirs then unused).
    """
    fusers = make_fusers(checkpoint, modes, backend) if modes else {}
    methods = list(modes) + (["average"] if baseline else [])
    keys, tasks = [], []
    for name, vis, ir, up in (load_scenes(names, vis_dir, ir_dir) if scenes is None else scenes):
        outputs = {m: np.asarray(fuser(vis, ir)) for m, fuser in fusers.items()}
        if baseline:
            outputs["average"] = (vis + up) / 2
        for m in methods:
            keys.append((m, name))
            tasks.append((images.to_uint8(outputs[m]), vis, ir))
            if stretch:
                keys.append((m + "+stretch", name))
                tasks.append((images.to_uint8(outputs[m], stretch=True), vis, ir))
        log(f"fused {name}")
    results = {m: {"per_image": {}} for m in methods + ([m + "+stretch" for m in methods] if stretch else [])}
    for (m, name), s in zip(keys, pool.map(_score8, tasks) if pool else map(_score8, tasks)):
        results[m]["per_image"][name] = s
    for m, r in results.items():
        r["mean"] = mean_scores(list(r["per_image"].values()))
        undefined = undefined_scores(r["per_image"])
        if undefined:  # those means are over fewer scenes: say so, here and in the JSON
            r["undefined"] = undefined
            log(f"{m}: undefined (NaN, left out of the mean) on " +
                "; ".join(f"{k}: {', '.join(n)}" for k, n in undefined.items()))
    return results


def undefined_scores(per_image):
    """{metric: [scenes where it is NaN]} for the metrics some scene leaves undefined."""
    out = {}
    for name, scores in per_image.items():
        for k, v in scores.items():
            if np.isnan(v):
                out.setdefault(k, []).append(name)
    return out


def wins(mean):
    """The bar's numbers that the mean scores beat (every one of them: higher is better)."""
    return [k for k, v in OFFICIAL.items() if mean[k] > v]


def margin(mean):
    """The smallest score / bar ratio over the bar's numbers: above 1 when all are beaten. A
    number undefined on every scene (NaN) counts as 0: not beaten, and the smallest."""
    return min(0.0 if np.isnan(mean[k]) else mean[k] / v for k, v in OFFICIAL.items())


def _markdown(first, extra, rows):
    """Markdown table: column `first`, the bar's keys, the `extra` columns; rows of (label,
    scores over the bar's keys, extra cells)."""
    keys = list(OFFICIAL)
    lines = [f"| {first} | " + " | ".join(keys + list(extra)) + " |", "|---|" + "---:|" * (len(keys) + len(extra))]
    lines += [f"| {label} | " + " | ".join([f"{scores[k]:.4g}" for k in keys] + list(cells)) + " |"
              for label, scores, cells in rows]
    return "\n".join(lines)


def table(results, official=True):
    """Markdown table of the mean scores over the official bar's keys (the bar first if official),
    with how many of them each method beats and its smallest score / bar ratio."""
    rows = [("official DDcGAN (20 pairs)", OFFICIAL, ("", ""))] if official else []
    rows += [(method, r["mean"], (str(len(wins(r["mean"]))), f"{margin(r['mean']):.3f}")) for method, r in results.items()]
    return _markdown("method", ("beats", "min ratio"), rows)


def scene_table(result):
    """Markdown table of one method's scores per scene over the bar's keys, then its mean, with
    how many of the bar's numbers each row beats: which scenes carry a shortfall."""
    rows = list(result["per_image"].items()) + [("mean", result["mean"])]
    return _markdown("scene", ("beats",), [(name, r, (str(len(wins(r))),)) for name, r in rows])


def make_pool(workers):
    """A process pool for scoring (spawned: a forked JAX or TensorFlow process can deadlock), or
    a context that gives None (score in this process) for workers <= 1."""
    if workers <= 1:
        return contextlib.nullcontext()
    import concurrent.futures
    import multiprocessing
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="needed unless --modes is empty")
    ap.add_argument("--names", default="held_out_8", help=NAMES_HELP + " (default held_out_8: the shipped weights never saw it)")
    ap.add_argument("--vis_dir", default=os.path.join(TNO, "vis"))
    ap.add_argument("--ir_dir", default=os.path.join(TNO, "ir"))
    ap.add_argument("--modes", default="batch,moving",
                    help='BN modes to fuse with; "" scores the average baseline only')
    ap.add_argument("--stretch", action="store_true",
                    help="also score every method min-max stretched, as the official imsave wrote it")
    ap.add_argument("--json")
    ap.add_argument("--backend", choices=("tf", "jax"), default="tf",
                    help="jax: fuse with the JAX transcription (benchmarks/jax_train.py), no TensorFlow")
    ap.add_argument("--workers", type=int, default=1, help="processes to score in")
    ap.add_argument("--per_scene", action="store_true", help="also print every method's scores per scene")
    args = ap.parse_args()
    modes = tuple(m for m in args.modes.split(",") if m)
    if modes and not args.checkpoint:
        ap.error("--checkpoint is required unless --modes is empty")
    names = resolve_names(args.names, args.vis_dir)
    with make_pool(args.workers) as pool:
        results = validate(args.checkpoint, names, args.vis_dir, args.ir_dir, modes=modes,
                           stretch=args.stretch, backend=args.backend, pool=pool)
    print(table(results))
    if args.per_scene:
        for method, result in results.items():
            print(f"\n{method}, per scene\n\n{scene_table(result)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
