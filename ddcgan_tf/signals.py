"""Stopping a training run on SIGTERM or SIGINT without losing work (both trainers).

TensorFlow-free, so benchmarks/jax_train.py uses it too. `callbacks.GracefulStop` is the Keras
side; WORKSPACE.md "Stopping a run" gives the reasons.
"""
import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Takes the first SIGTERM or SIGINT (Ctrl-C, a scheduler's stop, `timeout`): records its
    number in `received` and calls `on_signal()`, so the trainer can finish its batch and save.
    A second signal goes at once to the handler that was there before (a kill, or Python's
    KeyboardInterrupt). `install` works in the main thread only (Python's rule; elsewhere it
    does nothing); `restore` puts the earlier handlers back."""

    def __init__(self, on_signal=None):
        self.on_signal = on_signal or (lambda: None)
        self.received, self._previous = None, {}

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: the previous behaviour, at once
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        self.on_signal()

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def restore(self):
        """Puts back the handlers from before `install` (call it also after a run that raised)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}

    def message(self, step, checkpoint):
        """The one line both trainers print: which signal (none here: another worker's, under
        MultiWorkerMirroredStrategy), the batch reached, where it is saved."""
        saved = (f"the full state is saved in {checkpoint}; the same command resumes from it" if checkpoint
                 else "this worker writes no checkpoints (the chief does)")
        if self.received is None:
            return f"stopped: another worker was stopped by a signal after batch {step}; {saved}"
        return f"stopped by {signal.Signals(self.received).name} after batch {step}; {saved}"


@contextlib.contextmanager
def interrupt_held():
    """Holds the first SIGINT (Ctrl-C) inside the block: it is recorded in the list the block
    gets (`with interrupt_held() as held`), and raised as KeyboardInterrupt when the block ends,
    unless the block raises at a safe point of its own first (`if held: raise
    KeyboardInterrupt`). A second one raises at once, so a block that hangs can be stopped.

    For code that Python-level signal handlers must not interrupt: a KeyboardInterrupt raised
    inside a garbage-collector callback is dropped (JAX, which TensorFlow imports when it is
    installed, registers one), and one raised inside a callback of HDF5's (`patches._DiskSink`)
    becomes an HDF5 error. Only where Python's own handler is in place: not in a thread, nor
    where SIGINT is ignored (a background job) or handled by someone else."""
    held = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield held
        return

    def hold(signum, frame):
        held.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, hold)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt
