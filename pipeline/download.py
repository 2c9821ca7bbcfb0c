"""Stage `download@<dataset>`: fetch a dataset's official files and verify them.

Sources are tried in order, for each file, until one gives a file that verifies:
  1. the dataset's own source (`datasets.<key>.source`, or env PIPELINE_SOURCE_<KEY>):
     a folder or URL holding the dataset's files directly;
  2. the mirror (env PIPELINE_DATA_MIRROR, else `download.mirror`): a folder or URL
     with one subfolder per dataset key (`mnist/`, `fashion_mnist/`, `gtsrb/`);
  3. the official hosts, then known public mirrors (listed in each dataset module).

Verification policy:
  - any source: the published md5 of the file, or, for `.gz` files, the published md5
    of the decompressed payload (so a recompressed copy such as Debian's is accepted on
    its content);
  - a local folder only, and only with `download.accept_local_repacks: true`: a file
    whose md5 is listed in an `MD5SUMS` file beside it (in its folder, or in the folder
    above as `<key>/<file>`). This admits a user's own repackaged copy (e.g. the
    downscaled GTSRB in ../shared/datasets) whose integrity its owner vouches for. It is
    recorded as `repacked` in the manifest and logged as a warning. Files fetched over
    the network never get this exception: they match the official checksums or are
    rejected.

Each file is written to a temporary name and renamed into place only once verified;
a file already present and matching the manifest is not fetched again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline import files, tracking
from pipeline.config import Params, load_params
from pipeline.datasets import DatasetSpec, RemoteFile, get
from pipeline.progress import bar, setup_logging

log = logging.getLogger("pipeline.download")
MIRROR_ENV = "PIPELINE_DATA_MIRROR"
MANIFEST = "MANIFEST.json"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """No source gave a verified copy of a file."""


@dataclass(frozen=True)
class Source:
    label: str  # e.g. "mirror (PIPELINE_DATA_MIRROR)"
    base: str  # folder path or URL prefix, ending where the file names start

    @property
    def is_url(self) -> bool:
        return "://" in self.base

    def location(self, name: str) -> str:
        return self.base.rstrip("/") + "/" + name if self.is_url else str(Path(self.base) / name)


def source_env_var(key: str) -> str:
    return f"PIPELINE_SOURCE_{key.upper()}"


def sources_for(spec: DatasetSpec, params: Params) -> list[Source]:
    """The ordered list of places to look for `spec`'s files."""
    found: list[Source] = []
    own_env = source_env_var(spec.key)
    if os.environ.get(own_env):
        found.append(Source(f"dataset source ({own_env})", _local_or_url(os.environ[own_env])))
    elif params.dataset(spec.key).source:
        found.append(Source(f"dataset source (datasets.{spec.key}.source)", _local_or_url(params.dataset(spec.key).source)))
    if os.environ.get(MIRROR_ENV):
        found.append(Source(f"mirror ({MIRROR_ENV})", _join(_local_or_url(os.environ[MIRROR_ENV]), spec.key)))
    elif params.download.mirror:
        found.append(Source("mirror (download.mirror)", _join(_local_or_url(params.download.mirror), spec.key)))
    for index, url in enumerate(spec.urls):
        found.append(Source("official host" if index == 0 else "known mirror", url))
    return found


def _local_or_url(location: str) -> str:
    return location if "://" in location else str(files.resolve(location))


def _join(base: str, key: str) -> str:
    return base.rstrip("/") + "/" + key if "://" in base else str(Path(base) / key)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    how: str  # "official md5", "official payload md5", "repacked (MD5SUMS)", or why it was rejected
    md5: str


def verify(path: Path, remote: RemoteFile, local_sums: dict[str, str] | None, accept_repacks: bool) -> Verdict:
    """Check a fetched file against the policy in the module docstring."""
    md5 = files.md5_of(path)
    if md5 == remote.md5:
        return Verdict(True, "official md5", md5)
    if remote.payload_md5 and remote.name.endswith(".gz"):
        payload = _payload_md5(path)
        if payload == remote.payload_md5:
            return Verdict(True, "official payload md5", md5)
    if local_sums is not None and local_sums.get(remote.name) == md5:
        if accept_repacks:
            return Verdict(True, "repacked (listed in the source's MD5SUMS)", md5)
        return Verdict(False, f"md5 {md5} is not the official {remote.md5}; the source's MD5SUMS lists it as a "
                              "repacked copy, set download.accept_local_repacks: true to accept it", md5)
    reason = f"md5 {md5}, expected the official {remote.md5}"
    if remote.payload_md5:
        reason += f" (or a decompressed payload with md5 {remote.payload_md5})"
    return Verdict(False, reason, md5)


def _payload_md5(path: Path) -> str | None:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    except (OSError, EOFError):
        return None
    return digest.hexdigest()


def read_md5sums(folder: Path, key: str) -> dict[str, str]:
    """File name -> md5 from an MD5SUMS in `folder` or (as `<key>/<name>`) in its parent."""
    sums: dict[str, str] = {}
    for manifest, prefix in ((folder.parent / "MD5SUMS", f"{key}/"), (folder / "MD5SUMS", "")):
        if manifest.is_file():
            for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split(maxsplit=1)
                if len(parts) == 2 and parts[1].lstrip("*").startswith(prefix):
                    sums[parts[1].lstrip("*")[len(prefix):]] = parts[0].lower()
    return sums


