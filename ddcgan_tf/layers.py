"""Building blocks shared by the generator and the discriminators.

All reproduce the TF1 helpers of the official code: `conv2d` (reflect pad 1, VALID conv, bias,
optional BN, optional ReLU), `deconv_ir` / `deconv_vis` (bias-free 3x3 transposed conv, SAME),
and `tf.layers.batch_normalization` (momentum 0.99, epsilon 1e-3).
"""
import keras
import tensorflow as tf

from ddcgan_tf import config as C

BN_MODES = ("batch", "moving")


FUSED = True  # use the fused batch-statistics kernel where no cross-replica statistics are needed


def _replicated(training):
    """True when BN must pool its statistics over several replicas (synchronised BN)."""
    ctx = tf.distribute.get_replica_context()
    return training and ctx is not None and ctx.num_replicas_in_sync > 1


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class BatchNorm(keras.layers.Layer):
    """Batch normalisation with an explicit choice of statistics outside training.

    training=True: batch statistics, and the moving averages are updated (unless `update=False`).
    training=False: `mode="moving"` uses the moving averages (standard inference);
    `mode="batch"` uses the statistics of the input itself, without touching the moving
    averages: what the official code does when fusing (it builds BN with training=True).
    """

    def __init__(self, mode="batch", momentum=C.BN_MOMENTUM, epsilon=C.BN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if mode not in BN_MODES:
            raise ValueError(f"bn mode must be one of {BN_MODES}, got {mode!r}")
        self.mode = mode
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        # autocast=False: under a mixed policy BN works in float32 (see call)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta", autocast=False)
        # identical on every replica (synchronised statistics), so "mean" aggregation is exact
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros", trainable=False,
                                           name="moving_mean", aggregation="mean",
                                           autocast=False)
        self.moving_variance = self.add_weight(shape=channels, initializer="ones", trainable=False,
                                               name="moving_variance", aggregation="mean",
                                               autocast=False)

    def call(self, x, training=False, update=True):
        # Statistics and normalisation in float32 also under a mixed-precision policy.
        dtype = x.dtype
        x = tf.cast(x, tf.float32)
        if (training or self.mode == "batch") and FUSED and not _replicated(training):
            return self._fused(x, training and update, dtype)
        if training or self.mode == "batch":
            mean, variance = self._moments(x, synchronise=training)
            if training and update:
                m = self.momentum
                self.moving_mean.assign(m * self.moving_mean.value + (1.0 - m) * mean)
                self.moving_variance.assign(m * self.moving_variance.value + (1.0 - m) * variance)
        else:
            mean, variance = self.moving_mean.value, self.moving_variance.value
        out = tf.nn.batch_normalization(x, mean, variance, self.beta.value, self.gamma.value, self.epsilon)
        return tf.cast(out, dtype)

    def _fused(self, x, update, dtype):
        """Batch statistics in one fused kernel (FusedBatchNormV3; oneDNN's on the CPU).

        Same result as tf.nn.moments + tf.nn.batch_normalization (the op normalises with the
        biased variance); its variance output carries Bessel's correction, undone here so the
        moving variance is updated with the biased variance as in the unfused path.
        """
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma.value, self.beta.value, epsilon=self.epsilon, is_training=True)
        if update:
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean.value + (1.0 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance.value + (1.0 - m) * variance)
        return tf.cast(y, dtype)

    @staticmethod
    def _moments(x, synchronise):
        """Per-channel mean and (biased) variance; over the global batch when training replicated.

        Under a distribution strategy each replica holds an equal slice of the batch; pooling the
        slices' means and variances gives the statistics of the whole batch, so a replicated
        step equals the single-device step (synchronised BN).
        """
        ctx = tf.distribute.get_replica_context()
        if not synchronise or ctx is None or ctx.num_replicas_in_sync == 1:
            return tf.nn.moments(x, axes=[0, 1, 2])
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        global_mean = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, mean)
        # pooled variance of equal slices: mean of (slice variance + squared mean offset)
        variance = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, variance + tf.square(mean - global_mean))
        return global_mean, variance

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "momentum": self.momentum,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class ReflectConv(keras.layers.Layer):
    """Official `conv2d`: reflect pad 1, 3x3 VALID conv (+bias), optional BN, optional ReLU."""

    def __init__(self, filters, strides=1, stddev=C.G_INIT_STDDEV, use_bn=True, relu=True,
                 bn_mode="batch", **kwargs):
        super().__init__(**kwargs)
        self.filters, self.strides, self.stddev = filters, strides, stddev
        self.use_bn, self.relu, self.bn_mode = use_bn, relu, bn_mode
        self.conv = keras.layers.Conv2D(
            filters, 3, strides=strides, padding="valid", name="conv", dtype=self.dtype_policy,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=stddev),
            bias_initializer="zeros")
        self.bn = BatchNorm(mode=bn_mode, name="bn") if use_bn else None

    def build(self, input_shape):
        shape = list(input_shape)
        shape[1] = None if shape[1] is None else shape[1] + 2
        shape[2] = None if shape[2] is None else shape[2] + 2
        self.conv.build(tuple(shape))
        if self.bn is not None:
            self.bn.build(tuple(shape[:-1]) + (self.filters,))

    def call(self, x, training=False, skip_bn=False, update_bn=True):
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        x = self.conv(x)
        if self.bn is not None and not skip_bn:
            x = self.bn(x, training=training, update=update_bn)
        return tf.nn.relu(x) if self.relu else x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "stddev": self.stddev, "use_bn": self.use_bn, "relu": self.relu,
                "bn_mode": self.bn_mode}


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class Deconv(keras.layers.Layer):
    """Official `deconv_ir` / `deconv_vis`: 1->1 channel 3x3 transposed conv, no bias, SAME.

    The kernel has the TF1 shape [3, 3, out=1, in=1]; the output is `strides` times the input size
    for any input size (the output shape is taken from the dynamic input shape).
    """

    def __init__(self, strides, stddev=C.D_INIT_STDDEV, **kwargs):
        super().__init__(**kwargs)
        self.strides, self.stddev = strides, stddev

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(3, 3, 1, 1), name="kernel",
            initializer=keras.initializers.TruncatedNormal(stddev=self.stddev))

    def call(self, x):
        s = tf.shape(x)
        out_shape = tf.stack([s[0], s[1] * self.strides, s[2] * self.strides, 1])
        return tf.nn.conv2d_transpose(x, self.kernel, out_shape, strides=self.strides, padding="SAME")

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        return (n, None if h is None else h * self.strides, None if w is None else w * self.strides, 1)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides, "stddev": self.stddev}
