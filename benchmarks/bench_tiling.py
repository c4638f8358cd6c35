"""Peak memory and time of tiled fusion (ddcgan_tf/tiling.py) against whole-image fusion.

  python benchmarks/bench_tiling.py [--size 4096] [--tile 512] [--overlap 32] [--whole 1024]
                                    [--budget 120] [--bn_mode moving|batch]

Every measurement runs in its own child process, so each peak RSS (resource.getrusage
ru_maxrss) belongs to that run alone:
  1. one tile: whole-image fusion of a tile x tile image (also times one tile, warm);
  2. tiled:    fuse_tiled of a size x size image (default: the largest of 4096, 3072, 2048,
               1536 whose estimated time, tiles x time of one tile, fits --budget seconds);
  3. whole:    whole-image fusion of a whole x whole image, for comparison.
"setup" is the peak RSS after importing TensorFlow and building the generator, before fusing.
Random generator weights and random images: time and memory do not depend on the values.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, REPO)
    import numpy as np

    from ddcgan_tf.fuse import Fuser
    from ddcgan_tf.generator import Generator
    from ddcgan_tf.tiling import fuse_tiled, tile_plan

    g = Generator(bn_mode=args.bn_mode)
    g.build()
    fuser = Fuser(g)
    fuser(np.zeros((16, 16), np.float32), np.zeros((4, 4), np.float32))  # trace once
    rng = np.random.default_rng(0)
    n = args.size
    vis = rng.random((n, n), dtype=np.float32)
    ir = rng.random((n // 4, n // 4), dtype=np.float32)
    setup = peak_mb()
    result = {"what": args.child, "size": n, "setup_mb": setup}
    if args.child == "tiled":
        result["tiles"] = len(tile_plan(vis.shape, args.tile, args.overlap))
        t0 = time.perf_counter()
        out = fuse_tiled(fuser, vis, ir, tile=args.tile, overlap=args.overlap)
        result["seconds"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        out = fuser(vis, ir)
        result["first_seconds"] = time.perf_counter() - t0
        if args.child == "tile":  # warm time of one tile, for the size estimate
            t0 = time.perf_counter()
            out = fuser(vis, ir)
        result["seconds"] = time.perf_counter() - t0
    assert out.shape == (n, n)
    result["peak_mb"] = peak_mb()
    print(json.dumps(result))


def tiles_per_side(n, tile, overlap):
    """As ddcgan_tf.tiling.axis_plan (without importing TensorFlow into this process)."""
    return 1 if n <= tile else -(-(n - tile) // (tile - overlap)) + 1


def run_child(args, what, size):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--size", str(size),
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--bn_mode", args.bn_mode]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"child {what} {size} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="tiled image side (default: from --budget)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--whole", type=int, default=1024, help="side of the whole-image comparison")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds allowed for the tiled run")
    ap.add_argument("--bn_mode", choices=["moving", "batch"], default="moving")
    ap.add_argument("--child", choices=["tile", "tiled", "whole"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    start = time.perf_counter()
    print(f"{os.cpu_count()} CPU cores, tile {args.tile}, overlap {args.overlap}, bn_mode {args.bn_mode}")
    one = run_child(args, "tile", args.tile)
    size = args.size
    if size is None:
        passes = 5 if args.bn_mode == "batch" else 1  # batch: ~4 statistics passes + the fuse
        fits = [n for n in (4096, 3072, 2048, 1536)
                if tiles_per_side(n, args.tile, args.overlap) ** 2 * one["seconds"] * passes <= args.budget]
        size = fits[0] if fits else 1536
        print(f"one {args.tile}x{args.tile} tile: {one['seconds']:.2f} s warm -> tiled size {size}x{size} "
              f"(estimated within the {args.budget:.0f} s budget)")
    tiled = run_child(args, "tiled", size)
    whole = run_child(args, "whole", args.whole)
    print()
    print(f"{'run':34s} {'time s':>8s} {'setup MB':>9s} {'peak MB':>8s} {'fusing MB':>9s}")
    rows = [(f"one tile, whole fuse {args.tile}x{args.tile}", one),
            (f"tiled {size}x{size} ({tiled['tiles']} tiles)", tiled),
            (f"whole fuse {args.whole}x{args.whole}", whole)]
    for name, r in rows:
        print(f"{name:34s} {r['seconds']:8.1f} {r['setup_mb']:9.0f} {r['peak_mb']:8.0f} "
              f"{r['peak_mb'] - r['setup_mb']:9.0f}")
    print()
    print(f"tiled {size}x{size} ({size * size / args.whole ** 2:.0f}x the pixels of {args.whole}x{args.whole}) "
          f"peaks at {tiled['peak_mb']:.0f} MB vs {whole['peak_mb']:.0f} MB for the whole "
          f"{args.whole}x{args.whole} fuse and {one['peak_mb']:.0f} MB for one {args.tile} tile")
    print(f"total benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
