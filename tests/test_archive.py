"""safe_extract_zip: what a good archive gives, and what hostile or broken ones cannot do."""

from __future__ import annotations

import os
import stat
import struct
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


def test_refuses_many_small_entries_that_add_up_to_a_zip_bomb(tmp_path):
    # Found by tests/test_properties_archives.py: entries of 1 MiB each are under the per-entry ratio check,
    # so 2 of them (or 100,000) were extracted from a few KB.
    zip_path = make_zip(tmp_path / "bomb.zip", {f"GTSRB/{i:05d}.ppm": bytes(1 << 20) for i in range(3)})
    with pytest.raises(
        UnsafeArchiveError, match=r"bomb.zip: its entries unpack to 3,145,728 bytes from \d[\d,]*, \d+:1"
    ):
        safe_extract_zip(zip_path, tmp_path / "out")
    assert leftovers(tmp_path, "bomb.zip") == []


def lying_field(zip_path: Path, signature: bytes, offset: int, fmt: str, value: int) -> Path:
    """`zip_path` with the field at `offset` of its first `signature` record set to `value`."""
    data = bytearray(zip_path.read_bytes())
    struct.pack_into(fmt, data, data.find(signature) + offset, value)
    zip_path.write_bytes(bytes(data))
    return zip_path


@pytest.mark.parametrize(
    ("signature", "offset", "fmt", "value", "raised"),
    [
        (b"PK\x05\x06", 16, "<I", 1000, "OSError: a seek before the file's start"),
        (b"PK\x01\x02", 10, "<H", 1, "NotImplementedError: That compression method is not supported"),
        (b"PK\x01\x02", 8, "<H", 1 << 5, "NotImplementedError: compressed patched data"),
    ],
)
def test_a_lying_header_field_is_a_corrupt_archive(tmp_path, signature, offset, fmt, value, raised):
    # Found by tests/test_properties_archives.py: each raised what its id says, a crash with a traceback.
    zip_path = lying_field(make_zip(tmp_path / "lying.zip", GOOD_FILES), signature, offset, fmt, value)
    with pytest.raises(CorruptArchiveError, match=r"lying.zip: corrupt or truncated zip archive"):
        safe_extract_zip(zip_path, tmp_path / "out")
    assert leftovers(tmp_path, "lying.zip") == []


def test_a_name_flagged_utf8_that_is_not_is_a_corrupt_archive(tmp_path):
    # Found by tests/test_properties_archives.py: zipfile raised UnicodeDecodeError, a crash.
    zip_path = make_zip(tmp_path / "names.zip", {"a\u00c2.ppm": b"x"})  # written in UTF-8, flagged so
    zip_path.write_bytes(zip_path.read_bytes().replace("a\u00c2".encode(), b"a\xff\x82"))
    with pytest.raises(CorruptArchiveError, match=r"names.zip: corrupt or truncated zip archive \('utf-8' codec"):
        safe_extract_zip(zip_path, tmp_path / "out")


def test_zipfile_s_own_message_is_clipped_to_one_short_line(tmp_path):
    # Found by tests/test_properties_archives.py: a local header's lying name length put 1,500 characters of
    # the following bytes into BadZipFile's message.
    zip_path = make_zip(tmp_path / "long.zip", {"a.ppm": bytes(range(256)) * 20}, compression=zipfile.ZIP_STORED)
    lying_field(zip_path, b"PK\x03\x04", 26, "<H", 3000)
    with pytest.raises(CorruptArchiveError, match=r"long.zip: corrupt or truncated zip archive \(") as raised:
        safe_extract_zip(zip_path, tmp_path / "out")
    assert len(str(raised.value)) < len(str(zip_path)) + 400 and len(str(raised.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("files", "entry", "why"),
    [
        ({"a": b"a file", "a/b": b"in a folder of the same name"}, "'a/b'", "File exists"),
        ({"x" * 300 + ".ppm": b"a name no file system takes"}, "'xxxx", "File name too long"),
    ],
)
def test_an_entry_the_file_system_cannot_take_is_one_error_naming_it(tmp_path, files, entry, why):
    # Found by tests/test_properties_archives.py: os.makedirs and os.open raised OSError, a crash.
    zip_path = make_zip(tmp_path / "names.zip", files)
    with pytest.raises(ArchiveError) as raised:
        safe_extract_zip(zip_path, tmp_path / "out")
    assert str(raised.value).startswith(f"{zip_path}: entry {entry}") and f"cannot be written ({why})" in str(
        raised.value
    )
    assert leftovers(tmp_path, "names.zip") == []


@pytest.mark.parametrize("name", ["a\nb.ppm", "a\rb.ppm", "a\x85b.ppm", "a\u2028b.ppm", "a\x1bb.ppm"])
def test_refuses_a_name_holding_a_line_break_or_control_character(tmp_path, name):
    # Found by tests/test_properties_archives.py: the name went raw into messages, which then took two lines.
    zip_path = make_zip(tmp_path / "names.zip", {name: b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"control character in the name; refusing to extract") as raised:
        safe_extract_zip(zip_path, tmp_path / "out")
    assert len(str(raised.value).splitlines()) == 1


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
