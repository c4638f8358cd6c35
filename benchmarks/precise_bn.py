"""Recompute a generator's BN moving statistics at its final weights ("precise BN"), optionally
after averaging the weights of several checkpoints of one run (as in stochastic weight averaging).

  python benchmarks/precise_bn.py PATCHES.h5 OUT_generator.h5 CHECKPOINT [CHECKPOINT ...] \
      [--batches 100] [--seed 0]

During training the moving averages (momentum 0.99) mix statistics of about the last hundred
batches' weights. Here every BN layer's moving mean and variance become the plain average of its
batch statistics over `--batches` training batches, all computed with the final weights in
training mode (every BN layer normalising with its batch statistics, as in training). The output
is a generator file recording bn_mode "moving" (and the source's stretch option), for
validate_tno.py / ship.py. Measured on the shipped vis-ir weights: WORKSPACE.md, "precise BN".
"""
import argparse
import time

import numpy as np

from ddcgan_tf import checkpoint, data
from ddcgan_tf.layers import BatchNorm


def bn_layers(generator):
    return [layer for layer in generator._flatten_layers() if isinstance(layer, BatchNorm)]


def recalibrate(generator, batches, log=print):
    """Sets every BN layer's moving statistics to the mean of its batch statistics over `batches`
    ((vis, ir) pairs), the weights fixed. Returns the number of batches used."""
    layers = bn_layers(generator)
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    momenta = [layer.momentum for layer in layers]
    n, start = 0, time.time()
    try:
        for layer in layers:
            layer.momentum = 0.0  # the update then stores this batch's statistics
        for vis, ir in batches:
            generator((vis, ir), training=True)
            for s, layer in zip(sums, layers):
                s[0] += layer.moving_mean.numpy()
                s[1] += layer.moving_variance.numpy()
            n += 1
            if log and n % 20 == 0:
                log(f"{n} batches, {time.time() - start:.0f} s")
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    if n == 0:
        raise ValueError("no batches")
    for s, layer in zip(sums, layers):
        layer.moving_mean.assign(s[0] / n)
        layer.moving_variance.assign(s[1] / n)
    return n


def average_weights(generators):
    """Sets the first generator's variables to the mean over all of them; returns it."""
    first = generators[0]
    for k, variable in enumerate(first.weights):
        variable.assign(np.mean([g.weights[k].numpy() for g in generators], axis=0))
    return first


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patches")
    ap.add_argument("output")
    ap.add_argument("checkpoints", nargs="+", help="several: their weights are averaged first")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch_size", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    generator = average_weights([checkpoint.load_generator(c, bn_mode="moving") for c in args.checkpoints])
    before = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in bn_layers(generator)]
    ds, _ = data.make_dataset(args.patches, batch_size=args.batch_size, seed=args.seed)
    recalibrate(generator, ds.take(args.batches))
    for layer, (mean, var) in zip(bn_layers(generator), before):
        print(f"{layer.path}: mean moved {np.abs(layer.moving_mean.numpy() - mean).mean():.4f} on average, "
              f"variance x{np.median(layer.moving_variance.numpy() / var):.3f} (median)")
    checkpoint.save_generator(generator, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
