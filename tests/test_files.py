"""Mapped reads of a stage's arrays (core/files.map_arrays): the same arrays as a load, read-only, and a damaged
file is the same one-line error as when it is loaded."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import files
from pipeline.core.errors import DataError


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "split.npz"
    rng = np.random.default_rng(0)
    files.save_arrays(path, x=rng.random((50, 8, 8, 3), dtype=np.float32), y=np.arange(50), empty=np.zeros((0, 3)))
    return path


def test_a_mapped_npz_holds_the_arrays_a_load_gives_and_cannot_be_written(saved: Path) -> None:
    mapped, loaded = files.map_arrays(saved), files.load_arrays(saved)
    assert mapped.keys() == loaded.keys()
    for name, array in loaded.items():
        assert mapped[name].dtype == array.dtype and mapped[name].shape == array.shape
        np.testing.assert_array_equal(mapped[name], array)
    assert not mapped["x"].flags.writeable
    sample = mapped["x"][[3, 1, 40]]  # a sample is an ordinary array of its own
    np.testing.assert_array_equal(sample, loaded["x"][[3, 1, 40]])
    assert sample.flags.writeable


def test_a_changed_byte_a_cut_or_a_compressed_file_is_one_damaged_error(saved: Path, tmp_path: Path) -> None:
    flipped = tmp_path / "flipped.npz"
    data = bytearray(saved.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside x's pixels
    flipped.write_bytes(bytes(data))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(saved.read_bytes()[: len(data) // 2])
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, x=np.ones((4, 4)))
    for path in (flipped, cut, compressed):
        with pytest.raises(DataError, match=rf"{path.name}: damaged \(.*\); delete it and run `dvc repro`"):
            files.map_arrays(path)


def test_an_npz_of_python_objects_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as member:
        np.lib.format.write_array(member, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        files.map_arrays(path)
