"""Where the project lives, and writing files so that a crash never leaves half of one.

Every stage output goes through `atomic_file` or `atomic_directory`: the data is written
to a temporary sibling and renamed into place only when complete, so an output is either
whole or absent, never half-written. Absent, not the previous version: `dvc repro` deletes a
stage's outputs before it runs the stage (all but `persist: true` ones, such as data/raw), so
after a failed stage they are missing. DVC's cache keeps the last version of every cached
output, and `dvc checkout <stage>` puts it back; outputs declared `cache: false` are not in the
cache but in git (`git checkout -- <path>`). Run outside DVC (`python -m pipeline.<stage>`),
a stage replaces each output only once its new version is complete.

A write that finds no room (the disk full, a quota used up, the file-size limit reached) removes
its temporary file and raises `NoSpaceError`, naming the output and what to free or raise: the
stage stops with one `error:` line, and the output's previous version, if any, stays whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import paths
from pipeline.core.errors import DataError, MissingInputError, NoSpaceError

# Queued `dvc exp run` executes in <repo>/.dvc/tmp/exps/<tmpdir>/ (and sets DVC_ROOT to it):
# the tracking store and relative data paths must still resolve to the real repository.
_EXP_TEMP_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def project_root() -> Path:
    """The repository the user works in, even from inside a queued experiment's temp copy."""
    root = os.environ.get("DVC_ROOT")
    if not root:
        try:
            root = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            root = os.getcwd()
    root = os.path.abspath(root)
    if _EXP_TEMP_MARKER in root + os.sep:
        root = root[: (root + os.sep).index(_EXP_TEMP_MARKER)]
    return Path(root)


