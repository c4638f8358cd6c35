"""Shared plumbing for the absl CLIs: InputError -> one line on stderr, exit status 2."""
import os
import re
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging

from ddcgan_tf.errors import InputError
from ddcgan_tf.signals import interrupt_held

EXIT_BAD_INPUT = 2


def import_tensorflow_quietly():
    """Imports TensorFlow with the C++ start-up chatter (absl/oneDNN notices) and its Python INFO
    log silenced.

    TF 2.21 prints those lines to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says; a CLI
    whose error must be one line cannot have them. Python exceptions still propagate.

    Ctrl-C during the import is held until it ends, then raised (`signals.interrupt_held`): a
    KeyboardInterrupt raised where the signal lands was lost whenever that was inside a
    garbage-collector callback (JAX, which TensorFlow imports when installed, registers one;
    Python drops exceptions raised there), and the command then ran on (1 of 8 tries here).
    """
    if "tensorflow" not in sys.modules:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        with interrupt_held():
            try:
                os.dup2(devnull, 2)
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.close(devnull)
    import tensorflow
    # its Python INFO log (through absl's handler once app.run starts) is for developers:
    # under --strategy multiworker it printed about 900 lines as the collectives were traced
    tensorflow.get_logger().setLevel("WARNING")


def one_line(text):
    """Collapses a message to one line (file names and library messages may hold newlines)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


def error_exit(prog, message, status=EXIT_BAD_INPUT):
    """Prints `PROG: error: MESSAGE` as one line on stderr and exits with `status`."""
    sys.stdout.flush()
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(status)


def run_main(main, prog, needs_tensorflow=True, out_of_memory="out of memory"):
    """Runs an absl `main`, turning InputError (WriteError included) and OS errors (missing
    files, permissions, full or read-only disks) into a one-line error and exit status 2;
    TensorFlow running out of memory prints `out_of_memory` (the command's advice)."""

    def guarded(argv):
        try:
            return main(argv)
        except InputError as e:
            error_exit(prog, e)
        except OSError as e:
            if e.errno is None and not e.filename:
                raise  # not an operating-system condition: keep the traceback
            where = e.filename or "?"
            problem = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
            error_exit(prog, f"{where}: {problem}")
        except Exception as e:  # noqa: BLE001 - only TensorFlow's out-of-memory is turned into one line
            if type(e).__name__ != "ResourceExhaustedError":
                raise
            if "No space left on device" in str(e):  # TensorFlow's file writes report a full disk so too
                error_exit(prog, f"cannot write (No space left on device): {one_line(str(e))[:200]}")
            error_exit(prog, out_of_memory)

    def parse(argv):
        rest = parse_flags(prog, argv)
        if not flags.FLAGS["verbosity"].present:  # libraries' INFO lines (TensorFlow's SavedModel
            absl_logging.set_verbosity(absl_logging.WARNING)  # writer logs through absl) are not ours
        if needs_tensorflow:  # after the flags: a mistyped command fails without the 5 s import
            import_tensorflow_quietly()
        return rest

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    describe_main_module(main.__module__)
    try:
        app.run(guarded, flags_parser=parse)
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (the 5 s TensorFlow import,
        # building a model, writing an export): nothing half-written is published (atomic writes)
        sys.stdout.flush()
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def parse_flags(prog, argv):
    """absl's flag parsing with the project's errors: a bad or unknown flag, a missing required
    one, or any word that is not a flag is one line and exit status 2 (absl prints two lines
    and exits 1; and every CLI here takes its inputs by flag, so a stray word is a mistake, e.g.
    `--exclude a b` for `--exclude a,b`, which would silently exclude only `a`)."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        error_exit(prog, f"flags: {e}")
    if len(rest) > 1:
        error_exit(prog, f"{' '.join(rest[1:])}: unexpected argument{'s' if len(rest) > 2 else ''} (every "
                         f"input is given by a flag; a list is comma-separated, e.g. --exclude a,b)")
    return rest


def describe_main_module(module_name):
    """Makes absl's `--help` describe the CLI module `module_name`: its docstring and its flags.

    absl prints `__main__`'s docstring and the flags defined in the file named by sys.argv[0];
    a console script's `__main__` is pip's wrapper, which has neither, so `ddcgan-fuse --help`
    printed a bare usage line and every flag was behind `--helpfull`, among TensorFlow's own.
    """
    main_module, module = sys.modules["__main__"], sys.modules[module_name]
    if main_module is module:  # python -m ddcgan_tf.cli.fuse: absl finds both itself
        return
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    if not main_module.__doc__ and module.__doc__:
        main_module.__doc__ = module.__doc__.replace("%", "%%")  # absl %-formats it with argv[0]
