"""The DDcGAN discriminators Dv and Di (paper Sec. III-B, Fig. 4; official `Discriminator.py`).

One class, instantiated twice: Dv on 84x84 visible-resolution images, Di on 21x21 infrared-
resolution images. Three reflect-padded 3x3 stride-2 convs (16, 32, 64; BN on the last two;
ReLU), flatten, dense(1) with tanh, then / 2 + 0.5: the probability that the input is real.
"""
import keras
import tensorflow as tf

from ddcgan_tf import config as C
from ddcgan_tf.layers import ReflectConv


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class Discriminator(keras.Model):
    """A DDcGAN discriminator for square inputs of side `input_size`."""

    def __init__(self, input_size, **kwargs):
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        f = C.DISCRIMINATOR_FILTERS
        # BN in the discriminators always uses batch statistics, as the official code does.
        self.convs = [ReflectConv(f[0], strides=2, stddev=C.D_INIT_STDDEV, use_bn=False, name="conv1"),
                      ReflectConv(f[1], strides=2, stddev=C.D_INIT_STDDEV, name="conv2"),
                      ReflectConv(f[2], strides=2, stddev=C.D_INIT_STDDEV, name="conv3")]
        self.flatten = keras.layers.Flatten(name="flatten")
        self.dense = keras.layers.Dense(1, activation="tanh", name="flatten1_dense")

    def feature_side(self):
        side = self.input_size
        for _ in self.convs:
            side = (side + 2 - 3) // 2 + 1
        return side

    def build(self, input_shape=None):
        channels, side = 1, self.input_size
        for layer in self.convs:
            layer.build((None, side, side, channels))
            channels, side = layer.filters, (side + 2 - 3) // 2 + 1
        self.flatten.build((None, side, side, channels))
        self.dense.build((None, side * side * channels))
        self.built = True

    def call(self, x, training=False):
        for layer in self.convs:
            x = layer(x, training=training)
        return tf.cast(self.dense(self.flatten(x)), "float32") / 2.0 + 0.5

    def get_config(self):
        return {"name": self.name, "input_size": self.input_size}
