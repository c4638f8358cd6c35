"""The DDcGAN generator G (paper Sec. III-B, Fig. 3; official `Generator.py` + `Deconv.py`).

vis (N, H, W, 1) and ir (N, H/s, W/s, 1) in [0, 1] -> fused (N, H, W, 1) in [0, 1].
Two transposed convs (IR x s, VIS x1) -> concat -> conv 2->48 -> dense block of four 3x3 convs
(48, 96, 144, 192 -> 48, each output concatenated with its input: 240 channels) -> decoder
240->240->128->64->32->1 -> tanh / 2 + 0.5. Reflect padding, BN and ReLU throughout.
"""
import keras
import tensorflow as tf

from ddcgan_tf import config as C
from ddcgan_tf.layers import BN_MODES, Deconv, ReflectConv
from ddcgan_tf.patches import check_sizes  # noqa: F401 (the size rule; TF-free there)


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class Generator(keras.Model):
    """DDcGAN generator.

    Args:
      scale: resolution ratio visible/infrared: 4 (multi-resolution, default) or 1 (the official
        same-resolution variant, which has no transposed convs at all).
      official_decoder: True reproduces the official `Decoder.decode`, whose loop applies the
        first 240->240 kernel twice (once without BN, then again with BN: the `if i == 0` branch
        falls through into the `else` branch). False applies it once, with BN, as the paper
        describes. The variables are identical either way. Default True: it is the network that
        produced the published results.
      bn_mode: BN statistics when not training: "batch" (per-image statistics, as the official
        code fuses) or "moving" (moving averages). See WORKSPACE.md for the measured choice.
      stretch: how fused images are written, not part of the network (`call` ignores it): True
        min-max stretches each fused image to 0..255, as the official test code's
        scipy.misc.imsave did (images.to_uint8). Stored with the weights, so weights validated
        stretched are used stretched (ddcgan_tf.fuse.Fuser.stretch).
    """

    def __init__(self, scale=C.SCALE, official_decoder=True, bn_mode="batch", stretch=False, **kwargs):
        kwargs.setdefault("name", "generator")
        super().__init__(**kwargs)
        if scale not in (1, 2, 4, 8):
            raise ValueError(f"scale must be 1, 2, 4 or 8, got {scale}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        self.scale, self.official_decoder, self.bn_mode = scale, official_decoder, bn_mode
        self.stretch = bool(stretch)
        if scale > 1:
            self.deconv_ir = Deconv(scale, name="deconv_ir")
            self.deconv_vis = Deconv(1, name="deconv_vis")
        conv = lambda filters, name, **kw: ReflectConv(filters, bn_mode=bn_mode, name=name, **kw)
        f = C.ENCODER_FILTERS
        self.encoder_conv = conv(f, "encoder_conv1_1")
        self.dense_convs = [conv(f, f"encoder_dense_block_conv{k}") for k in range(1, 5)]
        d = C.DECODER_FILTERS
        self.decoder_convs = [conv(d[0], "decoder_conv2_1"), conv(d[1], "decoder_conv2_2"),
                              conv(d[2], "decoder_conv2_3"), conv(d[3], "decoder_conv2_4"),
                              # float32 under a mixed policy too: a 32->1 conv costs nothing,
                              # and bfloat16 would quantise the fused image to 8 mantissa bits
                              conv(d[4], "decoder_conv2_5", use_bn=False, relu=False, dtype="float32")]

    def build(self, input_shape=None):
        # Shapes do not depend on H, W: build every layer from the channel counts.
        channels = 2
        for layer in [self.encoder_conv] + self.dense_convs:
            layer.build((None, None, None, channels))
            channels = C.ENCODER_FILTERS if layer is self.encoder_conv else channels + C.ENCODER_FILTERS
        for layer in self.decoder_convs:
            layer.build((None, None, None, channels))
            channels = layer.filters
        if self.scale > 1:
            self.deconv_ir.build((None, None, None, 1))
            self.deconv_vis.build((None, None, None, 1))
        self.built = True

    @staticmethod
    def split_inputs(inputs):
        if isinstance(inputs, dict):
            return inputs["vis"], inputs["ir"]
        vis, ir = inputs
        return vis, ir

    def call(self, inputs, training=False, update_bn=True):
        vis, ir = self.split_inputs(inputs)
        vis = tf.cast(vis, self.compute_dtype)  # bfloat16/float16 under a mixed policy
        ir = tf.cast(ir, self.compute_dtype)
        if self.scale > 1:
            ir, vis = self.deconv_ir(ir), self.deconv_vis(vis)
        kw = dict(training=training, update_bn=update_bn)
        x = self.encoder_conv(tf.concat([vis, ir], axis=3), **kw)
        for layer in self.dense_convs:
            x = tf.concat([layer(x, **kw), x], axis=3)  # official conv2d(dense=True)
        first = self.decoder_convs[0]
        if self.official_decoder:
            x = first(x, skip_bn=True, **kw)
        x = first(x, **kw)
        for layer in self.decoder_convs[1:]:
            x = layer(x, **kw)
        return tf.tanh(x) / 2.0 + 0.5  # float32: the last conv computes in float32

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "official_decoder": self.official_decoder,
                "bn_mode": self.bn_mode, "stretch": self.stretch}
