"""The parallel runner (`python -m pipeline repro`) on a toy DVC project whose stages prove they overlap.

The toy stages are small Python scripts, so these tests need DVC but not TensorFlow: two
stages that must meet each other (each waits until the other has started) can only both
succeed when the runner starts them side by side.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from pipeline.core.paths import RunPaths
from pipeline.tools import repro
from pipeline.training import compute
from tests.conftest import REPO, TINY_PROJECT_MODELS, copy_project, run, tool_env, write_mirror
from tests.test_end_to_end import model_runs

STEP = '''
"""A toy stage: `step.py NAME [--meet OTHER]`: wait until OTHER has started, then write out/NAME.txt."""
import os, pathlib, sys, time

name = sys.argv[1]
pathlib.Path("started").mkdir(exist_ok=True)
pathlib.Path("started", name).touch()
if os.environ.get("STEP_FAIL") == name:
    print(f"error: {name}: broke on purpose; unset STEP_FAIL", file=sys.stderr)
    pathlib.Path("started", name + ".failed").touch()
    sys.exit(2)
if "--meet" in sys.argv:
    other = sys.argv[sys.argv.index("--meet") + 1]
    deadline = time.time() + 120
    while not pathlib.Path("started", other).exists():
        if time.time() > deadline:
            sys.exit(f"{name}: {other} never started beside it")
        time.sleep(0.05)
    if pathlib.Path("started", other + ".failed").exists():  # finish only once the runner heard of it
        import psutil

        def failing() -> bool:
            return any(p.info["cmdline"] and p.info["cmdline"][-2:] == ["--single-item", other]
                       and p.info["cwd"] == os.getcwd() for p in psutil.process_iter(["cmdline", "cwd"]))

        while failing() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
print(f"{name} done")
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out", name + ".txt").write_text(name)
'''

STAGES = {
    "a": {"cmd": "python step.py a", "deps": ["step.py"], "outs": ["out/a.txt"]},
    "b": {"cmd": "python step.py b --meet c", "deps": ["out/a.txt"], "outs": ["out/b.txt"]},
    "c": {"cmd": "python step.py c --meet b", "deps": ["out/a.txt"], "outs": ["out/c.txt"]},
    "d": {"cmd": "python step.py d", "deps": ["out/b.txt", "out/c.txt"], "outs": ["out/d.txt"]},
    "e": {"cmd": "python step.py e", "deps": ["out/b.txt"], "outs": ["out/e.txt"]},
}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    (tmp_path / "step.py").write_text(textwrap.dedent(STEP))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}, sort_keys=False))
    (tmp_path / ".gitignore").write_text("started/\n")
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "config", "core.analytics", "false"], tmp_path)
    return tmp_path


def runner(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "repro", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(PYTHONPATH=str(REPO), **env),
        timeout=600,
    )


def locked_stages(project: Path) -> set[str]:
    lock = project / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.is_file() else set()


def test_independent_stages_run_side_by_side_and_dvc_records_each(toy: Path) -> None:
    result = runner(toy, "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert locked_stages(toy) == set(STAGES)
    assert run(["dvc", "status", "--json"], toy).stdout.strip() == "{}"
    # every line of a stage's output carries its name
    assert any(line.startswith("b ") and line.endswith("| b done") for line in result.stdout.splitlines())


def test_a_second_run_with_nothing_to_do_starts_no_stage(toy: Path) -> None:
    assert runner(toy, "-j", "2").returncode == 0
    again = runner(toy, "-j", "2")
    assert again.returncode == 0 and again.stdout.strip() == "Data and pipelines are up to date."


def test_plain_dvc_repro_sees_the_runners_work_as_its_own(toy: Path) -> None:
    assert runner(toy, "-j", "2").returncode == 0
    assert "Running stage" not in run(["dvc", "repro"], toy).stdout


def test_a_target_runs_with_its_upstream_stages_only(toy: Path) -> None:
    (toy / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {**STAGES, "b": {**STAGES["b"], "cmd": "python step.py b"}}})
    )
    result = runner(toy, "b")
    assert result.returncode == 0, result.stdout + result.stderr
    assert locked_stages(toy) == {"a", "b"}


def test_a_change_reruns_only_the_stages_downstream_of_it(toy: Path) -> None:
    assert runner(toy, "-j", "2").returncode == 0
    (toy / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {**STAGES, "d": {**STAGES["d"], "cmd": "python step.py d --again"}}})
    )
    result = runner(toy, "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    started = {line.split("'")[1] for line in result.stdout.splitlines() if "| Running stage" in line}
    assert started == {"d"}


def test_the_first_failure_stops_new_stages_lets_running_ones_finish_and_names_the_error(toy: Path) -> None:
    result = runner(toy, "-j", "2", STEP_FAIL="c")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: stage c failed: error: c: broke on purpose; unset STEP_FAIL"
    assert (toy / "out/b.txt").is_file() and "b" in locked_stages(toy), "b, running beside c, did not finish"
    assert not (toy / "started/e").exists() and not (toy / "started/d").exists(), "a stage started after the failure"


def test_a_stage_started_while_another_dvc_holds_the_lock_waits_for_it(toy: Path) -> None:
    import zc.lockfile

    assert runner(toy, "a").returncode == 0
    (toy / "step.py").write_text((toy / "step.py").read_text() + "\n")  # everything is stale again
    held = zc.lockfile.LockFile(str(toy / ".dvc" / "tmp" / "lock"))  # as a `dvc` command in another shell would
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "repro", "-j", "2"],
        cwd=toy,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=tool_env(PYTHONPATH=str(REPO)),
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=5)  # DVC gives up on a taken lock after 3 s; the runner must not
    finally:
        held.close()
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert locked_stages(toy) == set(STAGES)


def test_a_start_that_fails_on_the_lock_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC's rwlock guard gives up after 3 s even with --wait-for-lock: such a start is tried again."""
    fake = tmp_path / "fake_dvc.py"
    fake.write_text(
        textwrap.dedent("""
        import pathlib, sys
        tries = pathlib.Path(sys.argv[-1] + ".tries")
        count = int(tries.read_text()) + 1 if tries.exists() else 1
        tries.write_text(str(count))
        if count < 3:
            sys.exit("ERROR: Unable to acquire lock. Most likely another DVC process is running")
        print("Running stage 'x':")
    """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(repro, "LOCK_BACKOFF_MAX", 0.1)
    monkeypatch.setattr(repro.Runner, "command", staticmethod(lambda name: [sys.executable, str(fake), name]))
    lines: list[str] = []

    class Lines:
        def write(self, text: str) -> None:
            lines.extend(text.splitlines())

        def flush(self) -> None:
            pass

    status = repro.Runner([repro.Stage("x", set(), 1)], 2, dict(os.environ), Lines()).run()
    assert status == 0 and (tmp_path / "x.tries").read_text() == "3"
    assert sum("retrying" in line for line in lines) == 2


def test_thread_budgets_follow_the_designs_train_threads() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.train_settings("lenet5_modern", "mnist").threads == 1, "the shipped default packs LeNets one per core"
    assert params.train_settings("student_gtsrb", "gtsrb").threads == 2
    stale = [
        ("normalize@mnist", "python -m pipeline normalize mnist", set()),
        ("train@mnist-lenet5_modern-1", "python -m pipeline train mnist lenet5_modern --seed 1", set()),
        ("train@gtsrb-student_gtsrb-1", "python -m pipeline train gtsrb student_gtsrb --seed 1", set()),
        ("evaluate@gtsrb-student_gtsrb-1", "python -m pipeline evaluate gtsrb student_gtsrb --seed 1", set()),
    ]
    stages, _ = repro.plan(stale, params, cores=2)
    assert [(s.threads, s.training) for s in stages] == [(1, False), (1, True), (2, True), (2, False)]
    capped, _ = repro.plan(stale, params, cores=1)
    assert max(s.threads for s in capped) == 1, "a stage may never ask for more than -j"


def test_the_longest_chain_of_work_starts_first_estimated_from_the_last_training_on_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = load_params(REPO / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for dataset, design, seconds, epochs in (
        ("gtsrb", "student_gtsrb", 300.0, 10),
        ("mnist", "lenet5_modern", 50.0, 10),
    ):
        record = RunPaths(dataset, design, 7).metrics_dir / "train.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"train_seconds": seconds, "epochs_run": epochs}))
    gtsrb_epochs = params.train_settings("student_gtsrb", "gtsrb").epochs
    stale = [
        ("normalize@mnist", "python -m pipeline normalize mnist", set()),
        ("normalize@gtsrb", "python -m pipeline normalize gtsrb", set()),
        ("train@mnist-lenet5_modern-1", "python -m pipeline train mnist lenet5_modern --seed 1", {"normalize@mnist"}),
        ("train@gtsrb-student_gtsrb-1", "python -m pipeline train gtsrb student_gtsrb --seed 1", {"normalize@gtsrb"}),
        ("train@gtsrb-lenet5_classic-1", "python -m pipeline train gtsrb lenet5_classic --seed 1", {"normalize@gtsrb"}),
    ]
    stages, _ = repro.plan(stale, params, cores=2)
    seconds = {stage.name: stage.seconds for stage in stages}
    assert seconds["train@gtsrb-student_gtsrb-1"] == pytest.approx(30.0 * gtsrb_epochs), "per epoch on record"
    assert (
        seconds["train@gtsrb-lenet5_classic-1"]
        == repro.UNKNOWN_EPOCH_SECONDS * params.train_settings("lenet5_classic", "gtsrb").epochs
    ), "nothing on record: the guess"
    runner = repro.Runner(stages, 2, {})
    assert [stage.name for stage in runner.ready()] == ["normalize@gtsrb", "normalize@mnist"], (
        "the data of the dataset with the longest training first"
    )


def test_a_stage_waiting_for_threads_is_not_overtaken_by_one_that_would_delay_it() -> None:
    long_two = repro.Stage("train@gtsrb-big-1", set(), 2, training=True, seconds=500, priority=500)
    long_one = repro.Stage("train@gtsrb-lenet-1", set(), 1, training=True, seconds=200, priority=200)
    short = repro.Stage("evaluate@mnist-lenet-1", set(), 1, seconds=5, priority=5)
    running = repro.Stage("train@mnist-lenet-1", set(), 1, training=True, seconds=60, priority=60)
    runner = repro.Runner([long_two, long_one, short], 2, {})
    runner.running[running.name] = repro.Job(running, None, started=100.0)  # type: ignore[arg-type]
    assert runner.startable(now=130.0) == [short], "only what ends before the two threads are free"
    assert runner.startable(now=158.0) == [], "the short one would end after them"
    del runner.running[running.name]
    assert runner.startable(now=160.0) == [long_two], "then the long one starts, alone on both threads"


def one_thread_trainings(count: int, seconds: float, prefix: str = "train@mnist-lenet5_modern") -> list[repro.Stage]:
    return [
        repro.Stage(
            f"{prefix}-{seed}", set(), 1, training=True, seconds=seconds, priority=seconds + repro.SHORT_STAGE_SECONDS
        )
        for seed in range(1, count + 1)
    ]


def test_never_more_threads_in_flight_than_cores() -> None:
    """Three seeds of a one-thread design on 2 cores: two now, the third when a core frees up."""
    assert len(repro.Runner(one_thread_trainings(3, 60.0), 2, {}).startable(now=0.0)) == 2
    assert len(repro.Runner(one_thread_trainings(3, 60.0), 1, {}).startable(now=0.0)) == 1
    two_threads = [replace(stage, threads=2) for stage in one_thread_trainings(3, 60.0)]
    assert len(repro.Runner(two_threads, 2, {}).startable(now=0.0)) == 1


def test_auto_threads_divide_the_cores_among_the_trainings_to_run() -> None:
    params = load_params(REPO / "params.yaml")
    design = replace(params.models["lenet5_modern"], train_overrides={"threads": "auto"})
    auto = replace(params, models={**params.models, "lenet5_modern": design})
    one = [("train@mnist-lenet5_modern-1", "python -m pipeline train mnist lenet5_modern --seed 1", set())]
    three = one + [
        (f"train@mnist-lenet5_modern-{seed}", f"python -m pipeline train mnist lenet5_modern --seed {seed}", set())
        for seed in (2, 3)
    ]
    assert repro.plan(one, auto, cores=4)[1] == 4
    assert repro.plan(three, auto, cores=4)[1] == 1
    assert [s.threads for s in repro.plan(three, auto, cores=4)[0]] == [1, 1, 1]


# --- The real pipeline on tiny data: trainings side by side give what a training alone gives.


@pytest.fixture(scope="module")
def seeds_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project on tiny MNIST with two designs and two seeds, built by the runner on 2 threads."""
    base = tmp_path_factory.mktemp("side-by-side")
    repo = copy_project(
        base / "repo",
        {
            "download.mirror": str(write_mirror(base / "mirror")),
            "train.epochs": 1,
            "train.batch_size": 32,
            "experiments.datasets": ["mnist"],
            "experiments.models": list(TINY_PROJECT_MODELS),
            "experiments.seeds": [42, 7],
            "evaluate.sample_images": 8,
        },
    )
    result = runner(repo, "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    run(["git", "add", "dvc.lock"], repo)  # queued experiments start from here: their data stages are cached
    run(["git", "commit", "-qm", "built"], repo)
    return repo


def model_digest(model_file: Path) -> str:
    import hashlib
    import zipfile

    with zipfile.ZipFile(model_file) as archive:
        return hashlib.sha256(archive.read("model.weights.h5")).hexdigest()


VARYING = ("train_seconds", "images_per_second")  # measurements, not results


@pytest.mark.e2e
def test_trainings_side_by_side_match_a_training_alone_with_the_same_threads(seeds_project: Path) -> None:
    assert run(["dvc", "status", "--json"], seeds_project).stdout.strip() == "{}"
    out = RunPaths("mnist", "lenet5_modern", 42)
    metrics = json.loads((seeds_project / out.metrics_dir / "train.json").read_text())
    assert metrics["threads"] == 1
    weights = model_digest(seeds_project / out.model_dir / "model.keras")
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in csv.DictReader((seeds_project / out.history).read_text(encoding="utf-8").splitlines())
    ]

    run(["dvc", "repro", "--force", "--single-item", "train@mnist-lenet5_modern-42"], seeds_project)  # alone now
    again = json.loads((seeds_project / out.metrics_dir / "train.json").read_text())
    assert model_digest(seeds_project / out.model_dir / "model.keras") == weights
    assert {k: v for k, v in again.items() if k not in VARYING} == {
        k: v for k, v in metrics.items() if k not in VARYING
    }
    assert [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in csv.DictReader((seeds_project / out.history).read_text(encoding="utf-8").splitlines())
    ] == history


@pytest.mark.e2e
def test_threads_and_device_are_recorded_in_the_mlflow_run(seeds_project: Path) -> None:
    runs = model_runs(seeds_project, "lenet5_modern", dvc_experiment="workspace")
    assert {found.data.tags["seed"] for found in runs} == {"42", "7"}
    for found in runs:
        assert found.data.params["train.threads"] == "1" and found.data.params["train.precision"] == "float32"
        assert found.data.params["device"].startswith("CPU: ")


@pytest.mark.e2e
def test_queued_experiments_with_auto_threads_share_the_cores(seeds_project: Path) -> None:
    """`PIPELINE_AUTO_THREADS=N dvc queue start -j 2`: each queued experiment's `threads: auto` is N."""
    for epochs in (2, 3):
        run(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-n",
                f"auto-{epochs}",
                "-S",
                "train.threads=auto",
                "-S",
                f"train.epochs={epochs}",
                "-S",
                "experiments.seeds=[42]",
                "-S",
                "experiments.models=[lenet5_modern]",
            ],
            seeds_project,
        )
    shared = str(max(1, compute.available_cores() // 2))
    run(["dvc", "queue", "start", "-j", "2"], seeds_project, PIPELINE_AUTO_THREADS=shared)
    for epochs in (2, 3):
        run(["dvc", "queue", "logs", f"auto-{epochs}", "--follow"], seeds_project)
    threads = {
        name: found.data.params["train.threads"]
        for name in ("auto-2", "auto-3")
        for found in model_runs(seeds_project, "lenet5_modern", dvc_experiment=name)
    }
    assert threads == {"auto-2": shared, "auto-3": shared}
