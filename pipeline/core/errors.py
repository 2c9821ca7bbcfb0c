"""Errors a user can fix, told apart from crashes.

Every stage enters through `pipeline.cli`, which prints a `UserError` as
`error: <file or key>: <what is wrong>; <what to do>` (no traceback) and exits with status 2;
any other exception is a crash and keeps its traceback and status 1. Raise a `UserError`
(or a subclass) for whatever the user can put right: bad params, bad or missing data, a failed
download, a refused archive, a design that cannot be built. Messages start with the file or the
params key and end with what to do, in one line: `shown` writes a value into one, `one_line` a
file name, `clipped` another library's message.
"""

from __future__ import annotations

import os
import reprlib
from typing import Any


class UserError(Exception):
    """Something the user can fix; the message names the file or key, what is wrong and what to do."""


class DataError(UserError, ValueError):
    """A data file is corrupt or not in its format; `path` is that file (None if not one file)."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self):  # keep `path` when raised in a worker process
        return (type(self), (self.args[0], self.path))


class MissingInputError(UserError, FileNotFoundError):
    """A file a stage reads is not there: a stage before it has not run, or a source lacks it."""


class NoSpaceError(UserError):
    """A file could not be written for want of room: the disk is full (ENOSPC), a quota is used up
    (EDQUOT), or the file outgrew the file-size limit (EFBIG). `path` is the file (or folder) it was
    for; pipeline.core.files raises it, with a message saying what to free or raise."""

    def __init__(self, message: str, path: str | os.PathLike[str], code: int) -> None:
        super().__init__(message)
        self.path, self.code = str(path), code  # code: the errno

    def __reduce__(self):
        return (type(self), (self.args[0], self.path, self.code))


# How values are shown in messages: a few entries of a list or mapping, a few levels deep, long strings
# cut in the middle, the whole at most SHOWN_MAX characters. A YAML alias can make a value of a few
# bytes that repr() spells out exponentially.
_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 120, 120
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = 8
SHOWN_MAX = 300


def shown(value: Any) -> str:
    """`value` for a message: repr() in one line of at most SHOWN_MAX characters, cut in the middle."""
    return clipped(_SHOWN.repr(value))


def clipped(text: str) -> str:
    """`text` (another library's error message) in one line of at most SHOWN_MAX characters, cut in the middle."""
    text = one_line(text)
    return text if len(text) <= SHOWN_MAX else f"{text[: SHOWN_MAX - 60]}...{text[-57:]}"


def one_line(text: str) -> str:
    """`text` (a file name) for a message or a table row: as it is, unless it holds a character that is not
    printable (a line break), which is then escaped as Python writes it."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
