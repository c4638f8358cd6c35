"""Speed of the training step and of fusing on this machine (prints numbers; not a test).

  python benchmarks/bench.py [--batch 24] [--repeats 3] [--quick] [--mixed_precision mixed_bfloat16]
                             [--data tno.h5]

Train step = one batch of the schedule with I_max = 1 (exactly one Dv, one Di and one G step,
plus the loss evaluations the schedule needs), timed eager, under tf.function, with XLA as
`compile(jit_compile=True)` applies it (the pieces of the step, the loops outside XLA) and with
the whole step in one XLA computation; then a batch with one extra (adversarial) G step, the
repeat the schedule takes whenever a discriminator wins (--whole_step_repeat also times it for
the whole-step XLA function: minutes at batch 24, the reason XLA compiles pieces).
--mixed_precision mixed_bfloat16 times everything under that Keras policy. --data also times the
input pipeline (data.make_dataset): reading the set into memory, then batches per second.
"""
import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddcgan_tf import config as C  # noqa: E402
from ddcgan_tf.data import make_dataset  # noqa: E402
from ddcgan_tf.ddcgan import DDcGAN  # noqa: E402
from ddcgan_tf.fuse import Fuser  # noqa: E402


def timed(fn, repeats):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def generator_flops(h, w, official_decoder=True):
    """Multiply-adds x 2 of one generator pass on an h x w visible image (convs only)."""
    per_pixel = 9 * (2 * 48 + 48 * 48 + 96 * 48 + 144 * 48 + 192 * 48
                     + 240 * 240 * (2 if official_decoder else 1) + 240 * 128 + 128 * 64 + 64 * 32 + 32)
    return 2.0 * per_pixel * h * w


def matmul_gflops(n=2048, repeats=5):
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    f = tf.function(lambda: tf.matmul(a, b))
    _, t = timed(lambda: f().numpy(), repeats)
    return 2 * n ** 3 / t / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=C.BATCH_SIZE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip eager and the 2048x2048 fuse")
    ap.add_argument("--official_decoder", type=int, default=1)
    ap.add_argument("--mixed_precision", default="float32",
                    choices=["float32", "mixed_bfloat16", "mixed_float16"])
    ap.add_argument("--data", help="also time the input pipeline on this HDF5 patch set")
    ap.add_argument("--whole_step_repeat", action="store_true",
                    help="also time a G repeat inside the whole-step XLA function (very slow)")
    args = ap.parse_args()
    keras.mixed_precision.set_global_policy(args.mixed_precision)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, devices: "
          f"{[d.device_type for d in tf.config.list_physical_devices()]}, "
          f"oneDNN={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}, policy {args.mixed_precision}")
    peak = matmul_gflops()
    print(f"matmul 2048^3 float32 (practical peak): {peak:.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    b = args.batch
    if args.data:
        t0 = time.perf_counter()
        ds, patches = make_dataset(args.data, batch_size=b, seed=0)
        load = time.perf_counter() - t0
        it = iter(ds)
        next(it)
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        t = (time.perf_counter() - t0) / n
        print(f"input pipeline, {len(patches)} patches: read into memory in {load:.1f} s, then "
              f"{1 / t:.0f} batches of {b} per second ({1000 * t:.1f} ms a batch)")
    data = (tf.constant(rng.random((b, 84, 84, 1), np.float32)),
            tf.constant(rng.random((b, 21, 21, 1), np.float32)))
    cfg = C.get_preset("official", max_repeats=1, alternate_batches=False)  # all three nets a batch
    model = DDcGAN(official_decoder=bool(args.official_decoder))
    model.compile(train_config=cfg, steps_per_epoch=1000)
    pieces = DDcGAN(official_decoder=bool(args.official_decoder))
    pieces.compile(train_config=cfg, steps_per_epoch=1000, jit_compile=True)
    modes = [("tf.function", model, tf.function(model.train_step)),
             ("XLA pieces", pieces, tf.function(pieces.train_step)),
             ("XLA whole", model, tf.function(model.train_step, jit_compile=True))]
    if not args.quick:
        modes.insert(0, ("eager", model, model.train_step))
    step_times = {}
    # I_max = 1: three generator forward passes and one backward pass (~2 forward passes);
    # the discriminators add under 1 %
    step_flops = 5 * generator_flops(84, 84, bool(args.official_decoder)) * b
    for name, _, fn in modes:
        first, t = timed(lambda: {k: v.numpy() for k, v in fn(data).items()}, args.repeats)
        step_times[name] = t
        print(f"train step, batch {b}, {name:11s}: first {first:7.2f} s, steady {t:7.2f} s, "
              f"{b / t:6.2f} patches/s, {step_flops / t / 1e9:6.1f} GFLOP/s "
              f"({100 * step_flops / t / 1e9 / peak:4.0f}% of matmul)")
    if "eager" in step_times:
        for name in step_times:
            if name != "eager":
                print(f"  speed-up over eager, {name}: {step_times['eager'] / step_times[name]:.2f}x")
    for name, m, fn in modes:
        if name == "eager" or (name == "XLA whole" and not args.whole_step_repeat):
            continue
        m.set_schedule(max_repeats=2, l_min=1e9)  # a discriminator "wins": one adversarial G step
        first, t = timed(lambda: {k: v.numpy() for k, v in fn(data).items()}, max(1, args.repeats - 1))
        m.set_schedule(max_repeats=1, l_min=cfg.l_min)
        print(f"train step with one G repeat, batch {b}, {name:11s}: first {first:7.2f} s, steady {t:7.2f} s")

    # the official alternation (the official preset's default): a D batch, then a G batch
    alt = DDcGAN(official_decoder=bool(args.official_decoder))
    alt.compile(train_config=C.get_preset("official", max_repeats=1), steps_per_epoch=1000)
    alt_fn = tf.function(alt.train_step)
    by_kind = {"D": [], "G": []}
    for i in range(2 + 2 * args.repeats):  # the first two trace the two branches
        t0 = time.perf_counter()
        out = {k: v.numpy() for k, v in alt_fn(data).items()}
        if i >= 2:
            by_kind["G" if out["g_steps"] > 0 else "D"].append(time.perf_counter() - t0)
    d_t, g_t = (float(np.median(by_kind[k])) for k in ("D", "G"))
    print(f"train step, batch {b}, official alternation (tf.function): D batch {d_t:.2f} s, G batch "
          f"{g_t:.2f} s, {(d_t + g_t) / 2:.2f} s a batch on average")

    gen = model.generator
    sizes = [(256, 256), (576, 768)] + ([] if args.quick else [(2048, 2048)])
    for jit in (False, True):
        fuser = Fuser(gen, jit_compile=jit)
        for h, w in sizes:
            vis = rng.random((h, w), np.float32)
            ir = rng.random((h // 4, w // 4), np.float32)
            try:
                first, t = timed(lambda: fuser(vis, ir), max(1, args.repeats - 1))
            except tf.errors.ResourceExhaustedError:
                print(f"fuse {h}x{w} {'XLA' if jit else 'tf.function':11s}: out of memory "
                      f"(use ddcgan-fuse --tile)")
                continue
            flops = generator_flops(h, w, bool(args.official_decoder))
            print(f"fuse {h}x{w} {'XLA' if jit else 'tf.function':11s}: first {first:7.2f} s, "
                  f"steady {t:7.2f} s, {flops / t / 1e9:6.1f} GFLOP/s "
                  f"({100 * flops / t / 1e9 / peak:4.0f}% of matmul), FLOP-bound time "
                  f"{flops / peak / 1e9:6.2f} s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
