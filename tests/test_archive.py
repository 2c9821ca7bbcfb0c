"""safe_extract_zip: what a good archive gives, and what hostile or broken ones cannot do."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from pipeline.datasets import archive
from pipeline.datasets.archive import ArchiveError, CorruptArchiveError, UnsafeArchiveError, safe_extract_zip

GOOD_FILES = {
    "GTSRB/Final_Training/Images/00000/GT-00000.csv": b"Filename;Width\r\n",
    "GTSRB/Final_Training/Images/00000/00000_00000.ppm": b"P6\n1 1\n255\n\x01\x02\x03",
    "GTSRB/Readme.txt": b"hello " * 1000,
}


def make_zip(
    path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = (), compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name in dirs:
            zf.writestr(zipfile.ZipInfo(name), b"")  # a name ending in '/' is a folder entry
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def leftovers(folder: Path, *keep: str) -> list[str]:
    """Entries of `folder` other than `keep`: temp folders an extraction should not leave."""
    return sorted(name for name in os.listdir(folder) if name not in keep)


def test_extracts_every_file_and_folder(tmp_path):
    zip_path = make_zip(tmp_path / "good.zip", GOOD_FILES, dirs=("GTSRB/", "GTSRB/Empty/"))
    target = safe_extract_zip(zip_path, tmp_path / "out")
    assert target == tmp_path / "out"
    for name, data in GOOD_FILES.items():
        assert (target / name).read_bytes() == data
    assert (target / "GTSRB" / "Empty").is_dir()
    assert leftovers(tmp_path, "good.zip", "out") == []


def test_replaces_an_existing_target_whole(tmp_path):
    target = tmp_path / "out"
    (target / "stale").mkdir(parents=True)
    (target / "stale" / "old.txt").write_text("from a previous extraction")
    safe_extract_zip(make_zip(tmp_path / "good.zip", GOOD_FILES), target)
    assert not (target / "stale").exists()
    assert (target / "GTSRB" / "Readme.txt").is_file()


def test_windows_separators_and_dot_components_are_normalised(tmp_path):
    zip_path = make_zip(tmp_path / "win.zip", {"GTSRB\\Final_Test\\a.txt": b"a", "./b/./c.txt": b"c"})
    target = safe_extract_zip(zip_path, tmp_path / "out")
    assert (target / "GTSRB" / "Final_Test" / "a.txt").read_bytes() == b"a"
    assert (target / "b" / "c.txt").read_bytes() == b"c"


@pytest.mark.parametrize(
    "entry",
    [
        "../evil.txt",
        "GTSRB/../../evil.txt",
        "..\\evil.txt",
        "GTSRB\\..\\..\\evil.txt",
        "/tmp/evil.txt",
        "\\evil.txt",
        "C:\\evil.txt",
        "c:evil.txt",
    ],
)
def test_refuses_entries_that_leave_the_target(tmp_path, entry):
    zip_path = make_zip(tmp_path / "evil.zip", {"GTSRB/fine.txt": b"fine", entry: b"pwned"})
    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract_zip(zip_path, tmp_path / "out")
    message = str(raised.value)
    assert str(zip_path) in message and repr(entry) in message
    assert isinstance(raised.value, ValueError)
    # Refused before anything is written: no target, no temp folder, no escaped file.
    assert leftovers(tmp_path, "evil.zip") == []
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize(
    "mode, what",
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFIFO | 0o644, "special file"),
        (stat.S_IFCHR | 0o644, "special file"),
    ],
)
def test_refuses_links_and_special_files(tmp_path, mode, what):
    zip_path = tmp_path / "link.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("GTSRB/fine.txt", b"fine")
        info = zipfile.ZipInfo("GTSRB/escape")
        info.external_attr = mode << 16
        zf.writestr(info, b"/etc")  # a symlink's data is its target
        zf.writestr("GTSRB/escape/passwd", b"written through the link")
    with pytest.raises(UnsafeArchiveError, match=what) as raised:
        safe_extract_zip(zip_path, tmp_path / "out")
    assert str(zip_path) in str(raised.value) and "'GTSRB/escape'" in str(raised.value)
    assert leftovers(tmp_path, "link.zip") == []


def test_refuses_a_zip_bomb_before_writing_anything(tmp_path):
    """One guard for extraction and for predict's in-memory reading: an entry compressed as a bomb is."""
    zip_path = make_zip(tmp_path / "bomb.zip", {"GTSRB/fine.txt": b"fine", "GTSRB/zeros.ppm": bytes(8 << 20)})
    with pytest.raises(UnsafeArchiveError, match=r"entry 'GTSRB/zeros.ppm': compressed \d+:1, as a zip bomb is"):
        safe_extract_zip(zip_path, tmp_path / "out")
    assert leftovers(tmp_path, "bomb.zip") == []


