"""Optimizers matching TF1's, and the learning-rate rule of the official code."""
import keras
import tensorflow as tf

from ddcgan_tf import config as C


@keras.saving.register_keras_serializable(package="ddcgan_tf")
class TF1RMSprop(keras.optimizers.RMSprop):
    """tf.train.RMSPropOptimizer: mean square starts at `initial_accumulator_value` (TF1: 1.0).

    Keras starts it at 0, which makes the first steps about sqrt(1/(1-rho)) ~ 3x larger; with
    epsilon 1e-10 under the square root (as Keras already does) the update is otherwise TF1's.
    """

    def __init__(self, learning_rate=2e-4, rho=C.RMSPROP_RHO, epsilon=C.RMSPROP_EPSILON,
                 initial_accumulator_value=1.0, **kwargs):
        super().__init__(learning_rate=learning_rate, rho=rho, epsilon=epsilon, **kwargs)
        self.initial_accumulator_value = float(initial_accumulator_value)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for v in self._velocities:
            v.assign(tf.fill(v.shape, tf.cast(self.initial_accumulator_value, v.dtype)))

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value}


def decayed_learning_rate(base, rate, count, decay_steps):
    """tf.train.exponential_decay(base, count, decay_steps, rate, staircase=False)."""
    count = tf.cast(count, tf.float32)
    return base * tf.pow(tf.cast(rate, tf.float32), count / tf.cast(decay_steps, tf.float32))
