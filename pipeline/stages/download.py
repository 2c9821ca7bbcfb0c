"""Stage `download@<dataset>`: fetch a dataset's official files and verify them.

Sources are tried in order, for each file, until one gives a file that verifies:
  1. the dataset's own source (env PIPELINE_SOURCE_<KEY>, else `datasets.<key>.source`):
     a folder or URL holding the dataset's files directly;
  2. the mirror (env PIPELINE_DATA_MIRROR, else `download.mirror`): a folder or URL
     with one subfolder per dataset key (`mnist/`, `fashion_mnist/`, `gtsrb/`);
  3. the official hosts, then known public mirrors (listed in each dataset module).

Verification policy:
  - any source: the published md5 (and size) of the file, or, for `.gz` files, the
    published md5 of the decompressed payload (so a recompressed copy such as Debian's
    is accepted on its content, while a corrupt one is still rejected);
  - a local folder only, and only with `download.accept_local_repacks: true`: a file
    whose md5 is listed in an `MD5SUMS` file beside it (in its folder, or in the folder
    above as `<folder name>/<file>`). This admits a user's own repackaged copy (e.g. the
    downscaled GTSRB in ../shared/datasets) whose integrity its owner vouches for. It is
    recorded as `repacked` in the manifest and logged as a warning. Files fetched over
    the network never get this exception: they match the official checksums or are
    rejected.

A dataset users often keep unpacked (GTSRB) may also come from a local folder holding the
official layout already extracted (e.g. `GTSRB/Final_Training/Images/`), when none of its
archives is found anywhere. No checksum is published for extracted files, so this counts
as user-provided data: it needs `download.accept_local_repacks: true`, is copied into
`data/raw/<key>/` (atomically, part by part), and is recorded in the manifest with the
file count and bytes; the split stage then validates every image and CSV row as it decodes.

Each file is written to a temporary name and renamed into place only once verified, so
`data/raw/<key>` never holds a partial or unverified file. A file already present that
verifies is not fetched again; one that does not is deleted and fetched again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.core.errors import UserError
from pipeline.core.progress import bar
from pipeline.datasets import DatasetSpec, RemoteFile, get
from pipeline.datasets.manifest import EXTRACTED, MANIFEST, MD5SUMS, REPACKED, read_manifest

ARGUMENTS = ("dataset",)

log = logging.getLogger(__name__)
MIRROR_ENV = "PIPELINE_DATA_MIRROR"
CHUNK = 1 << 20


class DownloadError(UserError, RuntimeError):
    """No source gave a verified copy of a file."""


class FetchError(OSError):
    """One source could not deliver a file; the message says why, for the final report."""


@dataclass(frozen=True)
class Source:
    label: str  # where the source was configured, e.g. "mirror (PIPELINE_DATA_MIRROR)"
    base: str  # folder path or URL prefix, ending where the file names start

    @property
    def is_url(self) -> bool:
        return "://" in self.base

    def location(self, name: str) -> str:
        return self.base.rstrip("/") + "/" + name if self.is_url else str(Path(self.base) / name)


def source_env_var(key: str) -> str:
    return f"PIPELINE_SOURCE_{key.upper()}"


def sources_for(
    spec: DatasetSpec, dataset_source: str | None, mirror: str | None, environ: Mapping[str, str] = os.environ
) -> list[Source]:
    """The ordered places to look for `spec`'s files; environment variables win over params.

    `dataset_source` and `mirror` are the params values (`datasets.<key>.source`,
    `download.mirror`); relative folders are relative to the project root.
    """
    found: list[Source] = []
    own_env = source_env_var(spec.key)
    if environ.get(own_env):
        found.append(Source(f"dataset source ({own_env})", _local_or_url(environ[own_env])))
    elif dataset_source:
        found.append(Source(f"dataset source (datasets.{spec.key}.source)", _local_or_url(dataset_source)))
    if environ.get(MIRROR_ENV):
        found.append(Source(f"mirror ({MIRROR_ENV})", _join(_local_or_url(environ[MIRROR_ENV]), spec.key)))
    elif mirror:
        found.append(Source("mirror (download.mirror)", _join(_local_or_url(mirror), spec.key)))
    for index, url in enumerate(spec.urls):
        found.append(Source("official host" if index == 0 else "known mirror", url))
    return found


def _local_or_url(location: str) -> str:
    if location.startswith("file://"):  # a folder written as a URL is still a local folder
        return urllib.request.url2pathname(urllib.parse.urlparse(location).path)
    return location if "://" in location else str(files.resolve(location))


def _join(base: str, key: str) -> str:
    return base.rstrip("/") + "/" + key if "://" in base else str(Path(base) / key)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    how: str  # "official md5", "official payload md5", REPACKED, or why it was rejected
    md5: str


def verify(path: Path, remote: RemoteFile, local_sums: Mapping[str, str] | None, accept_repacks: bool) -> Verdict:
    """Check a file against the policy in the module docstring.

    `local_sums` is the source folder's MD5SUMS (None for network sources: they never
    get the repack exception).
    """
    md5 = files.md5_of(path)
    size = path.stat().st_size
    if md5 == remote.md5 and (remote.size is None or size == remote.size):
        return Verdict(True, "official md5", md5)
    if remote.payload_md5 and remote.name.endswith(".gz") and _payload_md5(path) == remote.payload_md5:
        return Verdict(True, "official payload md5", md5)
    if local_sums is not None and local_sums.get(remote.name) == md5:
        if accept_repacks:
            return Verdict(True, REPACKED, md5)
        return Verdict(
            False,
            f"md5 {md5} is not the official {remote.md5}; the source's {MD5SUMS} lists it as a "
            "repacked copy, set download.accept_local_repacks: true to accept it",
            md5,
        )
    reason = f"{size} bytes with md5 {md5}, expected the official "
    reason += f"{remote.size} bytes with md5 {remote.md5}" if remote.size is not None else f"md5 {remote.md5}"
    if remote.payload_md5:
        reason += f" (or a gzip whose decompressed payload has md5 {remote.payload_md5})"
    return Verdict(False, reason, md5)


def _payload_md5(path: Path) -> str | None:
    """md5 of a gzip file's decompressed content; None when it is not a valid gzip."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def read_md5sums(folder: Path) -> dict[str, str]:
    """File name -> md5 from `md5sum`-style lists: `folder/MD5SUMS`, or the parent's as `<folder name>/<file>`.

    The parent's list is keyed by the folder's own name so that it only ever vouches for
    files in this very folder (that is what `md5sum */*` run in the parent writes).
    """
    sums: dict[str, str] = {}
    # The folder's own list is read last, so it wins where both list a file.
    for listing, prefix in ((folder.parent / MD5SUMS, f"{folder.name}/"), (folder / MD5SUMS, "")):
        if not listing.is_file():
            continue
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                continue
            md5, name = parts[0].lower(), parts[1].strip().lstrip("*")  # `*name` marks binary mode
            name = name.removeprefix("./")
            if name.startswith(prefix) and "/" not in name[len(prefix) :]:
                sums[name[len(prefix) :]] = md5
    return sums


