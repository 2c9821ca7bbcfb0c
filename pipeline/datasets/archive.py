"""Extracting downloaded zip archives safely: nothing outside the target, nothing half-written.

A zip names its own paths, so a hostile or broken archive can say ``../../.bashrc``,
``/etc/passwd``, ``C:\\Windows\\…`` or store a symlink that a later entry writes through.
`zipfile.ZipFile.extractall` silently rewrites such names; here they are refused, naming
the archive and the entry, before a single byte is written, and so are an entry compressed as
a zip bomb is and entries that add up to one. The same check guards the archives `predict`
reads in memory. The archive is extracted into a temporary sibling of the target and renamed
into place only when every entry has been written and its CRC checked, so an interrupted or
failed extraction never leaves a partial folder where a complete one is expected.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import DataError, MissingInputError, clipped, shown
from pipeline.core.files import atomic_directory
from pipeline.core.progress import bar

# Below this many uncompressed bytes a progress bar is noise.
PROGRESS_MIN_BYTES = 32 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_COPY_CHUNK = 1 << 20
# Uncompressed / compressed, for entries above 1 MiB: images and CSVs compress a few times, a zip bomb
# a thousand times and more.
MAX_RATIO = 200


# What zipfile raises on a damaged archive, beyond BadZipFile: a broken compressed stream (zlib, bz2's OSError,
# lzma), a seek a lying offset sends before the file's start (OSError), an unknown compression method,
# a name flagged UTF-8 that is not.
READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    UnicodeDecodeError,
)


class ArchiveError(DataError):
    """A zip archive that cannot be extracted as it is; the message says which and why, `path` is the archive."""


class UnsafeArchiveError(ArchiveError):
    """An entry would be written outside the target folder, or is a link or special file."""


class CorruptArchiveError(ArchiveError):
    """The archive is truncated or damaged (typically an interrupted download)."""


def safe_extract_zip(
    zip_path: str | os.PathLike[str], target_dir: str | os.PathLike[str], progress: bool = True
) -> Path:
    """Extract `zip_path` into `target_dir` (replaced whole if it exists); return the target.

    Raises `UnsafeArchiveError` for entries with ``..`` components, absolute paths, drive
    letters, control characters, symlinks or special files, and for zip bombs; `CorruptArchiveError`
    for a damaged or truncated archive; `ArchiveError` for an entry the file system refuses to write;
    MissingInputError (a FileNotFoundError) if `zip_path` does not exist. On any error the target
    is left as it was and no temporary folder remains.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    if not zip_path.is_file():
        raise MissingInputError(f"{zip_path}: no such archive")
    try:
        archive = zipfile.ZipFile(zip_path)
    except READ_ERRORS as exc:
        raise CorruptArchiveError(
            f"{zip_path}: corrupt or truncated zip archive ({clipped(str(exc))})", zip_path
        ) from exc
    with archive:
        members = archive.infolist()
        for info in members:  # all checks first: a refused archive writes nothing
            check_member(zip_path, info)
        total = sum(info.file_size for info in members)
        check_total(zip_path, total, zip_path.stat().st_size)
        with (
            atomic_directory(target_dir) as tmp,
            bar(total, f"extract {zip_path.name}", "B", disable=not progress or total < PROGRESS_MIN_BYTES) as pbar,
        ):
            made_dirs: set[str] = set()
            for info in members:
                _extract_member(archive, info, zip_path, str(tmp), made_dirs, pbar)
    return target_dir


