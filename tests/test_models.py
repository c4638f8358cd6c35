import numpy as np
import pytest
import tensorflow as tf

from ddcgan_tf.ddcgan import DDcGAN
from ddcgan_tf.discriminator import Discriminator
from ddcgan_tf.errors import InputError
from ddcgan_tf.generator import Generator, check_sizes

# The variables of the official multi-resolution TF1 graph (Generator.py, Deconv.py,
# Discriminator.py), in their order, as (scope/name, shape); the decoder's second kernel sits in a
# second `conv2_1` scope (see tests/data/official_tf1_variables.json and ddcgan_tf/official.py).
OFFICIAL_G = [
    ("deconv_ir/deconv1/kernel", (3, 3, 1, 1)), ("deconv_vis/deconv1/kernel", (3, 3, 1, 1)),
    ("encoder/conv1_1/kernel", (3, 3, 2, 48)), ("encoder/conv1_1/bias", (48,)),
    ("encoder/b0/batch_normalization/gamma", (48,)), ("encoder/b0/batch_normalization/beta", (48,)),
] + [item for k, cin in enumerate((48, 96, 144, 192), start=1) for item in (
    (f"encoder/dense_block_conv{k}/kernel", (3, 3, cin, 48)), (f"encoder/dense_block_conv{k}/bias", (48,)),
    (f"encoder/b{k}/batch_normalization/gamma", (48,)), (f"encoder/b{k}/batch_normalization/beta", (48,)))
] + [item for k, (scope, cin, cout) in enumerate((("conv2_1", 240, 240), ("conv2_1_1", 240, 128),
                                                     ("conv2_2", 128, 64), ("conv2_3", 64, 32))) for item in (
    (f"decoder/{scope}/kernel", (3, 3, cin, cout)), (f"decoder/{scope}/bias", (cout,)),
    (f"decoder/b{k}/batch_normalization/gamma", (cout,)), (f"decoder/b{k}/batch_normalization/beta", (cout,)))
] + [("decoder/conv2_4/kernel", (3, 3, 32, 1)), ("decoder/conv2_4/bias", (1,))]


def official_d(flat):
    return [("conv1/kernel", (3, 3, 1, 16)), ("conv1/bias", (16,)),
            ("conv2/kernel", (3, 3, 16, 32)), ("conv2/bias", (32,)),
            ("b1/batch_normalization/gamma", (32,)), ("b1/batch_normalization/beta", (32,)),
            ("conv3/kernel", (3, 3, 32, 64)), ("conv3/bias", (64,)),
            ("b2/batch_normalization/gamma", (64,)), ("b2/batch_normalization/beta", (64,)),
            ("flatten1/dense/kernel", (flat, 1)), ("flatten1/dense/bias", (1,))]


def trainable_shapes(model):
    return [tuple(v.shape) for v in model.trainable_variables]


def test_variables_match_the_official_tf1_graph_one_for_one():
    g = Generator()
    g.build()
    assert trainable_shapes(g) == [s for _, s in OFFICIAL_G]
    dv, di = Discriminator(84), Discriminator(21)
    dv.build()
    di.build()
    assert trainable_shapes(dv) == [s for _, s in official_d(11 * 11 * 64)]
    assert trainable_shapes(di) == [s for _, s in official_d(3 * 3 * 64)]
    # parameter counts (trainable), as reported in the README
    assert sum(int(np.prod(s)) for s in trainable_shapes(g)) == 1_097_683
    assert sum(int(np.prod(s)) for s in trainable_shapes(dv)) == 31_233
    assert sum(int(np.prod(s)) for s in trainable_shapes(di)) == 24_065


