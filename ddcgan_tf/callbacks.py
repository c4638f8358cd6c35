"""Keras callbacks for DDcGAN training: checkpoints, a step cap, a NaN guard, logs and images.

A log or summary that cannot be written (disk full, read-only directory) raises
`ddcgan_tf.images.WriteError`, which stops `fit` with a one-line message in the CLI.
"""
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from ddcgan_tf.images import WriteError, os_problem
from ddcgan_tf.signals import StopRequest


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


class GracefulStop(keras.callbacks.Callback):
    """On SIGTERM or SIGINT (Ctrl-C, a scheduler's stop) the batch in flight finishes and `fit`
    stops; `Checkpoint.on_train_end` then saves the full state, so a stopped run loses nothing
    and resumes from that batch (`signals.StopRequest`: a second signal kills as before; the
    newest checkpoint on disk stays whole). The handlers live from `fit`'s start to its end:
    put it last among the callbacks, since Keras ends them in order and a signal during
    Checkpoint's final save must still be taken. `request.received` holds the signal number.

    strategy: a MultiWorkerMirroredStrategy. Its workers must stop after the same batch (one
    that stopped alone would leave the others waiting in the next batch's collectives), so at
    every batch end they all-reduce whether any of them was signalled, and all stop if one was;
    a worker stopped that way has `peer_stopped` set. A signal only marks the stop there.
    """

    def __init__(self, strategy=None):
        super().__init__()
        self.request = StopRequest(on_signal=self._stop)
        self._any = None if strategy is None else any_worker(strategy)
        self.peer_stopped = False

    def _stop(self):
        if self._any is None:  # alone: stop after the batch in flight
            self.model.stop_training = True

    @property
    def received(self):
        return self.request.received

    def restore(self):
        """Puts back the handlers from before `fit` (also after a `fit` that raised)."""
        self.request.restore()

    def on_train_begin(self, logs=None):
        self.request.install()

    def on_train_batch_end(self, batch, logs=None):
        stop = self.received is not None
        if self._any is not None:  # every worker, every batch: the same collective
            stop = bool(self._any(tf.constant(float(stop))))
            self.peer_stopped = stop and self.received is None
        if stop:  # set here too: Keras may have reset the flag between epochs
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.restore()


def any_worker(strategy):
    """A tf.function: a float flag (1 or 0) on each worker -> whether any worker passed 1 (an
    all-reduce over every replica of `strategy`)."""
    @tf.function(autograph=False)
    def any_(flag):  # tf.identity puts the flag on each replica's device (a captured host tensor
        # has none, and the all-reduce then fails: "destinations can not be empty")
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None) > 0

    return any_


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the model has trained `total` batches in all (resume-aware)."""

    def __init__(self, total):
        super().__init__()
        self.total = int(total)
        self.reached = None  # the batch count after the last whole batch of this fit

    def on_train_batch_end(self, batch, logs=None):
        self.reached = int(self.model.batch_count.numpy())
        if self.reached >= self.total:
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
    """Appends one JSON line of every metric per batch to `path` (the loss curves).

    Put it before `Checkpoint` in the callback list: then every saved step is already logged,
    and `trim_step_log` can make a resumed log continue exactly where the checkpoint stops.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_batch_end(self, batch, logs=None):
        row = {"step": int(self.model.batch_count.numpy()), "time": round(time.time(), 3),
               **_scalar_logs(logs)}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise WriteError(self.path, f"cannot append to the step log ({os_problem(e)})") from None


def read_step_log(path):
    """The complete JSON rows of a step log; a torn last line (a kill mid-write) or a damaged
    one is ignored."""
    rows = []
    try:
        with open(path, errors="replace") as f:  # a damaged byte spoils its line only
            lines = f.read().split("\n")
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def trim_step_log(path, last_step, write):
    """Rewrites the step log keeping complete rows with step <= last_step (the restored
    checkpoint), so a resumed run's log has each step once, in order. `write(path, text)`
    writes atomically."""
    if not os.path.exists(path):
        return
    rows = [r for r in read_step_log(path) if r["step"] <= last_step]
    with open(path, errors="replace") as f:
        old = f.read()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if text != old:
        write(path, text)


class SampleImages(keras.callbacks.Callback):
    """Writes scalars of every batch and a few fused samples to TensorBoard every `every` batches."""

    def __init__(self, log_dir, vis, ir, every=100):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        try:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        except tf.errors.OpError as e:
            raise WriteError(self.log_dir, f"cannot write TensorBoard logs ({_first_line(e.message)})") from None
        self.vis, self.ir, self.every = vis, ir, max(1, int(every))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.batch_count.numpy())
        try:
            with self.writer.as_default(step=step):
                for k, v in _scalar_logs(logs).items():
                    tf.summary.scalar(k, v)
                if step % self.every == 1 or self.every == 1:
                    fused = self.model.generator((self.vis, self.ir), training=False)
                    tf.summary.image("fused", fused, max_outputs=len(self.vis))
                    tf.summary.image("vis", self.vis, max_outputs=len(self.vis))
        except tf.errors.OpError as e:
            raise WriteError(self.log_dir, f"cannot write TensorBoard logs ({_first_line(e.message)})") from None

    def on_train_end(self, logs=None):
        try:
            self.writer.flush()
        except tf.errors.OpError as e:
            raise WriteError(self.log_dir, f"cannot write TensorBoard logs ({_first_line(e.message)})") from None


def _first_line(text):
    text = str(text).strip()
    return text.splitlines()[0][:120] if text else "unknown error"
