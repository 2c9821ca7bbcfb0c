"""Property tests of what takes archives and files from outside: the zip extraction guard
(`safe_extract_zip`) and predict's intake (image files, folders, ZIP archives read in memory, IDX
files, --labels as a CSV or a ZIP holding one), everything predict does before a model is loaded.

Every input either works or raises a UserError of one line; none crashes, hangs, writes a byte outside
the folder it was given (or anything at all, for predict), leaves a half-written target, or writes
more than a zip bomb guard allows. Inputs: random bytes; archives built with hostile names (`..`,
absolute, drive letters, NUL, line breaks), links and special files, every compression method, then
damaged (bits, truncation, insertions) or with header fields lying (sizes, offsets, counts); zip bombs
of one large entry or many small ones. Profiles: tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st
from PIL import Image

from pipeline.datasets.archive import MAX_RATIO, safe_extract_zip
from pipeline.datasets.gtsrb_reader import CSV_COLUMNS
from pipeline.datasets.images import crop_and_resize
from pipeline.stages import predict
from tests.conftest import idx_bytes
from tests.fuzzing import files_under, little_endian_fields, mutated, outcome, with_lying_field

# The little-endian fields of a zip's records (APPNOTE.TXT 4.3): local file header, central directory
# header, end of central directory; (offset in the record, size).
ZIP_FIELDS = {
    b"PK\x03\x04": ((6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)),
    b"PK\x01\x02": ((8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (38, 4), (42, 4)),
    b"PK\x05\x06": ((8, 2), (10, 2), (12, 4), (16, 4), (20, 2)),
}
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
MODES = (0, stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644, 0o100777)


def note(result: object) -> None:
    if currently_in_test_context():
        event("worked" if result is not None else "refused")


def small_image(kind: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    if kind == "ppm":
        return b"P6\n4 5\n255\n" + pixels.tobytes()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, kind)
    return out.getvalue()


member_names = st.one_of(
    st.builds(
        "{}/{:05d}.{}".format,
        st.sampled_from(["GTSRB/Final_Test/Images", "a", "a/b", "__MACOSX", "."]),
        st.integers(0, 3),
        st.sampled_from(["ppm", "png", "jpg", "csv", "txt", "PNG"]),
    ),
    st.sampled_from(
        [
            "../evil.ppm",
            "a/../../evil.png",
            "..\\evil.ppm",
            "a\\..\\..\\evil.ppm",
            "/tmp/evil.ppm",
            "\\evil.ppm",
            "C:evil.ppm",
            "c:\\evil.png",
            "a//b.ppm",
            "./a.ppm",
            "",
            ".",
            "a/",
            "._x.png",
            "a\nb.png",
            "a\rb.ppm",
            "GT-final_test.csv",
            "x/GT-final_test.csv",
            "é/ü.png",
            "a" * 300 + ".png",
            "con.ppm",
            "~/x.ppm",
        ]
    ),  # fmt: skip
    st.text(max_size=20),
)
member_data = st.one_of(
    st.builds(small_image, st.sampled_from(["ppm", "PNG", "JPEG"]), st.integers(0, 9)),
    st.binary(max_size=100),
    st.sampled_from([b"", b"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\r\n00000.ppm;4;5;0;0;4;5;1\r\n"]),
)


@st.composite
def zip_archives(draw: st.DrawFn) -> bytes:
    """A zip written by zipfile from drawn entries (names, data, compression, Unix mode), maybe damaged."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a name written twice, which is one of the inputs
        for _ in range(draw(st.integers(0, 5))):
            info = zipfile.ZipInfo(draw(member_names))
            info.compress_type = draw(st.sampled_from(COMPRESSIONS))
            info.external_attr = draw(st.sampled_from(MODES)) << 16
            if draw(st.integers(0, 9)) == 0:
                info.flag_bits |= 0x1  # says encrypted
            archive.writestr(info, draw(member_data))
    data = out.getvalue()
    damage = draw(st.sampled_from(["none", "none", "bytes", "field", "field"]))
    if damage == "bytes":
        return draw(mutated(data))
    if damage == "field":
        return draw(with_lying_field(data, little_endian_fields(data, ZIP_FIELDS)))
    return data


