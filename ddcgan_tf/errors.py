"""The one exception type for bad user input.

Every check on files, shapes and values raises :class:`InputError` with a one-line message
that names the file (or flag) and the problem; the CLIs print it and exit with status 2.
"""


class InputError(ValueError):
    """Bad input from the user: a missing or unreadable file, wrong sizes, bad values."""

    def __init__(self, where, problem):
        self.where = str(where)
        self.problem = str(problem)
        super().__init__(f"{self.where}: {self.problem}")


class WriteError(InputError):
    """An output could not be written: read-only or full disk, missing directory, and so on."""


def describe(e):
    """'Type: first line of the message' (80 characters at most) of an exception, for the
    parenthesis of a one-line InputError."""
    text = str(e).strip()
    first = text.splitlines()[0][:80] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