def resolve(path: str | os.PathLike[str]) -> Path:
    """A user path from params: absolute as given, relative to the project root otherwise."""
    path = Path(os.path.expanduser(os.fspath(path)))
    return path if path.is_absolute() else Path(os.path.normpath(project_root() / path))


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of `target` for writing; rename it over `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private to their writer
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if (code := _no_room(error)) is not None:
            raise no_space(code, target) from error
        raise


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if (code := _no_room(error)) is not None:
            # the file that found no room (a nested atomic_file's, or the OSError's), under its final name
            failed = error.path if isinstance(error, NoSpaceError) else getattr(error, "filename", None)
            raise no_space(code, _final_name(failed, tmp, target)) from error
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """One process at a time between its enter and exit: an advisory lock on the file `path` (kept), which
    the system releases when the holder exits, so a killed holder never leaves it held."""
    import fcntl

    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """The block writes `path` through a library whose OSError names no file (Keras' model.save): name it."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = os.fspath(path)
        raise


# errno values of a write that found no room: the disk full, a quota used up, the file-size limit reached
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _no_room(error: BaseException) -> int | None:
    """The errno in NO_ROOM that `error` (or an error it was raised from) carries, else None."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, NoSpaceError):
            return cause.code
        if isinstance(cause, OSError) and cause.errno in NO_ROOM:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def _final_name(path: str | os.PathLike[str] | None, tmp: Path, target: Path) -> Path:
    """What `path` is called once the temporary folder `tmp` becomes `target` (`target` itself if unknown)."""
    if path is None:
        return target
    try:
        return target / Path(path).relative_to(tmp)
    except ValueError:
        return Path(path)


def no_space(code: int, path: str | os.PathLike[str]) -> NoSpaceError:
    """The user's error for a write of `path` that failed with errno `code` (one of NO_ROOM): what to free or raise."""
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            what = f"the file outgrew this process's file-size limit ({_mib(limit)}, `ulimit -f`)"
            fix = "raise the limit (`ulimit -f unlimited`)"
        else:
            what, fix = "the file outgrew the largest its filesystem holds", "keep the project on another filesystem"
    elif code == errno.EDQUOT:
        what, fix = "your disk quota is used up", "free space within your quota (or have it raised)"
    else:
        what, fix = f"the disk is full{_free(Path(path))}", "free disk space"
    return NoSpaceError(f"{path}: cannot be written, {what}; {fix}, then run again", path, code)


def _free(path: Path) -> str:
    """` (N MiB free)`: the space left on the filesystem holding `path` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            return f" ({_mib(shutil.disk_usage(folder).free)} free)"
    return ""


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 20):.1f} MiB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str | os.PathLike[str]) -> Any:
    with _input(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_arrays(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """An uncompressed .npz, loadable with `np.load(path, allow_pickle=False)`."""
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"{name}: object arrays would need pickle; refusing")
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with _input(path, "rb") as handle:
        try:
            with np.load(handle, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (zipfile.BadZipFile, EOFError, ValueError) as error:  # cut short, a failed CRC, not an .npz
            raise damaged(path, error) from error


def check_zip(path: str | os.PathLike[str]) -> None:
    """Raise DataError if the zip file at `path` (a .keras model) is damaged: not a zip, cut short, or a member
    failing its CRC; so that a library reading it has no damaged bytes to fail on with a traceback."""
    with _input(path, "rb") as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError) as error:
            raise damaged(path, error) from error
    if bad is not None:
        raise damaged(path, f"{bad} fails its CRC check")


def damaged(path: str | os.PathLike[str], problem: object) -> DataError:
    """The user's error for a file a stage wrote whole that no longer reads: it changed on disk since."""
    return DataError(
        f"{path}: damaged ({problem}); delete it and run `dvc repro` to write it again (if it came from a DVC "
        f"remote, the remote and .dvc/cache hold the damaged copy too: see docs/several-machines.md)",
        path,
    )


def map_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz (`save_arrays`) as read-only memory maps of the file, each member's
    CRC checked first (a pass over its bytes, in a reused buffer). A map shares the page cache and allocates
    nothing, where `load_arrays` allocates and fills a copy (what that costs: bench/RESULTS.md, evaluate)."""
    arrays: dict[str, np.ndarray] = {}
    with _input(path, "rb") as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                        raise ValueError(f"{info.filename} is not an uncompressed .npy member")
                    with archive.open(info) as member:
                        version = np.lib.format.read_magic(member)
                        if version not in ((1, 0), (2, 0)):
                            raise ValueError(f"{info.filename}: .npy format {version}")
                        read_header = np.lib.format.read_array_header_1_0
                        if version == (2, 0):
                            read_header = np.lib.format.read_array_header_2_0
                        shape, fortran, dtype = read_header(member)
                        if dtype.hasobject:
                            raise ValueError(f"{info.filename} holds Python objects")
                        header = member.tell()
                        if header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != info.file_size:
                            raise ValueError(f"{info.filename}: its shape {shape} does not fill the member")
                        while member.read(1 << 20):  # to its end, where zipfile checks the CRC
                            pass
                    handle.seek(info.header_offset + 26)  # the local header's name and extra lengths
                    lengths = np.frombuffer(handle.read(4), "<u2")
                    start = info.header_offset + 30 + int(lengths.sum()) + header
                    name, order = info.filename[: -len(".npy")], "F" if fortran else "C"
                    if not np.prod(shape, dtype=np.int64):
                        arrays[name] = np.empty(shape, dtype, order=order)
                        arrays[name].setflags(write=False)
                    else:
                        arrays[name] = np.memmap(handle, dtype, "r", offset=start, shape=shape, order=order)
        except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as error:  # cut short, bad CRC, encrypted
            raise damaged(path, error) from error
    return arrays


def load_split(dataset: str, name: str, mapped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a normalized split (train, val or test), as the normalize stage wrote them;
    `mapped`: as read-only memory maps (`map_arrays`), for a reader that samples a split or reads it once."""
    path = paths.NORMALIZED / dataset / f"{name}.npz"
    arrays = map_arrays(path) if mapped else load_arrays(path)
    return arrays["x"], arrays["y"]


def _input(path: str | os.PathLike[str], mode: str = "r", encoding: str | None = None) -> Any:
    """`open` for a file a stage reads, failing with what to do when an earlier stage has not written it."""
    try:
        return open(path, mode, encoding=encoding)
    except FileNotFoundError:
        raise MissingInputError(
            f"{path}: missing; run the stages that write it first (`dvc repro` runs every stage in order)"
        ) from None


def md5_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
