"""`python -m pipeline predict` and the MLflow model: a user's images get the classes evaluate gives the
same test images, from files, folders, ZIPs and IDX files, with GTSRB's ROIs and accuracy from --labels;
the logged model, fed raw uint8 pixels by a client without the project, gives the same classes too.
Bad input is one error line, found before TensorFlow loads."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.core.errors import DataError
from pipeline.core.paths import RunPaths
from pipeline.datasets import get
from pipeline.datasets.archive import CorruptArchiveError, UnsafeArchiveError
from pipeline.datasets.images import decode
from pipeline.stages import predict
from pipeline.tracking import server
from tests.conftest import REPO, TINY_PROJECT_MODELS, copy_project, idx_bytes, run, tool_env
from tests.test_gtsrb import HEADER, write_csv, write_official_layout, write_official_zips
from tests.test_stage import vouch, write_params

SEED = 42
GTSRB_DESIGNS = ("lenet5_modern", "lenet5_classic")
GTSRB_TEST_IMAGES = 30


def predict_in_process(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *argv: str
) -> tuple[int, str, str]:
    """The command as `python -m pipeline predict ARGV` runs it, in this process (TensorFlow loads once)."""
    monkeypatch.chdir(project)
    status = cli.run(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err: str) -> str:
    """The command's error line, checked to be the only thing it said about the error."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def predicted(project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *argv: str) -> dict:
    """The --json line of a prediction that must succeed."""
    status, out, err = predict_in_process(project, monkeypatch, capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out.splitlines()[-1])


