"""data/raw/<dataset>/MANIFEST.json: where each verified raw file came from (written by download),
and what to do about a file that verified but does not decode (read by split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core import files

MANIFEST = "MANIFEST.json"
MD5SUMS = "MD5SUMS"
REPACKED = "repacked (listed in the source's MD5SUMS)"
EXTRACTED = "extracted"  # the manifest key of a copy of an extracted layout


def read_manifest(path: Path) -> dict[str, Any]:
    """The previous run's manifest; an unreadable one only costs re-verifying repacked copies."""
    try:
        manifest = files.read_json(path)
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def damaged_file_advice(raw_dir: Path, path: str | None) -> str:
    """What to do about a file of `raw_dir` that verified but does not decode, by where it came from:
    fetching it again helps only if its source is good, and a repacked copy's source is the same damaged file."""
    manifest = read_manifest(raw_dir / MANIFEST)
    if EXTRACTED in manifest:
        return (
            f"the files are a copy of the extracted layout at {manifest[EXTRACTED].get('source')}: fix the file "
            f"there, then delete {raw_dir} and run `dvc repro`"
        )
    entry = manifest.get(Path(path).name) if path and Path(path).parent == raw_dir else None
    if isinstance(entry, dict) and entry.get("verified_by") == REPACKED:
        return (
            f"it is the repacked copy {entry.get('source')}, accepted because an {MD5SUMS} vouches for it: "
            f"replace that copy with a good one (and its {MD5SUMS} line), or remove its line to use the official "
            f"file; then delete {path} and run `dvc repro`"
        )
    return f"delete {path or raw_dir} and run `dvc repro` to fetch it again"