def fetch_to(source: Source, remote: RemoteFile, target: Path, timeout: float) -> None:
    """Copy or download one file to `target` (a temporary path), with a progress bar."""
    location = source.location(remote.name)
    if not source.is_url:
        if not Path(location).is_file():
            raise FileNotFoundError(f"{location} does not exist")
        size = Path(location).stat().st_size
        with open(location, "rb") as src, open(target, "wb") as dst, bar(size, remote.name, "B") as progress:
            while block := src.read(CHUNK):
                dst.write(block)
                progress.update(len(block))
        return
    request = urllib.request.Request(location, headers={"User-Agent": "cnn-pipeline/0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https only, checked)
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else remote.size
        received = 0
        with open(target, "wb") as dst, bar(expected, remote.name, "B") as progress:
            while block := response.read(CHUNK):
                dst.write(block)
                received += len(block)
                progress.update(len(block))
    if expected is not None and received < expected:
        raise OSError(f"transfer truncated: received {received} of {expected} bytes")


def fetch_file(remote: RemoteFile, sources: list[Source], out_dir: Path, key: str, accept_repacks: bool,
               timeout: float) -> dict[str, str]:
    """Try every source in order; return the manifest entry of the first verified copy."""
    tried: list[str] = []
    for source in sources:
        if source.is_url and not source.base.startswith(("http://", "https://")):
            tried.append(f"  - {source.label} {source.base}: only http(s) URLs are supported")
            continue
        location = source.location(remote.name)
        tmp = out_dir / f".{remote.name}.part"
        try:
            fetch_to(source, remote, tmp, timeout)
            local_sums = None if source.is_url else read_md5sums(Path(source.base), key)
            verdict = verify(tmp, remote, local_sums, accept_repacks)
            if not verdict.ok:
                tried.append(f"  - {source.label} {location}: rejected, {verdict.how}")
                log.warning("%s from %s rejected: %s", remote.name, location, verdict.how)
                continue
            os.replace(tmp, out_dir / remote.name)
            if verdict.how.startswith("repacked"):
                log.warning("%s: accepted a repacked local copy (md5 %s, not the official %s): results on it "
                            "are not comparable with the official files", remote.name, verdict.md5, remote.md5)
            log.info("%s: %s verified by %s", remote.name, location, verdict.how)
            return {"md5": verdict.md5, "bytes": (out_dir / remote.name).stat().st_size, "verified_by": verdict.how,
                    "source": location}
        except (OSError, urllib.error.URLError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            tried.append(f"  - {source.label} {location}: {reason}")
            log.info("%s: %s failed: %s", remote.name, location, reason)
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(
        f"could not get a verified copy of {key}/{remote.name}. Sources tried, in order:\n" + "\n".join(tried) +
        f"\nWithout internet access, point the pipeline at a copy of the data: set {MIRROR_ENV}=/path/to/mirror "
        f"(or download.mirror in params.yaml) to a folder holding {key}/{remote.name}, or set "
        f"{source_env_var(key)} (or datasets.{key}.source) to a folder holding {remote.name}.")


def download(spec: DatasetSpec, params: Params, out_dir: Path) -> dict[str, dict[str, str]]:
    """Make `out_dir` hold every verified file of `spec`; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    previous = files.read_json(manifest_path) if manifest_path.is_file() else {}
    sources = sources_for(spec, params)
    manifest: dict[str, dict[str, str]] = {}
    for remote in spec.files:
        entry = previous.get(remote.name)
        present = out_dir / remote.name
        if entry and present.is_file() and _still_valid(entry, present, params):
            log.info("%s: already present and verified, skipped", remote.name)
            manifest[remote.name] = entry
            continue
        manifest[remote.name] = fetch_file(remote, sources, out_dir, spec.key, params.download.accept_local_repacks,
                                           params.download.timeout_seconds)
        files.write_json(manifest_path, {**previous, **manifest})
    for stray in set(p.name for p in out_dir.iterdir()) - set(manifest) - {MANIFEST}:
        log.warning("%s: not one of %s's files, ignored", out_dir / stray, spec.key)
    files.write_json(manifest_path, manifest)
    return manifest


def _still_valid(entry: dict[str, str], path: Path, params: Params) -> bool:
    if entry.get("verified_by", "").startswith("repacked") and not params.download.accept_local_repacks:
        return False
    return path.stat().st_size == entry.get("bytes") and files.md5_of(path) == entry.get("md5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params()
    spec = get(args.dataset)
    params.dataset(spec.key)
    out_dir = Path("data/raw") / spec.key
    try:
        manifest = download(spec, params, out_dir)
    except DownloadError as error:
        log.error("%s", error)
        return 1
    with tracking.stage_run(params, spec.key, "download"):
        tracking.log_params({f"file.{name}.{field}": value for name, entry in manifest.items()
                             for field, value in entry.items()})
        tracking.log_metrics({"bytes_total": sum(int(e["bytes"]) for e in manifest.values())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
