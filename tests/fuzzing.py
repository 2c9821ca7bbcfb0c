"""What the property tests (tests/test_properties_*.py) share: damaged bytes, and the checks every input must pass.

The promise checked for every reader: any input either gives a result or raises a `UserError`
whose message is one line; never another exception, never a hang, never more memory than the
input's own bytes justify, never a file written outside the folder it was given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from pipeline.core.errors import UserError

# Longer than any example should take by far: the profiles' deadline catches slowness, this a hang,
# which a deadline cannot (it is only checked once the example returns).
HANG_SECONDS = 20
# A message is for a person: one line of at most this many characters, paths included.
MAX_MESSAGE = 1500
# Integer header fields set to what lies most often: zero, one, the signed and unsigned limits.
BOUNDARY_INTS = (0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1)


class Hang(BaseException):
    """Raised into an example that runs past HANG_SECONDS; a BaseException so no `except Exception` swallows it."""


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def interrupt(signum: int, frame: Any) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, interrupt)
    outer = signal.setitimer(signal.ITIMER_REAL, seconds)  # a timer already running (pytest-timeout) is put back
    try:
        yield
    except Hang:
        raise AssertionError(f"still running after {seconds} s: a hang") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer[0]:
            signal.setitimer(signal.ITIMER_REAL, *outer)


def outcome(call: Callable[[], Any], where: str | os.PathLike[str] | None = None) -> Any:
    """`call()`'s result, or None after the one kind of error it may raise: a UserError of one
    line (starting with `where`, the file the input was given as, when given)."""
    with no_hang():
        try:
            return call()
        except UserError as error:
            check_message(error, where)
            return None


def check_message(error: BaseException, where: str | os.PathLike[str] | None = None) -> None:
    message = str(error)
    assert len(message.splitlines()) == 1, f"{type(error).__name__} message is not one line: {message!r}"
    assert len(message) <= MAX_MESSAGE + len(str(where or "")), f"message of {len(message)} characters"
    if where is not None:
        assert message.startswith(str(where)), f"message does not start with {str(where)!r}: {message!r}"


@contextlib.contextmanager
def peak_memory(limit: int) -> Iterator[None]:
    """Fail if the Python and NumPy allocations inside the block peak above `limit` bytes."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"allocated {peak:,} bytes at the peak, more than the {limit:,} the input justifies"


def files_under(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (relative, POSIX) and its bytes (None: a folder); links are refused."""
    found: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        assert not path.is_symlink(), f"{path}: a symbolic link was written"
        found[path.relative_to(folder).as_posix()] = None if path.is_dir() else path.read_bytes()
    return found


# --- Damaged bytes.


def huge_int(field_bytes: int) -> st.SearchStrategy[int]:
    """Values for an unsigned big-endian field of `field_bytes` bytes: boundaries first, then any."""
    top = 2 ** (8 * field_bytes) - 1
    return st.one_of(st.sampled_from([n for n in BOUNDARY_INTS if n <= top]), st.integers(0, top))


@st.composite
def mutated(draw: st.DrawFn, data: bytes, fields: tuple[tuple[int, int], ...] = ()) -> bytes:
    """`data` with one to four damages: bits flipped, bytes overwritten, inserted, deleted, the end cut
    off, or one of the integer `fields` ((offset, size in bytes), big-endian) set to a lying value."""
    out = bytearray(data)
    kinds = ["flip", "overwrite", "insert", "delete", "truncate"] + (["field", "field"] if fields else [])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite" and out:
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[at : at + len(chunk)] = chunk
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete" and out:
            del out[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del out[draw(st.integers(0, len(out))) :]
        elif kind == "field":
            offset, size = draw(st.sampled_from(fields))
            if offset + size <= len(out):
                value = draw(huge_int(size))
                out[offset : offset + size] = value.to_bytes(size, "big")
    return bytes(out)


def little_endian_fields(data: bytes, layouts: dict[bytes, tuple[tuple[int, int], ...]]) -> list[tuple[int, int, str]]:
    """(offset, size, format) of the little-endian integer fields of every record of `data` that starts with one
    of the `layouts` signatures (signature -> (offset in the record, size) of its fields)."""
    found = []
    for signature, layout in layouts.items():
        start = data.find(signature)
        while start != -1:
            found += [(start + offset, size, {2: "<H", 4: "<I"}[size]) for offset, size in layout]
            start = data.find(signature, start + 1)
    return found


@st.composite
def with_lying_field(draw: st.DrawFn, data: bytes, fields: list[tuple[int, int, str]]) -> bytes:
    """`data` with one little-endian field of `fields` (little_endian_fields) set to a boundary or random value."""
    if not fields:
        return data
    offset, size, fmt = draw(st.sampled_from(fields))
    if offset + size > len(data):
        return data
    value = draw(huge_int(size))
    return data[:offset] + struct.pack(fmt, value) + data[offset + size :]
