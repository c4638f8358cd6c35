"""Times ddcgan_tf.metrics on one 768 x 576 triple (fused, visible, infrared at 1/4 resolution).

    python benchmarks/bench_metrics.py [--repeat 5] [--height 576 --width 768] [--ir_factor 4]

Prints the median wall time of evaluate_triple per image (including the bicubic upsampling of the
low-resolution IR and the [0, 1] -> 0..255 scaling) and of each metric on prepared 0..255 inputs.
Synthetic, smooth random images; not a test.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddcgan_tf import metrics as M  # noqa: E402


def synthetic(shape, sigma, seed):
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape), sigma) + 0.02 * rng.random(shape)
    x = (x - x.min()) / (x.max() - x.min())
    return (np.rint(x * 255) / 255).astype(np.float32)  # 8-bit grey levels, as read_grey returns


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--height", type=int, default=576)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--ir_factor", type=int, default=4)
    p.add_argument("--convention", default=M.DEFAULT_CONVENTION, choices=M.CONVENTIONS)
    args = p.parse_args()

    shape = (args.height, args.width)
    vis = synthetic(shape, 2.0, 0)
    ir_full = synthetic(shape, 6.0, 1)
    ir = np.clip(ndimage.zoom(ir_full.astype(np.float64), 1.0 / args.ir_factor), 0, 1)
    fused = ((vis + ir_full) / 2).astype(np.float32)
    print(f"triple: fused/vis {shape[1]}x{shape[0]}, ir {ir.shape[1]}x{ir.shape[0]} (1/{args.ir_factor}); "
          f"convention={args.convention}; median of {args.repeat} runs; {os.cpu_count()} CPU cores")

    M.evaluate_triple(fused, vis, ir, args.convention)  # warm-up
    t_all = median_time(lambda: M.evaluate_triple(fused, vis, ir, args.convention), args.repeat)
    t_lr = median_time(lambda: M.lowres_fidelity(fused, ir, args.ir_factor), args.repeat)

    f, a, b, _ = M.prepare_sources(fused, vis, ir)
    t_prep = median_time(lambda: M.prepare_sources(fused, vis, ir), args.repeat)
    c = args.convention
    per_metric = {
        "EN": lambda: M.EN(f, c), "SD": lambda: M.SD(f), "SF": lambda: M.SF(f, c), "AG": lambda: M.AG(f, c),
        "MI": lambda: M.MI(f, a, b, c), "SCD": lambda: M.SCD(f, a, b), "VIF": lambda: M.VIF(f, a, b),
        "Qabf": lambda: M.Qabf(f, a, b), "SSIM": lambda: M.SSIM(f, a, b, c), "CC": lambda: M.CC(f, a, b),
        "PSNR": lambda: M.PSNR(f, a, b, c), "Nabf": lambda: M.Nabf(f, a, b), "MS-SSIM": lambda: M.MS_SSIM(f, a, b),
    }
    print(f"{'step':<28}{'ms':>9}")
    print(f"{'scale + bicubic upsampling':<28}{t_prep * 1e3:9.1f}")
    total = 0.0
    for name, fn in per_metric.items():
        t = median_time(fn, args.repeat)
        total += t
        print(f"{name:<28}{t * 1e3:9.1f}")
    print(f"{'sum of metrics':<28}{total * 1e3:9.1f}")
    print(f"{'lowres_fidelity':<28}{t_lr * 1e3:9.1f}")
    print(f"evaluate_triple per {shape[1]}x{shape[0]} image: {t_all:.3f} s "
          f"({'under' if t_all < 1.0 else 'OVER'} the 1 s budget)")


if __name__ == "__main__":
    main()