def fetch_to(location: str, target: Path, size_hint: int | None, timeout: float) -> None:
    """Copy a local file or download a URL to `target`, with a progress bar; FetchError says why not."""
    name = location.rsplit("/", 1)[-1]
    try:
        if "://" not in location:
            source = Path(location)
            if not source.is_file():
                raise FetchError("no such file")
            with open(source, "rb") as src:
                _copy(src, target, source.stat().st_size, name)
            return
        if not location.startswith(("http://", "https://")):
            raise FetchError("only http(s) URLs and local folders are supported")
        request = urllib.request.Request(location, headers={"User-Agent": "cnn-pipeline/0.1"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
            length = response.headers.get("Content-Length")
            promised = int(length) if length and length.isdigit() else None
            received = _copy(response, target, promised or size_hint, name)
        # http.client returns a short body without complaint when the server closes early.
        if promised is not None and received < promised:
            raise FetchError(f"transfer truncated: received {received} of {promised} bytes")
    except FetchError:
        raise
    except urllib.error.HTTPError as error:
        raise FetchError(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise FetchError(f"cannot connect: {error.reason}") from error
    except TimeoutError as error:
        raise FetchError(f"timed out after {timeout:g} s") from error
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise FetchError(f"{type(error).__name__}: {error}") from error


def _copy(stream: Any, target: Path, total: int | None, name: str) -> int:
    """Stream to `target`, flushed to disk (it is renamed into place next); returns the bytes written."""
    written = 0
    with open(target, "wb") as out, bar(total, name, "B") as progress:
        while block := stream.read(CHUNK):
            out.write(block)
            written += len(block)
            progress.update(len(block))
        out.flush()
        os.fsync(out.fileno())
    return written


def fetch_file(
    remote: RemoteFile, sources: list[Source], out_dir: Path, key: str, accept_repacks: bool, timeout: float
) -> dict[str, Any]:
    """Try every source in order; return the manifest entry of the first verified copy."""
    tried: list[str] = []
    target = out_dir / remote.name
    tmp = out_dir / f".{remote.name}.{os.getpid()}.part"  # hidden, and unique per process
    for source in sources:
        location = source.location(remote.name)
        try:
            fetch_to(location, tmp, remote.size, timeout)
            local_sums = None if source.is_url else read_md5sums(Path(source.base))
            verdict = verify(tmp, remote, local_sums, accept_repacks)
            if not verdict.ok:
                tried.append(f"  - {source.label} {location}: rejected, {verdict.how}")
                log.warning("%s from %s rejected: %s", remote.name, location, verdict.how)
                continue
            os.replace(tmp, target)
        except FetchError as error:
            tried.append(f"  - {source.label} {location}: {error}")
            log.info("%s: %s failed: %s", remote.name, location, error)
            continue
        finally:
            tmp.unlink(missing_ok=True)
        if verdict.how == REPACKED:
            log.warning(
                "%s: accepted a repacked local copy (md5 %s, not the official %s): results on it "
                "are not comparable with results on the official files",
                remote.name,
                verdict.md5,
                remote.md5,
            )
        log.info("%s: %s verified by %s", remote.name, location, verdict.how)
        return {"md5": verdict.md5, "bytes": target.stat().st_size, "verified_by": verdict.how, "source": location}
    raise DownloadError(
        f"could not get a verified copy of {key}/{remote.name}. Sources tried, in order:\n"
        + "\n".join(tried)
        + f"\nWithout internet access, point the pipeline at a copy of the data: set {MIRROR_ENV}=/path/to/mirror "
        f"(or download.mirror in params.yaml) to a folder or URL holding {key}/{remote.name}, or set "
        f"{source_env_var(key)} (or datasets.{key}.source) to a folder or URL holding {remote.name}."
    )


def download(
    spec: DatasetSpec, sources: list[Source], out_dir: Path, accept_repacks: bool = False, timeout: float = 60.0
) -> dict[str, dict[str, Any]]:
    """Make `out_dir` hold a verified copy of every file of `spec`; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(".*.part"):  # from a run that was killed mid-transfer
        leftover.unlink(missing_ok=True)
    manifest_path = out_dir / MANIFEST
    previous = read_manifest(manifest_path)
    # Check every file in place first, so that even a run that fails below leaves only
    # files that are valid under the current policy.
    manifest: dict[str, dict[str, Any]] = {}
    for remote in spec.files:
        entry = _present_and_valid(remote, out_dir / remote.name, previous.get(remote.name), accept_repacks)
        if entry is not None:
            manifest[remote.name] = entry
    if manifest_path.exists():
        _write_manifest(manifest_path, spec, manifest)  # forget files deleted just now
    if not manifest and spec.extracted_parts is not None:
        extracted = _extracted_copy(spec, sources, out_dir, previous, accept_repacks)
        if extracted is not None:
            return extracted
    for remote in spec.files:
        if remote.name not in manifest:
            manifest[remote.name] = fetch_file(remote, sources, out_dir, spec.key, accept_repacks, timeout)
            _write_manifest(manifest_path, spec, manifest)  # a later failure keeps the record of this one
    for stray in sorted({p.name for p in out_dir.iterdir()} - set(manifest) - {MANIFEST}):
        log.warning("%s: not one of %s's files, ignored", out_dir / stray, spec.key)
    return _write_manifest(manifest_path, spec, manifest)


def _extracted_copy(
    spec: DatasetSpec, sources: list[Source], out_dir: Path, previous: dict[str, Any], accept_repacks: bool
) -> dict[str, dict[str, Any]] | None:
    """Use (or keep) an extracted copy of the official layout found in a local source; None if there is none.

    Only consulted when no archive is present in `out_dir`; archives anywhere in the sources win.
    """
    assert spec.extracted_parts is not None
    if EXTRACTED in previous and spec.extracted_parts(out_dir) is not None:
        log.info("%s: extracted copy from %s already present, skipped", out_dir, previous[EXTRACTED].get("source"))
        return previous
    for source in sources:
        if source.is_url or not Path(source.base).is_dir():
            continue
        if any((Path(source.base) / remote.name).is_file() for remote in spec.files):
            return None  # the archives are there: verify them the usual way
        parts = spec.extracted_parts(Path(source.base))
        if parts is None:
            continue
        if not accept_repacks:
            raise DownloadError(
                f"{source.base}: holds {spec.key} extracted, and extracted files have no official checksums; set "
                f"download.accept_local_repacks: true in params.yaml to use this copy, or provide the official "
                f"archives ({', '.join(r.name for r in spec.files)})"
            )
        count = size = 0
        for inside, origin in parts.items():
            if origin.is_dir():
                with files.atomic_directory(out_dir / inside) as tmp:
                    shutil.copytree(origin, tmp, dirs_exist_ok=True)
                copied = [p for p in (out_dir / inside).rglob("*") if p.is_file()]
            else:
                with open(origin, "rb") as src, files.atomic_file(out_dir / inside) as dst:
                    shutil.copyfileobj(src, dst)
                copied = [out_dir / inside]
            count, size = count + len(copied), size + sum(p.stat().st_size for p in copied)
        log.warning(
            "%s: copied the extracted layout from %s (%d files); no official checksum applies to extracted "
            "files, so results are comparable with official ones only if that copy is intact",
            spec.key,
            source.base,
            count,
        )
        manifest = {
            EXTRACTED: {
                "source": source.base,
                "files": count,
                "bytes": size,
                "verified_by": "user-provided extracted layout (format checked when decoded)",
            }
        }
        files.write_json(out_dir / MANIFEST, manifest)
        return manifest
    return None


def _write_manifest(path: Path, spec: DatasetSpec, manifest: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Write the entries in the spec's file order (stable diffs); returns what was written."""
    ordered = {remote.name: manifest[remote.name] for remote in spec.files if remote.name in manifest}
    files.write_json(path, ordered)
    return ordered


def _present_and_valid(
    remote: RemoteFile, path: Path, recorded: dict[str, Any] | None, accept_repacks: bool
) -> dict[str, Any] | None:
    """The manifest entry of a file already in place that still verifies; else None (and no file).

    The official checksums are checked again every time (cheap, and catches a corrupted
    copy); a repacked copy is trusted only through the md5 recorded when it was accepted,
    and only while repacks are accepted.
    """
    if not path.is_file():
        return None
    recorded = recorded if isinstance(recorded, dict) else None
    verdict = verify(path, remote, None, accept_repacks=False)
    if verdict.ok:
        log.info("%s: already present, verified by %s, skipped", remote.name, verdict.how)
        source = recorded.get("source", "already present") if recorded else "already present"
        return {"md5": verdict.md5, "bytes": path.stat().st_size, "verified_by": verdict.how, "source": source}
    if accept_repacks and recorded and recorded.get("verified_by") == REPACKED and recorded.get("md5") == verdict.md5:
        log.info("%s: already present (repacked copy accepted earlier), skipped", remote.name)
        return recorded
    log.warning("%s: present but does not verify (%s); deleting it and fetching it again", path, verdict.how)
    path.unlink()
    return None


def main(args: argparse.Namespace, params: Params) -> None:
    spec = get(args.dataset)
    settings = params.dataset(spec.key)
    sources = sources_for(spec, settings.source, params.download.mirror)
    manifest = download(
        spec, sources, paths.RAW / spec.key, params.download.accept_local_repacks, params.download.timeout_seconds
    )
    with tracking.stage_run(params, spec.key, "download"):
        tracking.log_params(
            {f"file.{name}.{field}": value for name, entry in manifest.items() for field, value in entry.items()}
        )
        tracking.log_metrics({"bytes_total": sum(int(e["bytes"]) for e in manifest.values())})