def check_member(zip_path: Path, info: zipfile.ZipInfo, max_bytes: int | None = None) -> None:
    """Refuse an entry that could write outside the target, is not a plain file or folder, is
    encrypted, is larger than `max_bytes` (None: no limit) or is compressed as a zip bomb is."""
    name = info.filename
    where = f"{zip_path}: entry {shown(name)}"
    # Windows-made zips may use backslashes; treat them as separators so that `..\\x` is caught.
    parts = name.replace("\\", "/").split("/")
    if "\0" in name:
        raise UnsafeArchiveError(f"{where}: NUL byte in the name; refusing to extract", zip_path)
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):  # what starts a new line, and alike
        raise UnsafeArchiveError(f"{where}: control character in the name; refusing to extract", zip_path)
    if name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{where}: absolute path; expected paths relative to the archive root", zip_path)
    if _DRIVE.match(name):
        raise UnsafeArchiveError(f"{where}: drive letter; expected paths relative to the archive root", zip_path)
    if ".." in parts:
        raise UnsafeArchiveError(f"{where}: '..' would write outside the target folder; refusing to extract", zip_path)
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{where}: encrypted; expected an unencrypted archive", zip_path)
    # A Unix st_mode (file type + permissions) may sit in the high 16 bits of external_attr;
    # many tools store permissions only (type 0), which means a plain file.
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if file_type == stat.S_IFLNK:
        raise UnsafeArchiveError(
            f"{where}: symbolic link; links could redirect later entries outside the "
            f"target folder, refusing to extract",
            zip_path,
        )
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchiveError(
            f"{where}: special file (mode {oct(mode)}); expected plain files and folders", zip_path
        )
    if max_bytes is not None and info.file_size > max_bytes:
        raise ArchiveError(f"{where}: {info.file_size:,} bytes; expected at most {max_bytes:,}", zip_path)
    if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafeArchiveError(
            f"{where}: compressed {info.file_size // max(info.compress_size, 1)}:1, as a zip bomb is; refusing it",
            zip_path,
        )


def check_total(zip_path: Path, total: int, archive_bytes: int) -> None:
    """Refuse an archive whose entries add up to a zip bomb, each entry small enough to pass check_member."""
    if total > (1 << 20) and total > MAX_RATIO * max(archive_bytes, 1):
        raise UnsafeArchiveError(
            f"{zip_path}: its entries unpack to {total:,} bytes from {archive_bytes:,}, "
            f"{total // max(archive_bytes, 1)}:1, as a zip bomb does; refusing it",
            zip_path,
        )


def _extract_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path, root: str, made_dirs: set[str], pbar
) -> None:
    """Write one checked entry under `root`. Plain strings and os calls: pathlib and Python's
    buffered files cost more than the data for the ~40,000 small files of GTSRB."""
    parts = [part for part in info.filename.replace("\\", "/").split("/") if part not in ("", ".")]
    if not parts:
        return
    path = os.path.join(root, *parts)
    try:
        folder = path if info.is_dir() else os.path.dirname(path)
        if folder not in made_dirs:
            os.makedirs(folder, exist_ok=True)
            made_dirs.add(folder)
        if info.is_dir():
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            for block in _blocks(archive, info, zip_path):
                os.write(fd, block)
                pbar.update(len(block))
        finally:
            os.close(fd)
    except OSError as error:  # the entry's name: a part too long, a name both a file and a folder, ...
        raise ArchiveError(
            f"{zip_path}: entry {shown(info.filename)} cannot be written ({error.strerror}); check that its "
            f"name fits a file system (no part over 255 bytes, no name both a file and a folder) and the space left",
            zip_path,
        ) from None


def _blocks(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path) -> Iterator[bytes]:
    """The entry's bytes, a block at a time, read to the end: zipfile then checks its CRC-32."""
    try:
        with archive.open(info) as src:
            while block := src.read(_COPY_CHUNK):
                yield block
    except READ_ERRORS as exc:
        raise CorruptArchiveError(
            f"{zip_path}: corrupt or truncated zip archive ({clipped(str(exc))})", zip_path
        ) from exc


__all__ = [
    "READ_ERRORS",
    "ArchiveError",
    "CorruptArchiveError",
    "UnsafeArchiveError",
    "check_member",
    "check_total",
    "safe_extract_zip",
]
