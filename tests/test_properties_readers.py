"""Property tests of the dataset readers: the IDX reader (MNIST's format), GTSRB's ground-truth CSVs, its PPM
images and a class folder of both, and the PNG/JPEG decoding predict uses. Every input gives what its
format promises or a UserError of one line naming the file; never another exception, a hang, or memory
beyond what the file's own bytes justify (a header's sizes are believed only once the bytes are there).

Inputs: random bytes; valid files damaged (bits flipped, bytes inserted, deleted or overwritten, the end
cut off); header fields (IDX dimensions, PNG and JPEG sizes, PPM width, height and maxval, CSV numbers)
set to boundary and huge values. Profiles: tests/conftest.py.
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st
from PIL import Image

from pipeline.datasets.gtsrb_reader import CSV_COLUMNS, NUM_CLASSES, read_csv, read_training_set, rows_by_name
from pipeline.datasets.idx import read_idx
from pipeline.datasets.images import MAX_PIXELS, decode, decode_ppm
from tests.conftest import idx_bytes
from tests.fuzzing import huge_int, mutated, outcome, peak_memory

# What reading a file may allocate beyond a few times its bytes: a read buffer (1 MiB), NumPy and Python.
SLACK = 2 << 20


def note(result: object) -> None:
    """Count, in the statistics (bench/bench_fuzz.py), how often an input was read and how often refused."""
    if currently_in_test_context():
        event("read" if result is not None else "refused")


# --- IDX.

idx_arrays = st.one_of(
    st.integers(0, 4).flatmap(
        lambda n: st.integers(0, 6).flatmap(
            lambda h: st.integers(0, 6).map(lambda w: np.arange(n * h * w, dtype=np.uint8).reshape(n, h, w))
        )
    ),
    st.lists(st.integers(0, 255), max_size=20).map(lambda labels: np.array(labels, np.uint8)),
)
# The IDX header: type byte, dimension count, then one big-endian uint32 per dimension.
IDX_FIELDS = ((2, 1), (3, 1), (4, 4), (8, 4), (12, 4))


@st.composite
def idx_files(draw: st.DrawFn) -> bytes:
    """An IDX file (gzipped or not), valid or damaged before or after compression, or random bytes."""
    kind = draw(st.sampled_from(["valid", "damaged", "damaged", "damaged gzip", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=64))
    data = idx_bytes(draw(idx_arrays))
    if kind == "damaged":
        data = draw(mutated(data, IDX_FIELDS))
    gz = draw(st.booleans())
    if gz:
        data = gzip.compress(data, mtime=0)
        if kind == "damaged gzip":
            data = draw(mutated(data))
    return data


@given(data=idx_files(), dims=st.sampled_from([1, 3]))
@example(data=struct.pack(">HBBIII", 0, 8, 3, 2**31, 28, 28), dims=3)  # 2**31 images declared, none there
@example(data=gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 2**31, 2**31, 4)), dims=3)  # 2**64 bytes: int64 wraps to 0
@example(data=struct.pack(">HBBIII", 0, 8, 3, 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 8, dims=3)
def test_any_idx_file_reads_or_is_one_error_line(data: bytes, dims: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "images-idx-ubyte")
        path.write_bytes(data)
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" and _gunzips(data) else data
        with peak_memory(4 * len(raw) + 2 * len(data) + SLACK):
            array = outcome(lambda: read_idx(path, dims), where=path)
    note(array)
    if array is not None:
        assert array.dtype == np.uint8 and array.ndim == dims
        assert 4 + 4 * dims + array.size == len(raw)
        assert array.tobytes() == raw[4 + 4 * dims :]


def _gunzips(data: bytes) -> bool:
    try:
        gzip.decompress(data)
    except Exception:  # whatever gzip says: the reader must say it as a UserError
        return False
    return True


# --- GTSRB CSVs.

numbers = st.one_of(
    st.integers(0, 60).map(str),
    huge_int(4).map(str),
    st.sampled_from(["", " 7", "7 ", "-1", "+3", "1.5", "0x10", "٣", "²", "9" * 5000, "0" * 40 + "1"]),
)
file_names = st.one_of(
    st.builds("{:05d}_{:05d}.ppm".format, st.integers(0, 99999), st.integers(0, 99999)),
    st.sampled_from(["a.ppm", ".hidden.ppm", "../x.ppm", "a/b.ppm", "a\\b.ppm", "x.png", "x.PPM", "", "x.txt"]),
    st.text(max_size=12),
    st.text(max_size=3000),
)


@st.composite
def good_fields(draw: st.DrawFn) -> list[str]:
    """The fields of a row as the official CSVs have them: a size, an ROI inside it, a class."""
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    x1, y1 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    x2, y2 = draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height))
    name = draw(st.builds("{:05d}_{:05d}.ppm".format, st.integers(0, 99999), st.integers(0, 99999)))
    return [name, *map(str, (width, height, x1, y1, x2, y2, draw(st.integers(0, NUM_CLASSES - 1))))]


@st.composite
def csv_rows(draw: st.DrawFn) -> str:
    """A data row: a file name and seven numbers, each good or drawn on its own, usually ';'-separated."""
    good = draw(good_fields())
    fields = [
        field if draw(st.integers(0, 15)) else draw(file_names if i == 0 else numbers) for i, field in enumerate(good)
    ]
    if draw(st.integers(0, 9)) == 0:  # a field too many or too few
        fields = fields[:-1] if draw(st.booleans()) else [*fields, draw(numbers)]
    return draw(st.sampled_from([";", ";", ", ", "\t"])).join(fields)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from([";".join(CSV_COLUMNS)] * 5 + [";".join(CSV_COLUMNS[:-1]), "Filename;Width", ""]))
    rows = draw(st.lists(csv_rows(), max_size=6))
    end = draw(st.sampled_from(["\r\n", "\n", "\r", "\u2028"]))
    text = end.join([header, *rows]) + end
    kind = draw(st.sampled_from(["text", "text", "text", "bom", "latin-1", "damaged", "damaged", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    data = text.encode("utf-8-sig" if kind == "bom" else "utf-8")
    if kind == "latin-1":
        data = text.encode("latin-1", errors="replace")
    return draw(mutated(data)) if kind == "damaged" else data


@given(data=csv_files())
@example(data=f"{';'.join(CSV_COLUMNS)}\r\n00000_00000.ppm;{'9' * 5000};1;0;0;1;1;0\r\n".encode())
@example(data=f"{';'.join(CSV_COLUMNS)}\r\n{'x' * 100_000}\r\n".encode())  # a row of 100,000 characters
def test_any_ground_truth_csv_reads_or_is_one_error_line(data: bytes) -> None:
    path = Path("GTSRB/Final_Training/Images/00000/GT-00000.csv")
    rows = outcome(lambda: rows_by_name(path, read_csv(path, data)), where=path)
    note(rows)
    for row in (rows or {}).values():
        x1, y1, x2, y2 = row.roi
        assert 0 <= x1 < x2 <= row.width and 0 <= y1 < y2 <= row.height
        assert 0 <= row.class_id < NUM_CLASSES
        assert row.filename.lower().endswith(".ppm") and "/" not in row.filename and "\\" not in row.filename


# --- PPM and PGM.


@st.composite
def netpbm_images(draw: st.DrawFn) -> tuple[bytes, np.ndarray | None]:
    """A binary PPM or PGM and the pixels it holds (None: its header may lie about them)."""
    channels = draw(st.sampled_from([1, 3]))
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    maxval = draw(st.sampled_from([1, 15, 255, 256, 1000, 65535]))
    samples = draw(
        st.lists(st.integers(0, maxval), min_size=width * height * channels, max_size=width * height * channels)
    )
    raster = np.array(samples, ">u2" if maxval > 255 else np.uint8).tobytes()
    sep = draw(st.sampled_from([b" ", b"\n", b"\r\n", b"\t", b" # a comment\n", b"\n#\n"]))
    magic = b"P6" if channels == 3 else b"P5"
    header = sep.join([magic, b"%d" % width, b"%d" % height, b"%d" % maxval]) + b"\n"
    expected = np.array(samples).reshape(height, width, channels)
    expected = ((expected * 255 + maxval // 2) // maxval).astype(np.uint8)
    return header + raster, expected


@st.composite
def lying_netpbm(draw: st.DrawFn) -> bytes:
    """A PPM whose header's numbers are drawn apart from the bytes that follow: huge sizes, zero, many digits."""
    value = st.one_of(huge_int(4).map(str), st.sampled_from(["0", "100000", "9" * 5000, "0" * 50 + "2"]))
    width, height, maxval = draw(value), draw(value), draw(value)
    raster = draw(st.binary(max_size=300))
    return f"{draw(st.sampled_from(['P6', 'P5']))}\n{width} {height}\n{maxval}\n".encode() + raster