def test_truncated_archive_is_a_clear_error(tmp_path):
    good = make_zip(tmp_path / "good.zip", GOOD_FILES).read_bytes()
    zip_path = tmp_path / "GTSRB_Final_Training_Images.zip"
    zip_path.write_bytes(good[: len(good) // 2])  # an interrupted download
    with pytest.raises(CorruptArchiveError) as raised:
        safe_extract_zip(zip_path, tmp_path / "out")
    message = str(raised.value)
    assert str(zip_path) in message and "corrupt or truncated" in message
    assert message.startswith(f"{zip_path}: corrupt or truncated zip archive")
    assert leftovers(tmp_path, "good.zip", zip_path.name) == []


def test_not_a_zip_is_a_clear_error(tmp_path):
    zip_path = tmp_path / "page.zip"
    zip_path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CorruptArchiveError, match="page.zip: corrupt or truncated"):
        safe_extract_zip(zip_path, tmp_path / "out")


def test_damaged_entry_leaves_nothing_half_written(tmp_path):
    """A CRC failure in the last entry is found mid-extraction: the previous target stays."""
    files = {f"GTSRB/{i:05d}.ppm": bytes([i]) * 5000 for i in range(20)}
    zip_path = make_zip(tmp_path / "damaged.zip", files, compression=zipfile.ZIP_STORED)
    data = bytearray(zip_path.read_bytes())
    last = data.rindex(bytes([19]) * 5000)
    data[last + 100] ^= 0xFF  # stored, so this changes the content and breaks its CRC-32
    zip_path.write_bytes(bytes(data))
    target = tmp_path / "out"
    target.mkdir()
    (target / "previous.txt").write_text("a good earlier extraction")
    with pytest.raises(CorruptArchiveError, match="CRC"):
        safe_extract_zip(zip_path, target)
    assert os.listdir(target) == ["previous.txt"]
    assert leftovers(tmp_path, "damaged.zip", "out") == []


def test_interrupted_extraction_leaves_nothing(tmp_path, monkeypatch):
    zip_path = make_zip(tmp_path / "good.zip", {f"d/{i}.bin": b"x" * 100 for i in range(10)})
    writes = []

    def write_then_interrupt(fd, block):
        writes.append(block)
        if len(writes) == 5:
            raise KeyboardInterrupt
        return os.write(fd, block)

    monkeypatch.setattr(archive.os, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        safe_extract_zip(zip_path, tmp_path / "out")
    assert leftovers(tmp_path, "good.zip") == []


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such archive"):
        safe_extract_zip(tmp_path / "absent.zip", tmp_path / "out")


def test_errors_share_one_base_class():
    assert issubclass(UnsafeArchiveError, ArchiveError) and issubclass(CorruptArchiveError, ArchiveError)
    assert issubclass(ArchiveError, ValueError)


def test_progress_bar_for_big_archives_only(tmp_path, capsys, monkeypatch):
    zip_path = make_zip(tmp_path / "good.zip", GOOD_FILES)
    safe_extract_zip(zip_path, tmp_path / "small")
    assert "extract good.zip" not in capsys.readouterr().err
    monkeypatch.setattr(archive, "PROGRESS_MIN_BYTES", 1)
    safe_extract_zip(zip_path, tmp_path / "big")
    assert "extract good.zip" in capsys.readouterr().err
