import numpy as np
import pytest
import tensorflow as tf

from ddcgan_tf import losses
from ddcgan_tf.config import EPS


def t(a):
    a = np.asarray(a, np.float32)
    return tf.constant(a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim < 4 else a)


def test_gradient_is_the_official_kernel_with_zero_padding():
    img = np.zeros((3, 3), np.float32)
    img[1, 1] = 8.0
    g = losses.gradient(t(img[..., None])).numpy()[0, ..., 0]
    # centre: -1 * 8; each neighbour sees the centre through a 1/8 weight
    expected = np.full((3, 3), 1.0)
    expected[1, 1] = -8.0
    np.testing.assert_allclose(g, expected)
    # a constant image has zero gradient inside, and edge effects from the zero padding
    ones = losses.gradient(t(np.ones((4, 4, 1)))).numpy()[0, ..., 0]
    assert ones[1, 1] == pytest.approx(0.0)
    assert ones[0, 0] == pytest.approx(3 / 8 - 1)


def test_downsample_is_two_3x3_stride2_same_average_pools():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    once = losses.downsample(t(img[..., None]), 2).numpy()[0, ..., 0]
    # SAME pads one cell at the bottom/right for an even size; padding is excluded from the mean
    expected = np.array([[img[0:3, 0:3].mean(), img[0:3, 2:4].mean()],
                         [img[2:4, 0:3].mean(), img[2:4, 2:4].mean()]])
    np.testing.assert_allclose(once, expected, rtol=1e-6)
    twice = losses.downsample(t(img[..., None]), 4).numpy()[0, ..., 0]
    np.testing.assert_allclose(twice, [[expected.mean()]], rtol=1e-6)
    assert losses.downsample(t(np.zeros((84, 84, 1))), 4).shape == (1, 21, 21, 1)
    np.testing.assert_array_equal(losses.downsample(t(img[..., None]), 1).numpy()[0, ..., 0], img)


def test_norms_sum_over_pixels_and_average_over_images():
    x = np.stack([np.full((2, 2, 1), 1.0), np.full((2, 2, 1), -2.0)]).astype(np.float32)
    assert float(losses.frobenius_loss(tf.constant(x))) == pytest.approx((4 * 1 + 4 * 4) / 2)
    assert float(losses.l1_loss(tf.constant(x))) == pytest.approx((4 * 1 + 4 * 2) / 2)


def test_adversarial_losses_match_hand_values():
    dv_fake = tf.constant([[0.5], [0.25]])
    di_fake = tf.constant([[1.0], [1.0]])
    expected = -np.mean(np.log([0.5 + EPS, 0.25 + EPS])) - np.log(1.0 + EPS)
    assert float(losses.generator_adversarial(dv_fake, di_fake)) == pytest.approx(expected, rel=1e-6)
    real, fake = tf.constant([[0.8]]), tf.constant([[0.3]])
    expected = -np.log(0.8 + EPS) - np.log(1 - 0.3 + EPS)
    assert float(losses.discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-6)
    # eps keeps a perfect discriminator finite
    assert np.isfinite(float(losses.discriminator_loss(tf.constant([[0.0]]), tf.constant([[1.0]]))))


def test_content_terms_and_generator_loss_combination():
    fused = np.full((1, 8, 8, 1), 0.5, np.float32)
    vis = np.zeros((1, 8, 8, 1), np.float32)
    ir = np.full((1, 2, 2, 1), 0.25, np.float32)
    ir_term, grad_term = losses.content_terms(tf.constant(fused), tf.constant(vis), tf.constant(ir), 4)
    assert float(ir_term) == pytest.approx(4 * 0.25 ** 2)
    g = losses.gradient(tf.constant(fused)).numpy()
    assert float(grad_term) == pytest.approx(np.abs(g).sum(), rel=1e-6)
    total = losses.generator_loss(1.5, 2.0, 3.0, content_weight=0.8, grad_weight=1.2, ir_weight=0.5)
    assert float(total) == pytest.approx(1.5 + 0.8 * (0.5 * 2.0 + 1.2 * 3.0))


def test_a_saturated_discriminator_gives_the_written_finite_loss_in_a_graph_too():
    """-log(1 - D(fake) + eps) with D(fake) = 1 is -log(1e-8) = 18.42. tf.function used to give
    inf (Grappler reassociated it into (1 + eps) - D, 0 in float32) and NaN weights after the
    step; eager TensorFlow gave 18.42. Both must, with finite gradients."""
    ones, half = tf.ones((2, 1)), tf.fill((2, 1), 0.5)
    expected = -np.log(0.5 + EPS) - np.log(EPS)

    def loss_and_grads(real, fake):
        with tf.GradientTape() as tape:
            tape.watch(fake)
            loss = losses.discriminator_loss(real, fake) + losses.generator_adversarial(1.0 - fake, real)
        return loss, tape.gradient(loss, fake)

    for fn in (loss_and_grads, tf.function(loss_and_grads)):
        loss, grads = fn(half, ones)
        assert float(loss) == pytest.approx(2 * expected, rel=1e-6), fn
        assert np.isfinite(grads.numpy()).all(), fn


def test_content_terms_compare_gradients_and_the_downsampled_output_of_real_images():
    """Eq. 8 on non-constant images: ||psi(G) - i||_F^2 and ||grad G - grad v||_1 (the gradient
    of the visible image, not the image itself), each summed per image and averaged over two."""
    rng = np.random.default_rng(0)
    fused, vis = rng.random((2, 8, 8, 1), np.float32), rng.random((2, 8, 8, 1), np.float32)
    ir = rng.random((2, 2, 2, 1), np.float32)
    ir_term, grad_term = losses.content_terms(tf.constant(fused), tf.constant(vis), tf.constant(ir), 4)
    grad = lambda a: losses.gradient(tf.constant(a)).numpy()
    psi = losses.downsample(tf.constant(fused), 4).numpy()
    assert float(ir_term) == pytest.approx(np.square(psi - ir).sum() / 2, rel=1e-5)
    assert float(grad_term) == pytest.approx(np.abs(grad(fused) - grad(vis)).sum() / 2, rel=1e-5)
    _, same = losses.content_terms(tf.constant(vis), tf.constant(vis), tf.constant(ir), 4)
    assert float(same) == 0.0