def evaluated(project: Path, dataset: str, design: str) -> tuple[np.ndarray, np.ndarray, float]:
    """What evaluate wrote for the official test set: (predicted classes, confidences, test accuracy)."""
    out = RunPaths(dataset, design, SEED)
    with open(project / out.predictions, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = json.loads((project / out.metrics_dir / "evaluate.json").read_text())["test_accuracy"]
    return (
        np.array([int(row["predicted"]) for row in rows]),
        np.array([float(row["confidence"]) for row in rows]),
        accuracy,
    )


def assert_agrees_with_evaluate(result: dict, project: Path, dataset: str, design: str) -> None:
    classes, confidences, _ = evaluated(project, dataset, design)
    assert [p["class"] for p in result["predictions"]] == classes.tolist()
    np.testing.assert_allclose([p["confidence"] for p in result["predictions"]], confidences, rtol=1e-4, atol=1e-6)


def logged_models(project: Path, dataset: str, designs: tuple[str, ...]) -> dict[str, Path]:
    """The local folder of the MLflow model evaluate logged for each design's model in the workspace: the one
    that holds the same model.keras (other experiments on the shared tiny project logged models of their own)."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(dataset).experiment_id
    folders = [Path(urlparse(model.artifact_location).path) for model in client.search_logged_models([experiment])]
    found = {}
    for design in designs:
        trained = (project / RunPaths(dataset, design, SEED).model_dir / "model.keras").read_bytes()
        found[design] = next(
            folder for folder in folders if (folder / "data/trained_model/model.keras").read_bytes() == trained
        )
    return found


CLIENT = """
import sys
import numpy as np
try:
    import pipeline
except ImportError:
    pass
else:
    sys.exit(f"the project is importable from here: {pipeline.__file__}")
import mlflow
for folder, images, out in zip(*[iter(sys.argv[1:])] * 3):
    model = mlflow.pyfunc.load_model(folder)
    np.save(out, model.predict(np.load(images)))
"""


def pyfunc_in_a_clean_client(tmp_path: Path, models: dict[str, Path], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's probabilities on uint8 `images`, from MLflow in a process that cannot import `pipeline`:
    run from a temporary folder, with no PYTHONPATH (the script checks it)."""
    np.save(tmp_path / "images.npy", images)
    argv = []
    for design, folder in models.items():
        argv += [str(folder), str(tmp_path / "images.npy"), str(tmp_path / f"{design}.npy")]
    env = {key: value for key, value in tool_env().items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return {design: np.load(tmp_path / f"{design}.npy") for design in models}


# --------------------------------------------------------------------------- MNIST: the tiny project


@pytest.fixture(scope="module")
def digits(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny project's test digits as IDX (the mirror's file), PNGs in a folder, a ZIP of them and a CSV."""
    base = tmp_path_factory.mktemp("digits")
    idx = tiny_project.parent / "mirror" / "mnist" / "t10k-images-idx3-ubyte.gz"
    images = np.frombuffer(gzip.decompress(idx.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress((idx.parent / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    folder = base / "pngs"
    folder.mkdir()
    for index, image in enumerate(images):  # named in the test set's order
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    with zipfile.ZipFile(base / "digits.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir(), reverse=True):  # stored in another order: read sorted
            archive.write(path, f"digits/{path.name}")
        archive.writestr("digits/README.txt", "not an image: skipped")
    write_csv(
        base / "labels.csv", [(f"{i:05d}.png", 28, 28, 0, 0, 28, 28, int(label)) for i, label in enumerate(labels)]
    )
    return {"idx": idx, "folder": folder, "zip": base / "digits.zip", "labels": base / "labels.csv"}


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_digits_from_idx_pngs_and_a_zip_get_evaluates_classes(
    tiny_project: Path, digits: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for design in TINY_PROJECT_MODELS:
        from_idx = predicted(tiny_project, monkeypatch, capsys, "mnist", design, digits["idx"])
        assert from_idx["images"] == 100 and "accuracy" not in from_idx
        assert from_idx["predictions"][7]["file"] == f"{digits['idx']}[7]"
        assert_agrees_with_evaluate(from_idx, tiny_project, "mnist", design)
    from_folder = predicted(tiny_project, monkeypatch, capsys, "mnist", "lenet5_modern", digits["folder"])
    from_zip = predicted(tiny_project, monkeypatch, capsys, "mnist", "lenet5_modern", digits["zip"], "--seed", "42")
    assert from_zip["predictions"][0]["file"] == f"{digits['zip']}/digits/00000.png"
    for result in (from_folder, from_zip):
        assert_agrees_with_evaluate(result, tiny_project, "mnist", "lenet5_modern")


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_int8_predictions_are_evaluates_int8_classes(
    tiny_project: Path, digits: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for design in TINY_PROJECT_MODELS:
        result = predicted(tiny_project, monkeypatch, capsys, "mnist", design, digits["idx"], "--int8")
        with open(tiny_project / RunPaths("mnist", design, SEED).predictions, encoding="utf-8") as handle:
            int8_classes = [int(row["int8_predicted"]) for row in csv.DictReader(handle)]
        assert [p["class"] for p in result["predictions"]] == int8_classes, design


def test_the_champion_is_the_design_the_registry_names(
    tiny_project: Path, digits: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_project / 'mlflow.db'}")
    best = json.loads((tiny_project / "reports/compare.json").read_text())["mnist"]["designs"][0]["design"]
    result = predicted(tiny_project, monkeypatch, capsys, "mnist", "champion", digits["idx"])
    assert_agrees_with_evaluate(result, tiny_project, "mnist", best)


def test_labels_give_evaluates_accuracy_and_the_table_reads_well(
    tiny_project: Path, digits: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = predict_in_process(
        tiny_project,
        monkeypatch,
        capsys,
        "mnist",
        "lenet5_modern",
        digits["folder"],
        "--labels",
        digits["labels"],
        "--json",
    )
    assert status == 0, err
    *table, accuracy_line, last = out.splitlines()
    result = json.loads(last)
    classes, _, accuracy = evaluated(tiny_project, "mnist", "lenet5_modern")
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-6) and result["labelled"] == 100  # Keras: float32
    assert accuracy_line == f"accuracy {accuracy:.4f} ({round(accuracy * 100)} of 100 labelled images)"
    assert table[0].split() == ["file", "class", "name", "confidence", "label"] and len(table) == 101
    first = result["predictions"][0]
    assert table[1].split() == [
        first["file"],
        str(first["class"]),
        first["name"],
        f"{first['confidence']:.4f}",
        str(first["label"]),
    ]
    # Without --json, the table and the accuracy are all there is.
    status, out, _ = predict_in_process(tiny_project, monkeypatch, capsys, "mnist", "lenet5_modern", digits["folder"])
    assert status == 0 and out.splitlines()[-1] == "100 images" and not out.lstrip().startswith("{")


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_images_without_rows_and_rows_without_images_are_counted(
    tiny_project: Path,
    digits: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = tmp_path / "labels.csv"
    lines = digits["labels"].read_bytes().split(b"\r\n")
    rows.write_bytes(b"\r\n".join(lines[:1] + lines[11:]))  # no rows for images 0..9
    status, out, err = predict_in_process(
        tiny_project,
        monkeypatch,
        capsys,
        "mnist",
        "lenet5_modern",
        digits["folder"] / "00000.png",
        digits["folder"] / "00050.png",
        "--labels",
        rows,
        "--json",
    )
    assert status == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["images"] == 2 and result["labelled"] == 1 and "label" not in result["predictions"][0]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"1 of 2 image(s) have no row in {rows}, e.g. {digits['folder'] / '00000.png'}")
    assert warnings[1].startswith(
        f"89 of 90 row(s) of {rows} name no image given, e.g. 00010.png: the accuracy is "
        f"over the 1 image(s) that have a row"
    )


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_the_mlflow_model_takes_raw_digits_and_agrees_with_predict(
    tiny_project: Path,
    digits: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    models = logged_models(tiny_project, "mnist", TINY_PROJECT_MODELS)
    signature = mlflow.models.Model.load(models["lenet5_modern"]).signature
    (spec,) = signature.inputs.inputs
    assert (spec.type, spec.shape) == (np.dtype(np.uint8), (-1, 28, 28, 1))  # the digits as decoded, raw
    images = np.load(tiny_project / "data/split/mnist/test.npz")["x"]  # raw uint8, as split decoded them
    probabilities = pyfunc_in_a_clean_client(tmp_path, models, images)
    for design in TINY_PROJECT_MODELS:
        result = predicted(tiny_project, monkeypatch, capsys, "mnist", design, digits["idx"])
        assert probabilities[design].argmax(axis=1).tolist() == [p["class"] for p in result["predictions"]]
        np.testing.assert_allclose(
            probabilities[design].max(axis=1), [p["confidence"] for p in result["predictions"]], rtol=1e-4, atol=1e-6
        )


# --------------------------------------------------------------------------- GTSRB: ROIs, CLAHE, the classic design


@pytest.fixture(scope="module")
def gtsrb_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after `dvc repro` on fixture GTSRB archives (official layout, images of 15 to 60
    pixels with ROIs), CLAHE as shipped, LeNet-5 modern and classic, 1 epoch; and the archives in sources/."""
    base = tmp_path_factory.mktemp("gtsrb-predict")
    write_official_layout(base / "extracted", seed=5, test_images=GTSRB_TEST_IMAGES)
    write_official_zips(base / "extracted", base / "sources")
    vouch(base / "sources")
    repo = copy_project(
        base / "repo",
        {
            "download.mirror": None,
            "datasets.gtsrb.source": str(base / "sources"),
            "train.epochs": 1,
            "train.batch_size": 16,
            "evaluate.sample_images": 4,
            "experiments.datasets": ["gtsrb"],
            "experiments.models": list(GTSRB_DESIGNS),
        },
    )
    run(["dvc", "repro"], repo)
    return repo


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_the_official_test_archive_with_its_ground_truth_gets_evaluates_classes_and_accuracy(
    gtsrb_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """One command per design, as a user with GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip runs it."""
    sources = gtsrb_project.parent / "sources"
    for design in GTSRB_DESIGNS:
        status, out, err = predict_in_process(
            gtsrb_project,
            monkeypatch,
            capsys,
            "gtsrb",
            design,
            sources / "GTSRB_Final_Test_Images.zip",
            "--labels",
            sources / "GTSRB_Final_Test_GT.zip",
            "--json",
        )
        assert status == 0, err
        result = json.loads(out.splitlines()[-1])
        assert result["images"] == GTSRB_TEST_IMAGES == result["labelled"]  # GT-final_test.test.csv skipped
        assert_agrees_with_evaluate(result, gtsrb_project, "gtsrb", design)
        assert result["accuracy"] == pytest.approx(evaluated(gtsrb_project, "gtsrb", design)[2], abs=1e-6)
        assert result["predictions"][0]["name"] in get("gtsrb").class_names
        assert "warning" not in err.lower()


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_a_folder_and_the_plain_csv_read_as_the_archives(
    gtsrb_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    extracted = gtsrb_project.parent / "extracted"
    result = predicted(
        gtsrb_project,
        monkeypatch,
        capsys,
        "gtsrb",
        "lenet5_modern",
        extracted / "GTSRB/Final_Test",
        "--labels",
        extracted / "GT-final_test.csv",
    )
    assert result["images"] == GTSRB_TEST_IMAGES
    assert_agrees_with_evaluate(result, gtsrb_project, "gtsrb", "lenet5_modern")


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_the_mlflow_model_takes_raw_signs_and_agrees_with_predict_for_every_design(
    gtsrb_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """LeNet-5 classic's own layers included: they ship with the model."""
    models = logged_models(gtsrb_project, "gtsrb", GTSRB_DESIGNS)
    images = np.load(gtsrb_project / "data/split/gtsrb/test.npz")["x"]  # the decoded ROI crops, raw uint8
    probabilities = pyfunc_in_a_clean_client(tmp_path, models, images)
    sources = gtsrb_project.parent / "sources"
    for design in GTSRB_DESIGNS:
        result = predicted(
            gtsrb_project,
            monkeypatch,
            capsys,
            "gtsrb",
            design,
            sources / "GTSRB_Final_Test_Images.zip",
            "--labels",
            sources / "GTSRB_Final_Test_GT.zip",
        )
        assert probabilities[design].argmax(axis=1).tolist() == [p["class"] for p in result["predictions"]]
        np.testing.assert_allclose(
            probabilities[design].max(axis=1), [p["confidence"] for p in result["predictions"]], rtol=1e-4, atol=1e-6
        )


def free_port() -> int:
    try:
        return server.free_port("127.0.0.1")
    except OSError as error:
        pytest.skip(f"cannot bind a port on 127.0.0.1: {error}")


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_mlflow_models_serve_answers_for_the_classic_design(gtsrb_project: Path, tmp_path: Path) -> None:
    model = logged_models(gtsrb_project, "gtsrb", ("lenet5_classic",))["lenet5_classic"]
    port = free_port()
    env = {key: value for key, value in tool_env().items() if key != "PYTHONPATH"}
    command = [
        "mlflow",
        "models",
        "serve",
        "-m",
        str(model),
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    images = np.load(gtsrb_project / "data/split/gtsrb/test.npz")["x"][:5]
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).read()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "the server did not answer within 300 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps({"inputs": images.tolist()}).encode(),
            {"Content-Type": "application/json"},
        )
        answer = np.array(json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: the session this test started
        server.wait(timeout=60)
    classes, _, _ = evaluated(gtsrb_project, "gtsrb", "lenet5_classic")
    assert answer.shape == (5, 43) and answer.argmax(axis=1).tolist() == classes[:5].tolist()


# --------------------------------------------------------------------------- bad input: one line, status 2


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with params.yaml and no trained model; the inputs of the tests below in it."""
    write_params(tmp_path)
    monkeypatch.setenv("PIPELINE_TRACKING", "off")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    return tmp_path


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ("mnist", "lenet5_modern", "missing.png"),
            "error: missing.png: no such file or folder; expected image files (PPM, PNG, JPEG), folders or ZIP archives of "
            "them",
        ),
        (
            ("mnist", "lenet5_modern", "notes.txt"),
            "error: notes.txt: not an image, ZIP or IDX file (it starts with b'some not'); expected PPM, PNG or JPEG "
            "images, folders or ZIP archives of them, or IDX image files",
        ),
        (("mnist", "lenet6", "digit.png"), "error: models.lenet6: missing; known designs: lenet5_modern,"),
        (("cifar10", "lenet5_modern", "digit.png"), "error: cifar10: unknown dataset"),
        (
            ("mnist", "lenet5_modern", "digit.png"),
            "error: models/mnist/lenet5_modern/seed_42/model.keras: missing, lenet5_modern is not trained on mnist with "
            "seed 42; train it first: `python -m pipeline train mnist lenet5_modern --seed 42` (or `dvc repro`)",
        ),
        (
            ("mnist", "lenet5_modern", "digit.png", "--seed", "7"),
            "error: models/mnist/lenet5_modern/seed_7/model.keras: missing, lenet5_modern is not trained on mnist with "
            "seed 7",
        ),
        (
            ("mnist", "lenet5_modern", "digit.png", "--labels", "commas.csv"),
            "error: commas.csv line 1: malformed header 'Filename,Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId'; "
            f"expected '{HEADER}'",
        ),
        (
            ("mnist", "lenet5_modern", "digit.png", "--labels", "other.csv"),
            "error: other.csv: names none of the 1 image(s) (e.g. digit.png; it lists e.g. 00000.png); expected the "
            "ground truth of these images",
        ),
        (
            ("mnist", "lenet5_modern", "digit.png", "--labels", "nine.csv"),
            "error: nine.csv line 2: digit.png: ClassId 12; expected 0 .. 9",
        ),
        (
            ("mnist", "lenet5_modern", "digit.png", "--labels", "no-csv.zip"),
            "error: no-csv.zip: holds 0 CSV files (none); expected one ground-truth CSV, GT-final_test.csv as in "
            "GTSRB_Final_Test_GT.zip",
        ),
        (
            ("mnist", "lenet5_modern", "empty"),
            "error: empty: no images found (1 other file(s)); expected PPM, PNG or JPEG",
        ),
        (("mnist", "lenet5_modern", "bomb.zip"), "error: bomb.zip: entry 'bomb.png': compressed 1"),
        (
            ("gtsrb", "lenet5_modern", "digits.idx"),
            "error: digits.idx: an IDX file, which holds mnist or fashion_mnist images; the gtsrb model takes image files",
        ),
    ],
)
def test_a_bad_input_is_one_line_before_any_model_loads(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: tuple, expected: str
) -> None:
    (project / "notes.txt").write_text("some notes")
    write_csv(project / "commas.csv", [], header=HEADER.replace(";", ","))
    write_csv(project / "other.csv", [("00000.png", 28, 28, 0, 0, 28, 28, 3)])
    write_csv(project / "nine.csv", [("digit.png", 28, 28, 0, 0, 28, 28, 12)])
    with zipfile.ZipFile(project / "no-csv.zip", "w") as archive:
        archive.writestr("readme.txt", "no labels here")
    (project / "empty").mkdir()
    (project / "empty" / "notes.txt").write_text("no images")
    with zipfile.ZipFile(project / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.png", bytes(8 << 20))  # 8 MiB of zeros deflate to 8 KiB
    (project / "digits.idx").write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    status, _, err = predict_in_process(project, monkeypatch, capsys, *argv)
    assert status == 2 and error_line(err).startswith(expected)


@pytest.mark.timeout(300)
def test_the_command_fails_in_one_line_without_loading_tensorflow(project: Path) -> None:
    command = [sys.executable, "-X", "importtime", "-m", "pipeline", "predict", "mnist", "lenet5_modern", "digit.png"]
    result = subprocess.run(
        command,
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(PIPELINE_TRACKING="off", PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.keras: missing" in errors[0] and "Traceback" not in result.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "pipeline" in imported and "tensorflow" not in imported and "mlflow" not in imported


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_damaged_image_or_one_its_row_does_not_describe_is_one_line(
    tiny_project: Path,
    digits: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    folder = tmp_path / "pngs"
    shutil.copytree(digits["folder"], folder)
    (folder / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status, _, err = predict_in_process(tiny_project, monkeypatch, capsys, "mnist", "lenet5_modern", folder)
    assert status == 2 and error_line(err).startswith(f"error: {folder / '00003.png'}: cannot decode (")
    (folder / "00003.png").unlink()
    Image.fromarray(np.zeros((20, 28), np.uint8)).save(folder / "00004.png")  # its row says 28x28
    status, _, err = predict_in_process(
        tiny_project, monkeypatch, capsys, "mnist", "lenet5_modern", folder, "--labels", digits["labels"]
    )
    assert status == 2 and error_line(err).startswith(
        f"error: {folder / '00004.png'} ({digits['labels']} line 6): image is 28x20; expected 28x28 as its CSV row says"
    )


# --------------------------------------------------------------------------- decoding


def test_png_jpeg_and_ppm_decode_to_their_pixels() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    for image, expected in (
        (Image.fromarray(rgb), rgb),
        (Image.fromarray(gray), gray[..., None]),
        (Image.fromarray(rgb).convert("RGBA"), rgb),
        (Image.fromarray(gray).convert("P"), np.asarray(Image.fromarray(gray).convert("P").convert("RGB"))),
    ):
        png = io.BytesIO()
        image.save(png, "PNG")
        np.testing.assert_array_equal(decode(png.getvalue(), "x.png"), expected)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, "JPEG", quality=95)
    assert decode(jpeg.getvalue(), "x.jpg").shape == (9, 7, 3)
    ppm = b"P6\n7 9\n255\n" + rgb.tobytes()
    np.testing.assert_array_equal(decode(ppm, "x.ppm"), rgb)


def test_a_photo_is_decoded_upright() -> None:
    """Cameras store the rotation in EXIF (orientation 6: turn 90 degrees clockwise to view)."""
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, "JPEG", exif=exif, quality=100)
    upright = decode(jpeg.getvalue(), "photo.jpg")
    assert upright.shape == (6, 4, 3) and upright[0, -1].mean() > 128  # the top-left corner went to the top right


# --------------------------------------------------------------------------- intake: what the property tests found


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(out, "PNG")
    return out.getvalue()


def collected(path: Path, dataset: str = "mnist") -> list[np.ndarray]:
    with contextlib.ExitStack() as stack:
        return [entry.load() for entry in predict.collect([str(path)], dataset, stack).entries]


def test_an_archive_entry_with_an_empty_name_is_skipped(tmp_path: Path) -> None:
    # Found by tests/test_properties_archives.py: ZipInfo.is_dir() raised IndexError on the empty name.
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"no name")
        archive.writestr("digit.png", png_bytes())
    assert [pixels.shape for pixels in collected(tmp_path / "images.zip")] == [(5, 4, 1)]


def test_an_archive_entry_in_a_compression_zipfile_lacks_is_a_corrupt_member(tmp_path: Path) -> None:
    # Found by tests/test_properties_archives.py: zipfile raised NotImplementedError when the entry was read.
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.writestr("digit.png", png_bytes())
    data = bytearray((tmp_path / "images.zip").read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        data[data.find(signature) + offset] = 6  # "imploded", a method of PKZIP 1
    (tmp_path / "images.zip").write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=r"images.zip/digit.png: corrupt member \(That compression method"):
        collected(tmp_path / "images.zip")


def test_a_file_name_holding_a_line_break_is_shown_in_one_line(tmp_path: Path) -> None:
    # Found by tests/test_properties_archives.py: names went raw into messages, which then took two lines.
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a\nb.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError) as raised:
        collected(tmp_path / "folder")
    assert str(raised.value).startswith(f"{tmp_path / 'folder'}/a\\nb.png: cannot decode (")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.writestr("a\nb.png", png_bytes())
    with pytest.raises(UnsafeArchiveError, match=r"images.zip: entry 'a\\nb.png': control character in the name"):
        collected(tmp_path / "images.zip")
