"""DDcGAN losses (paper Sec. III-C, Eqs. 5-10; official `train.py` and `LOSS.py`).

All take NHWC float tensors in [0, 1]. Norms follow the official code: a per-image sum over
H and W, averaged over the batch (and channel) axis.
"""
import tensorflow as tf

from ddcgan_tf.config import EPS, GRADIENT_KERNEL


def gradient(img):
    """grad(.) of Eq. 8: conv with [[1/8,1/8,1/8],[1/8,-1,1/8],[1/8,1/8,1/8]], SAME padding."""
    kernel = tf.reshape(tf.constant(GRADIENT_KERNEL, img.dtype), (3, 3, 1, 1))
    return tf.nn.conv2d(img, kernel, strides=1, padding="SAME")


def downsample(img, scale):
    """psi of Eq. 7: log2(scale) 3x3 stride-2 average pools, SAME (official `g0`, `generated_img_ds`).

    Identity for scale 1. Padding cells are excluded from the averages (tf.nn.avg_pool SAME).
    """
    steps = {1: 0, 2: 1, 4: 2, 8: 3}[int(scale)]
    for _ in range(steps):
        img = tf.nn.avg_pool2d(img, ksize=3, strides=2, padding="SAME")
    return img


def frobenius_loss(x):
    """Official `Fro_LOSS`: mean over images of ||x||_F^2 (sum of squares over H, W)."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(x), axis=[1, 2]))


def l1_loss(x):
    """Official `L1_LOSS` / `TV_LOSS`: mean over images of the sum of |x| over H, W."""
    return tf.reduce_mean(tf.reduce_sum(tf.abs(x), axis=[1, 2]))


def content_terms(fused, vis, ir, scale):
    """(||psi(G) - i||_F^2, ||grad G - grad v||_1): the two terms of L_con (Eq. 8)."""
    ir_term = frobenius_loss(downsample(fused, scale) - ir)
    grad_term = l1_loss(gradient(fused) - gradient(vis))
    return ir_term, grad_term


def log_eps(x):
    """log(x + eps), the official `tf.log(x + eps)`, kept finite for x = 0 in a graph too.

    Under tf.function, Grappler's arithmetic optimizer reassociates `1 - D + eps` into
    `(1 + eps) - D`, and 1 + 1e-8 is 1 in float32: a saturated D(fake) = 1 gave log 0 = -inf, an
    infinite loss and NaN weights after the step (measured; eager TensorFlow and JAX compute it as
    written: 18.42). The floor at eps gives the written value whatever the order.
    """
    return tf.math.log(tf.maximum(x + EPS, EPS))


def generator_adversarial(dv_fake, di_fake):
    """L_adv^G (Eq. 6): -E[log(Dv(G) + eps)] - E[log(Di(psi G) + eps)] (G_loss_GAN_D1 + _D2)."""
    return -tf.reduce_mean(log_eps(dv_fake)) - tf.reduce_mean(log_eps(di_fake))


def discriminator_loss(real, fake):
    """L_Dv / L_Di (Eqs. 9-10): -E[log(D(real) + eps)] - E[log(1 - D(fake) + eps)]."""
    return -tf.reduce_mean(log_eps(real)) - tf.reduce_mean(log_eps(1.0 - fake))


def generator_loss(adversarial, ir_term, grad_term, content_weight, grad_weight, ir_weight=1.0):
    """L_G (Eq. 5): adv + lambda * (ir_weight * IR term + eta * gradient term)."""
    return adversarial + content_weight * (ir_weight * ir_term + grad_weight * grad_term)