@given(image=netpbm_images())
def test_a_valid_ppm_or_pgm_decodes_to_its_pixels(image: tuple[bytes, np.ndarray]) -> None:
    data, expected = image
    np.testing.assert_array_equal(decode_ppm(data, "image.ppm"), expected)


@given(data=st.one_of(netpbm_images().flatmap(lambda image: mutated(image[0])), lying_netpbm(), st.binary(max_size=64)))
@example(data=b"P6\n100000 100000\n255\n" + b"\0" * 300)  # 30 GB promised, 300 bytes there
@example(data=b"P6\n" + b"9" * 5000 + b" 1\n255\n\0\0\0")  # a width of 5,000 digits
@example(data=b"P6" + b" #\n" * 20_000 + b"1 1 255\n\0\0\0")  # many comments: the header regex must not backtrack
def test_any_ppm_decodes_or_is_one_error_line(data: bytes) -> None:
    with peak_memory(16 * len(data) + SLACK):
        pixels = outcome(lambda: decode_ppm(data, "image.ppm"), where="image.ppm")
    note(pixels)
    if pixels is not None:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (1, 3)
        assert pixels.size <= len(data)  # every pixel came from the file's bytes


# --- A GTSRB class folder: its CSV and its images together.


@st.composite
def class_folders(draw: st.DrawFn) -> tuple[bytes, dict[str, bytes]]:
    """The CSV and PPMs of one class folder (class 00000), valid, then possibly damaged: a PPM, the CSV or both."""
    names = draw(st.lists(st.builds("{:05d}_{:05d}.ppm".format, st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=3, unique=True))  # fmt: skip
    images, lines = {}, [";".join(CSV_COLUMNS)]
    for name in names:
        data, pixels = draw(netpbm_images())
        height, width = pixels.shape[:2]
        x1, y1 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        x2, y2 = draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height))
        images[name] = data
        lines.append(f"{name};{width};{height};{x1};{y1};{x2};{y2};0")
    csv = ("\r\n".join(lines) + "\r\n").encode()
    damage = draw(st.sampled_from(["none", "csv", "image", "both", "missing image", "extra image"]))
    if damage in ("csv", "both"):
        csv = draw(mutated(csv))
    if damage in ("image", "both"):
        name = draw(st.sampled_from(names))
        images[name] = draw(mutated(images[name]))
    if damage == "missing image":
        del images[names[0]]
    if damage == "extra image":
        images["00009_00009.ppm"] = images[names[0]]
    return csv, images