@st.composite
def zip_bombs(draw: st.DrawFn) -> bytes:
    """Zeros deflated: one entry past the 1 MiB the ratio guard looks at, or several just under it."""
    sizes = draw(
        st.one_of(st.lists(st.sampled_from([1 << 20, (1 << 20) - 1]), min_size=2, max_size=6), st.just([3 << 20]))
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, size in enumerate(sizes):
            archive.writestr(f"GTSRB/{index:05d}.ppm", bytes(size))
    return out.getvalue()


archives = st.one_of(zip_archives(), zip_archives(), zip_bombs(), st.binary(max_size=200))


def lying_sizes(local_size: int, central_size: int) -> bytes:
    """One stored entry of 4,000 bytes whose local header and central directory declare other sizes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.ppm", b"x" * 4000)
    data = bytearray(out.getvalue())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    struct.pack_into("<II", data, local + 18, local_size, local_size)
    struct.pack_into("<II", data, central + 20, central_size, central_size)
    return bytes(data)


# --- Extraction.


@given(data=archives, target_exists=st.booleans())
@example(data=lying_sizes(10, 10), target_exists=True)
@example(data=lying_sizes(2**32 - 1, 2**32 - 1), target_exists=False)
def test_any_zip_extracts_inside_its_target_or_is_one_error_line(data: bytes, target_exists: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        zip_path, target = root / "archive.zip", root / "out"
        zip_path.write_bytes(data)
        (root / "beside.txt").write_bytes(b"must stay as it is")
        if target_exists:
            (target / "old").mkdir(parents=True)
            (target / "old" / "kept.txt").write_bytes(b"from an earlier extraction")
        before = files_under(root)
        result = outcome(lambda: safe_extract_zip(zip_path, target, progress=False), where=zip_path)
        after = files_under(root)
    note(result)
    outside = {name: content for name, content in after.items() if not name.startswith("out/") and name != "out"}
    assert outside == {name: c for name, c in before.items() if not name.startswith("out/") and name != "out"}
    if result is None:
        assert after == before, "a refused archive changed the target"
        return
    written = sum(len(content) for content in after.values() if content is not None) - sum(
        len(content) for name, content in before.items() if content is not None and not name.startswith("out/")
    )
    assert written <= max(MAX_RATIO * len(data), 1 << 20), f"{written:,} bytes from a {len(data):,}-byte zip"
    expected = {}  # what each file must hold: its entry's bytes (the last entry of a name wins)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            parts = [part for part in info.filename.replace("\\", "/").split("/") if part not in ("", ".")]
            if parts and not info.is_dir():
                expected["/".join(["out", *parts])] = archive.read(info)
    assert {name: after[name] for name in expected} == expected
    assert not any(name.startswith("out/old") for name in after), "the earlier target was not replaced whole"


# --- predict's intake.


def intake(paths: list[Path], dataset: str, labels: Path | None, crop: bool) -> list[np.ndarray]:
    """What predict does with its PATHs and --labels before the model: collect, match, load, fit to 28x28."""
    with contextlib.ExitStack() as stack:
        inputs = predict.collect([str(path) for path in paths], dataset, stack)
        rows = [None] * len(inputs.entries)
        if labels is not None:
            rows = predict.match(inputs.entries, predict.read_labels(labels, 43), str(labels))
        fitted = []
        for entry, row in zip(inputs.entries, rows):
            pixels = predict._load(entry, row, str(labels) if labels else None)
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (1, 3)
            box = row.roi if crop and row is not None else None
            fitted.append(crop_and_resize([pixels], [box], 28, 1)[0])
        return fitted


@st.composite
def labels_rows(draw: st.DrawFn) -> str:
    """A row naming one of the images predict_inputs writes (5x4 pixels), its ROI inside them or not."""
    name = draw(st.builds("{:05d}.{}".format, st.integers(0, 3), st.sampled_from(["ppm", "png", "jpg"])))
    width, height = draw(st.sampled_from([(4, 5), (4, 5), (5, 4), (28, 28)]))
    x1, y1 = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    x2, y2 = draw(st.integers(x1 + 1, 5)), draw(st.integers(y1 + 1, 6))
    return f"{name};{width};{height};{x1};{y1};{x2};{y2};{draw(st.integers(0, 45))}\r\n"


labels_csv = st.one_of(
    st.lists(labels_rows(), max_size=4).map(lambda rows: (";".join(CSV_COLUMNS) + "\r\n" + "".join(rows)).encode()),
    st.binary(max_size=60),
)
images = st.builds(small_image, st.sampled_from(["ppm", "PNG", "JPEG"]), st.integers(0, 9))


@st.composite
def image_zips(draw: st.DrawFn) -> bytes:
    """A zip of a few good images, as a user packs them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as archive:
        for index in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["ppm", "png", "jpg"]))
            archive.writestr(f"images/{index:05d}.{kind}", small_image({"jpg": "JPEG"}.get(kind, kind.upper()), index))
    return out.getvalue()


@st.composite
def predict_inputs(draw: st.DrawFn) -> tuple[str, dict[str, bytes], bytes | None]:
    """What a user hands predict: one file (an image, a zip, an IDX file, anything) or a folder of files, and
    maybe --labels (a CSV, a zip holding one, anything)."""
    idx = st.just(idx_bytes(np.zeros((2, 3, 3), np.uint8)))
    single = st.one_of(
        images,
        images.flatmap(mutated),
        image_zips(),
        image_zips().flatmap(mutated),
        archives,
        idx,
        idx.flatmap(lambda data: mutated(data, ((4, 4), (8, 4), (12, 4)))),
        st.binary(max_size=50),
    )
    shape = draw(st.sampled_from(["file", "file", "folder"]))
    if shape == "file":
        files = {"input": draw(single)}
    else:
        names = st.builds("{:05d}.{}".format, st.integers(0, 3), st.sampled_from(["ppm", "png", "jpg", "zip", "txt"]))
        files = draw(st.dictionaries(names.map(lambda name: f"folder/{name}"), single, min_size=1, max_size=3))
    labels = None
    if draw(st.integers(0, 2)) == 0:
        labels = draw(st.one_of(labels_csv, labels_csv.map(_zipped)))
    return shape, files, labels


def _zipped(csv: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("GT-final_test.csv", csv)
    return out.getvalue()


@given(given_input=predict_inputs(), dataset=st.sampled_from(["mnist", "gtsrb"]), crop=st.booleans())
def test_any_input_to_predict_is_read_or_is_one_error_line_and_writes_nothing(
    given_input: tuple[str, dict[str, bytes], bytes | None], dataset: str, crop: bool
) -> None:
    shape, files, labels = given_input
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        labels_path = None
        if labels is not None:
            labels_path = root / "labels.csv"
            labels_path.write_bytes(labels)
        before = files_under(root)
        paths = [root / ("input" if shape == "file" else "folder")]
        fitted = outcome(lambda: intake(paths, dataset, labels_path, crop), where=root)
        assert files_under(root) == before, "predict wrote into the folders it read"
    note(fitted)
    for pixels in fitted or []:
        assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8