def test_generator_fuses_any_size_and_stays_in_unit_range():
    g = Generator()
    for h, w in ((84, 84), (36, 52)):
        vis = tf.random.uniform((2, h, w, 1))
        ir = tf.random.uniform((2, h // 4, w // 4, 1))
        out = g((vis, ir)).numpy()
        assert out.shape == (2, h, w, 1)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_official_decoder_applies_first_kernel_twice():
    vis, ir = tf.random.uniform((1, 32, 32, 1), seed=1), tf.random.uniform((1, 8, 8, 1), seed=2)
    official = Generator(official_decoder=True)
    official.build()
    paper = Generator(official_decoder=False)
    paper.build()
    paper.set_weights(official.get_weights())
    assert not np.allclose(official((vis, ir)).numpy(), paper((vis, ir)).numpy())
    # The double application costs one more 240->240 conv call.
    calls = []
    first = official.decoder_convs[0]
    original = first.conv.call
    first.conv.call = lambda x: calls.append(1) or original(x)
    official((vis, ir))
    assert len(calls) == 2


def test_bn_modes_differ_only_outside_training():
    vis, ir = tf.random.uniform((2, 32, 32, 1), seed=3), tf.random.uniform((2, 8, 8, 1), seed=4)
    batch, moving = Generator(bn_mode="batch"), Generator(bn_mode="moving")
    batch.build()
    moving.build()
    moving.set_weights(batch.get_weights())
    assert np.allclose(batch((vis, ir), training=True, update_bn=False).numpy(),
                       moving((vis, ir), training=True, update_bn=False).numpy(), atol=1e-6)
    assert not np.allclose(batch((vis, ir)).numpy(), moving((vis, ir)).numpy(), atol=1e-3)
    # batch-mode inference leaves the moving statistics alone; training updates them.
    before = [v.numpy().copy() for v in batch.non_trainable_variables]
    batch((vis, ir))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, batch.non_trainable_variables))
    batch((vis, ir), training=True)
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(before, batch.non_trainable_variables))


def test_fused_bn_kernel_matches_the_moments_path(monkeypatch):
    """The fused BN kernel (used where no replica pooling is needed) gives the tf.nn.moments
    path's output, gradients and moving-statistics update (biased variance)."""
    from ddcgan_tf import layers

    # stateless: the same x whatever the tests before it did to the global seed
    x = 2.0 + 3.0 * tf.random.stateless_normal((3, 9, 7, 5), seed=[5, 0])
    # per-element weights: with per-channel ones the gamma gradient is exactly 0 (sum of the
    # normalised values), and the two paths would only be compared on round-off
    w = tf.random.stateless_normal(x.shape, seed=[6, 0])
    results = []
    for fused in (True, False):
        monkeypatch.setattr(layers, "FUSED", fused)
        bn = layers.BatchNorm(mode="batch")
        bn.build(x.shape)
        bn.gamma.assign(tf.linspace(0.5, 1.5, 5))
        bn.beta.assign(tf.linspace(-1.0, 1.0, 5))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=True)
            loss = tf.reduce_sum(y * w)
        grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
        inference = bn(x + 1.0, training=False)  # batch mode: the input's own statistics
        results.append([y, *grads, bn.moving_mean, bn.moving_variance, inference])
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    # moving variance moved towards the biased batch variance
    _, variance = tf.nn.moments(x, axes=[0, 1, 2])
    np.testing.assert_allclose(results[0][5].numpy(), 0.99 + 0.01 * variance.numpy(), rtol=1e-5)


def test_scale_one_variant_has_no_deconvs_and_full_size_di():
    model = DDcGAN(scale=1, patch_size=32)
    model.build()
    assert not hasattr(model.generator, "deconv_ir")
    assert model.di.input_size == 32
    out = model((tf.zeros((1, 32, 32, 1)), tf.zeros((1, 32, 32, 1))))
    assert out.shape == (1, 32, 32, 1)


def test_config_round_trip_rebuilds_the_same_network():
    g = Generator(official_decoder=False, bn_mode="moving")
    g.build()
    clone = Generator.from_config(g.get_config())
    clone.build()
    clone.set_weights(g.get_weights())
    x = (tf.random.uniform((1, 16, 16, 1)), tf.random.uniform((1, 4, 4, 1)))
    np.testing.assert_allclose(g(x).numpy(), clone(x).numpy(), atol=1e-6)
    assert clone.get_config() == g.get_config()


@pytest.mark.parametrize("vis,ir,message", [
    ((82, 84), (20, 21), "not a multiple of the scale"),
    ((84, 84), (84, 84), "must be 21x21"),
    ((4, 4), (1, 1), "at least 8x8"),
])
def test_size_errors_say_what_is_wrong(vis, ir, message):
    with pytest.raises(InputError, match=message):
        check_sizes(vis, ir, 4)