@given(folder=class_folders(), size=st.sampled_from([8, 32]), crop_roi=st.booleans())
def test_any_class_folder_reads_or_is_one_error_line(
    folder: tuple[bytes, dict[str, bytes]], size: int, crop_roi: bool
) -> None:
    csv, images = folder
    with tempfile.TemporaryDirectory() as root:
        images_dir = Path(root, "GTSRB", "Final_Training", "Images", "00000")
        images_dir.mkdir(parents=True)
        (images_dir / "GT-00000.csv").write_bytes(csv)
        for name, data in images.items():
            (images_dir / name).write_bytes(data)
        split = outcome(lambda: read_training_set(root, size=size, crop_roi=crop_roi, progress=False), where=root)
    note(split)
    if split is not None:
        assert split.images.shape == (len(images), size, size, 3) and split.images.dtype == np.uint8
        assert sorted(split.files) == sorted(f"GTSRB/Final_Training/Images/00000/{name}" for name in images)
        assert set(split.labels.tolist()) == {0}


# --- PNG and JPEG, as predict decodes them.


@st.composite
def pillow_images(draw: st.DrawFn) -> bytes:
    """A small PNG or JPEG written by Pillow (any mode either takes; a JPEG may carry an EXIF orientation)."""
    kind = draw(st.sampled_from(["PNG", "JPEG"]))
    mode = draw(
        st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "LA"] if kind == "PNG" else ["L", "RGB", "CMYK"])
    )
    width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode if mode != "I;16" else "I").convert(mode)
    out = io.BytesIO()
    if kind == "JPEG" and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # orientation: 1..8 are the real ones
        image.save(out, kind, exif=exif)
    else:
        image.save(out, kind)
    return out.getvalue()


def image_size_fields(data: bytes) -> tuple[tuple[int, int], ...]:
    """(offset, size) of the big-endian width and height fields: PNG's IHDR, a JPEG's SOF0/SOF2 frame header."""
    if data.startswith(b"\x89PNG"):
        return ((16, 4), (20, 4))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at != -1:
            return ((at + 5, 2), (at + 7, 2))
    return ()


@given(data=pillow_images().flatmap(lambda data: st.one_of(st.just(data), mutated(data, image_size_fields(data)))))
@example(data=b"\x89PNG\r\n\x1a\n")
@example(data=b"\xff\xd8\xff")
def test_any_png_or_jpeg_decodes_or_is_one_error_line(data: bytes) -> None:
    pixels = outcome(lambda: decode(data, "photo.png"), where="photo.png")
    note(pixels)
    if pixels is not None:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (1, 3)
        assert pixels.shape[0] * pixels.shape[1] <= MAX_PIXELS


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_an_image_declaring_more_pixels_than_allowed_is_refused(kind: str) -> None:
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, kind)
    data = bytearray(out.getvalue())
    for offset, size in image_size_fields(bytes(data)):
        data[offset : offset + size] = (2 ** (8 * size) - 1).to_bytes(size, "big")
    assert outcome(lambda: decode(bytes(data), "big.png"), where="big.png") is None
