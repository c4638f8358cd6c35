"""Keras callbacks for DDcGAN training: checkpoints, a step cap, a NaN guard, logs and images."""
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf


def _scalar_logs(logs):
    return {k: float(np.asarray(v)) for k, v in (logs or {}).items()}


class Checkpoint(keras.callbacks.Callback):
    """Saves the full training state every `every` batches and when training ends."""

    def __init__(self, manager, every=100):
        super().__init__()
        self.manager, self.every = manager, max(1, int(every))
        self.last_saved = None

    def _save(self):
        step = int(self.model.batch_count.numpy())
        if step != self.last_saved and step > 0 and not getattr(self.model, "diverged", False):
            self.manager.save(self.model)
            self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.batch_count.numpy()) % self.every == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the model has trained `total` batches in all (resume-aware)."""

    def __init__(self, total):
        super().__init__()
        self.total = int(total)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.batch_count.numpy()) >= self.total:
            self.model.stop_training = True


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss; the checkpoint callback then saves nothing."""

    def __init__(self):
        super().__init__()
        self.bad = None

    def on_train_batch_end(self, batch, logs=None):
        values = _scalar_logs(logs)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self.bad = (int(self.model.batch_count.numpy()), bad)
            self.model.diverged = True
            self.model.stop_training = True


class StepLog(keras.callbacks.Callback):
    """Appends one JSON line of every metric per batch to `path` (the loss curves)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_batch_end(self, batch, logs=None):
        row = {"step": int(self.model.batch_count.numpy()), **_scalar_logs(logs)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class SampleImages(keras.callbacks.Callback):
    """Writes scalars of every batch and a few fused samples to TensorBoard every `every` batches."""

    def __init__(self, log_dir, vis, ir, every=100):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.fspath(log_dir))
        self.vis, self.ir, self.every = vis, ir, max(1, int(every))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.batch_count.numpy())
        with self.writer.as_default(step=step):
            for k, v in _scalar_logs(logs).items():
                tf.summary.scalar(k, v)
            if step % self.every == 1 or self.every == 1:
                fused = self.model.generator((self.vis, self.ir), training=False)
                tf.summary.image("fused", fused, max_outputs=len(self.vis))
                tf.summary.image("vis", self.vis, max_outputs=len(self.vis))

    def on_train_end(self, logs=None):
        self.writer.flush()
