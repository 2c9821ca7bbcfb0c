"""The one entry (`python -m pipeline <command>`, pipeline/cli.py): a mistake the user can fix is one
`error:` line and exit status 2, found before any work; a crash keeps its traceback and exit status 1."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline import cli
from tests.conftest import REPO, edit_params, tool_env, write_idx_dataset
from tests.test_gtsrb import write_official_layout, write_official_zips

CONV = {"type": "conv", "filters": 4, "kernel": 3, "padding": "same"}
POOL = {"type": "maxpool", "pool": 2}
FLAT = {"type": "flatten"}
CLASSES = {"type": "dense", "units": "classes", "activation": "softmax"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding params.yaml (MNIST from a local folder), as a stage runs in."""
    mnist = tmp_path / "sources" / "mnist"
    write_idx_dataset(mnist, train=60, test=20)
    vouch(mnist)
    write_params(
        tmp_path, **{"download.mirror": None, "datasets.mnist.source": str(mnist), "experiments.datasets": ["mnist"]}
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_TRACKING", "off")
    for variable in ("PIPELINE_DATA_MIRROR", "PIPELINE_SOURCE_MNIST", "PIPELINE_SOURCE_GTSRB"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def write_params(folder: Path, **changes: object) -> None:
    """The project's params.yaml in `folder` (kept if there is one already), with dotted keys changed."""
    if not (folder / "params.yaml").exists():
        shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    edit_params(folder / "params.yaml", changes)


def vouch(folder: Path) -> None:
    """An MD5SUMS beside the files, as a user who repacked them writes it."""
    (folder / "MD5SUMS").write_text(
        "".join(
            f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"
            for p in sorted(folder.iterdir())
            if p.name != "MD5SUMS"
        )
    )


def run_stage(name: str, *argv: str) -> int:
    return cli.run([name, *argv])


def one_error(capsys: pytest.CaptureFixture) -> str:
    """The stage's error line, checked to be the only thing it said about the error."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "changes, stage_args, expected",
    [
        (
            {"train.learning_rate": "fast"},
            ("download", "mnist"),
            "error: params.yaml: train.learning_rate: must be a number in (0.0, 10.0], got 'fast'",
        ),
        (
            {
                "models.student_a.layers": [CONV, POOL, POOL, POOL, POOL, POOL, POOL, FLAT, CLASSES],
                "experiments.models": ["student_a"],
            },
            ("download", "mnist"),
            "error: params.yaml: models.student_a.layers.6 (maxpool): input is 1x1, smaller than the 2x2 pool, on mnist's "
            "32x32x1 images; use padding: same, a smaller pool or fewer layers that shrink the image",
        ),
        (
            {
                "models.student_a.layers": [CONV, POOL, FLAT, {"type": "dense", "units": 64}],
                "experiments.models": ["student_a"],
            },
            ("split", "mnist"),
            "error: params.yaml: models.student_a.layers.3 (dense): the design gives 64 values per image, but mnist has "
            "10 classes; end it with a dense layer of units: classes",
        ),
        (
            {"models.student_a.layers": [CONV, FLAT, CLASSES]},
            ("normalize", "mnist"),
            "error: params.yaml: models.student_a: breaks the course rule for student designs",
        ),
        (
            {"normalize.pad_to": None},
            ("compare",),
            "error: params.yaml: models.lenet5_classic (builtin lenet5_classic): cannot take mnist's 28x28x1 images",
        ),
        ({}, ("split", "cifar10"), "error: cifar10: unknown dataset; known datasets: mnist, fashion_mnist, gtsrb"),
        # the pair a stage runs is checked even when it is not in experiments: GTSRB unpadded at 8x8
        (
            {"normalize.pad_to": None, "datasets.gtsrb.image_size": 8, "experiments.models": ["cnn_primer"]},
            ("train", "gtsrb", "lenet5_modern"),
            "error: models.lenet5_modern (builtin lenet5_modern), layer 2 (conv): input is 4x4, smaller than the 5x5 "
            "kernel, on gtsrb's 8x8x3 images",
        ),
        ({}, ("evaluate", "mnist", "lenet6"), "error: models.lenet6: missing; known designs: lenet5_modern,"),
        (
            {},
            ("normalize", "mnist"),
            "error: data/split/mnist/train.npz: missing; run the stages that write it first "
            "(`dvc repro` runs every stage in order)",
        ),
        (
            {},
            ("compare",),
            "error: metrics/mnist/lenet5_modern/seed_42/train.json: missing; run `dvc repro` so that train of "
            "lenet5_modern (seed 42) on mnist has run",
        ),
    ],
)
def test_a_mistake_is_one_line_and_status_2(
    project: Path, capsys: pytest.CaptureFixture, changes: dict, stage_args: tuple, expected: str
) -> None:
    write_params(project, **changes)
    assert run_stage(*stage_args) == 2
    assert one_error(capsys).startswith(expected)
    assert not (project / "data").exists()  # refused before any work


def test_a_vouched_repack_that_is_a_truncated_gzip_names_the_file_and_its_source(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    source = project / "sources" / "mnist"
    damaged = source / "train-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:300])
    vouch(source)  # the repack's owner vouches for the damaged file
    assert run_stage("download", "mnist") == 0
    assert run_stage("split", "mnist") == 2
    line = one_error(capsys)
    assert line.startswith(
        "error: data/raw/mnist/train-images-idx3-ubyte.gz: cannot decompress (Compressed file "
        "ended before the end-of-stream marker was reached), the file is corrupt or truncated; "
    )
    assert (
        f"it is the repacked copy {damaged}, accepted because an MD5SUMS vouches for it: replace that copy with "
        f"a good one (and its MD5SUMS line), or remove its line to use the official file; then delete "
        f"data/raw/mnist/train-images-idx3-ubyte.gz and run `dvc repro`"
    ) in line
    assert not (project / "data" / "split").exists()


def test_a_vouched_repack_with_a_wrong_idx_header_names_the_file(project: Path, capsys: pytest.CaptureFixture) -> None:
    source = project / "sources" / "mnist"
    labels = source / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(labels.read_bytes()))
    payload[2] = 0x0D  # IDX type code of floats
    labels.write_bytes(gzip.compress(bytes(payload)))
    vouch(source)
    assert run_stage("download", "mnist") == 0
    assert run_stage("split", "mnist") == 2
    assert one_error(capsys).startswith(
        "error: data/raw/mnist/t10k-labels-idx1-ubyte.gz: bad magic number 0x00000d01, "
        "expected 0x00000801 (an IDX file of unsigned bytes); it is the repacked copy"
    )


def test_a_hostile_archive_is_refused_naming_the_archive_and_entry(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    extracted, source = tmp_path / "gtsrb-extracted", tmp_path / "sources" / "gtsrb"
    write_official_layout(extracted)
    write_official_zips(extracted, source)
    with zipfile.ZipFile(source / "GTSRB_Final_Test_GT.zip", "a") as archive:
        archive.writestr("GTSRB/../../escaped.txt", b"x")
    vouch(source)
    write_params(project, **{"datasets.gtsrb.source": str(source), "experiments.datasets": ["gtsrb"]})
    assert run_stage("download", "gtsrb") == 0
    assert run_stage("split", "gtsrb") == 2
    assert one_error(capsys).startswith(
        "error: data/raw/gtsrb/GTSRB_Final_Test_GT.zip: entry 'GTSRB/../../escaped.txt': '..' would write outside the "
        "target folder; refusing to extract; it is the repacked copy"
    )
    assert not list(project.rglob("escaped.txt")) and not list(tmp_path.parent.glob("escaped.txt"))


def test_a_bad_gtsrb_csv_row_is_named_inside_its_archive(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    extracted, source = tmp_path / "gtsrb-extracted", tmp_path / "sources" / "gtsrb"
    write_official_layout(extracted)
    csv = extracted / "GT-final_test.csv"
    lines = csv.read_bytes().split(b"\r\n")
    lines[2] = lines[2].replace(b";", b";x", 1)
    csv.write_bytes(b"\r\n".join(lines))
    write_official_zips(extracted, source)
    vouch(source)
    write_params(project, **{"datasets.gtsrb.source": str(source), "experiments.datasets": ["gtsrb"]})
    assert run_stage("download", "gtsrb") == 0
    assert run_stage("split", "gtsrb") == 2
    line = one_error(capsys)
    # not the temporary folder it was extracted to, which is gone by now
    assert line.startswith(
        "error: data/raw/gtsrb/GTSRB_Final_Test_GT.zip/GT-final_test.csv line 3: '00001.ppm': Width 'x49'; "
        "expected a non-negative integer"
    ), line
    assert "gtsrb-extract-" not in line


def test_a_crash_keeps_its_traceback_and_status_1(project: Path, tmp_path: Path) -> None:
    (tmp_path / "crashing_stage.py").write_text(
        '"""A stage with a bug."""\nARGUMENTS = ("dataset",)\n'
        "def main(args, params):\n    raise ZeroDivisionError('a bug')\n"
    )
    script = (
        "import sys; from pipeline import cli, stages; stages.__path__.append(sys.argv[1]); "
        "cli.main(['crashing_stage', 'mnist'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(PIPELINE_TRACKING="off", PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ZeroDivisionError: a bug" in result.stderr
    assert "error:" not in result.stderr


@pytest.mark.timeout(300)
def test_the_train_stage_checks_params_before_tensorflow_loads(project: Path) -> None:
    """As DVC runs it: one line, status 2, and TensorFlow never imported (the check takes milliseconds)."""
    write_params(
        project, **{"models.student_a.layers": [CONV, POOL, FLAT, CLASSES, CONV], "experiments.models": ["student_a"]}
    )
    command = [sys.executable, "-X", "importtime", "-m", "pipeline", "train", "mnist", "student_a"]
    result = subprocess.run(
        command,
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(PIPELINE_TRACKING="off", PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: params.yaml: models.student_a.layers.4 (conv): input is flat (10 values) on mnist's "
        "32x32x1 images, and a conv layer needs an image; move it before the flatten or global "
        "pooling layer"
    ]
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "pipeline" in imported and "tensorflow" not in imported and "keras" not in imported


@pytest.mark.timeout(300)
def test_the_train_stage_without_its_input_is_one_line(project: Path) -> None:
    """Params are fine, TensorFlow loads, and the missing normalized data is a user error, not a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "mnist", "lenet5_modern"],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(PIPELINE_TRACKING="off", PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data/normalized/mnist/meta.json: missing; run the stages "
        "that write it first (`dvc repro` runs every stage in order)"
    )


REPRO_OWN = {("repro", "load_params("), ("repro", 'print(f"error:')}


def test_every_command_enters_through_the_one_entry(capsys: pytest.CaptureFixture) -> None:
    """Every stage in dvc.yaml and every make target runs `python -m pipeline <command>`, and no command
    module parses its own command line, loads params or handles errors itself."""
    commands = cli.commands()
    assert {
        "download",
        "split",
        "normalize",
        "train",
        "evaluate",
        "compare",
        "predict",
        "repro",
        "ui",
        "server",
        "resync",
        "architecture",
        "search",
        "adopt",
    } <= set(commands)
    for text in ((REPO / "dvc.yaml").read_text(), (REPO / "Makefile").read_text()):
        for line in text.splitlines():
            if "python -m pipeline" in line and not line.lstrip().startswith("#"):
                words = line.split("python -m pipeline")[1].split()
                assert words and words[0] in commands, line
    for name, module in commands.items():
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        for forbidden in ("parse_args", "load_params(", "__main__", "sys.exit", "noqa: E402", 'print(f"error:'):
            # repro reads params only when a TensorFlow stage is to run, and names the stage that failed
            assert forbidden not in source or (name, forbidden) in REPRO_OWN, (name, forbidden)


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert cli.run(["trian", "mnist"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: trian: not a command; the commands are adopt, architecture, compare,"
    )


def test_the_architecture_report_of_an_unknown_design_is_one_line(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_stage("architecture", "gtsrb", "student_gtsrbx") == 2
    assert one_error(capsys).startswith("error: models.student_gtsrbx: missing; known designs: lenet5_modern,")


@pytest.mark.parametrize("switch", [None, "0"], ids=["default", "TF_CPP_MIN_LOG_LEVEL=0"])
def test_tensorflows_load_notices_are_hidden_unless_asked_for(switch: str | None) -> None:
    """absl's "before absl::InitializeLog()" and oneDNN's notice read as errors; TensorFlow's own switch shows them.
    What else goes to stderr while TensorFlow loads still shows, in order."""
    probe = "import sys, pipeline; print('before', file=sys.stderr); import keras; print('after', file=sys.stderr)"
    env = tool_env() if switch is None else tool_env(TF_CPP_MIN_LOG_LEVEL=switch)
    if switch is None:
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    if switch is None:
        assert lines == ["before", "after"]
    else:
        assert lines[0] == "before" and lines[-1] == "after"
        assert any("absl::InitializeLog()" in line for line in lines)
        assert any("oneDNN custom operations are on" in line for line in lines)
