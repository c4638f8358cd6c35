"""Shared plumbing for the absl CLIs: InputError -> one line on stderr, exit status 2."""
import os
import sys

from absl import app

from ddcgan_tf.errors import InputError

EXIT_BAD_INPUT = 2


def import_tensorflow_quietly():
    """Imports TensorFlow with the C++ start-up chatter (absl/oneDNN notices) silenced.

    TF 2.21 prints those lines to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says; a CLI
    whose error must be one line cannot have them. Python exceptions still propagate.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def run_main(main, prog, needs_tensorflow=True):
    """Runs an absl `main`, turning InputError (and a few OS errors) into a one-line error."""

    def guarded(argv):
        try:
            return main(argv)
        except InputError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except (PermissionError, IsADirectoryError, FileNotFoundError) as e:
            where = e.filename or "?"
            print(f"{prog}: error: {where}: {e.strerror}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except OSError as e:
            if e.errno is not None and e.errno in (28, 30):  # ENOSPC, EROFS
                print(f"{prog}: error: {e.filename or '?'}: {e.strerror}", file=sys.stderr)
                sys.exit(EXIT_BAD_INPUT)
            raise

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if needs_tensorflow:
        import_tensorflow_quietly()
    app.run(guarded)
