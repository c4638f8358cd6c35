"""benchmarks/precise_bn.py: BN moving statistics recomputed at the final weights."""
import os
import sys

import numpy as np
import tensorflow as tf

from conftest import REPO, synthetic_pair
from ddcgan_tf.generator import Generator

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import precise_bn  # noqa: E402


def batch(seed):
    vis, ir = synthetic_pair(32, 48, seed)
    return tf.constant(vis[None, ..., None]), tf.constant(ir[::4, ::4][None, ..., None])


def moving_statistics(g):
    return [np.concatenate([b.moving_mean.numpy(), b.moving_variance.numpy()]) for b in precise_bn.bn_layers(g)]


def test_recalibrated_statistics_are_the_batch_statistics_at_the_final_weights():
    g = Generator(bn_mode="moving")
    g.build()
    a, b = batch(0), batch(1)
    for layer in precise_bn.bn_layers(g):  # stale statistics, as after training
        layer.moving_mean.assign(layer.moving_mean + 3.0)
    assert precise_bn.recalibrate(g, [a], log=None) == 1
    # one image: its "moving" output is now the per-image ("batch" statistics) output
    batch_mode = Generator(bn_mode="batch")
    batch_mode.build()
    batch_mode.set_weights(g.get_weights())
    np.testing.assert_allclose(g(a).numpy(), batch_mode(a).numpy(), atol=2e-5)
    stats_a = moving_statistics(g)
    precise_bn.recalibrate(g, [b], log=None)
    stats_b = moving_statistics(g)
    precise_bn.recalibrate(g, [a, b, a, b], log=None)  # the plain mean over batches
    for s, sa, sb in zip(moving_statistics(g), stats_a, stats_b):
        np.testing.assert_allclose(s, (sa + sb) / 2, rtol=1e-5, atol=1e-6)
    assert all(layer.momentum == 0.99 for layer in precise_bn.bn_layers(g))


def test_average_weights_is_the_mean_of_every_variable():
    gens = [Generator() for _ in range(3)]
    for k, g in enumerate(gens):
        g.build()
        g.set_weights([np.full(w.shape, float(k)) for w in g.get_weights()])
    avg = precise_bn.average_weights(gens)
    assert avg is gens[0]
    assert all(np.all(w == 1.0) for w in avg.get_weights())
