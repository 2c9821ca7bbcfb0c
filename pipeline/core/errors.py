"""Errors a user can fix, told apart from crashes.

Every stage enters through `pipeline.cli`, which prints a `UserError` as
`error: <file or key>: <what is wrong>; <what to do>` (no traceback) and exits with status 2;
any other exception is a crash and keeps its traceback and status 1. Raise a `UserError`
(or a subclass) for whatever the user can put right: bad params, bad or missing data, a failed
download, a refused archive, a design that cannot be built. Messages start with the file or the
params key and end with what to do.
"""

from __future__ import annotations

import os


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
