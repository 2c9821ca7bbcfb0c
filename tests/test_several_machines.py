"""Several machines, one tracking server: the pipeline against a real `mlflow server` on PostgreSQL, each
machine logging in as its own user, and experiments run on two clones at the same time, shared through a git remote and a DVC remote, and seen
from a third; a server that goes away mid-stage loses nothing.

Each clone stands for a machine: its own workspace and DVC cache; what they share is what machines
share (a bare git repository, a DVC remote folder, the tracking server on loopback). Tiny data, 1 epoch.
The server is started as `make server` starts it; without PostgreSQL, these tests install it as
`make server-deps` does, and skip only where it cannot be installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from pipeline.core.paths import RunPaths
from pipeline.tracking import server
from pipeline.tracking.server import free_port
from tests.conftest import TINY_PROJECT_MODELS, copy_project, run, tiny_params, tool_env, write_mirror
from tests.test_server_auth import login
from tests.test_tracking_server import answers_the_check_only, server_cli, stand_in_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

SEED = 42
FIGURES = (
    8  # evaluate's PNGs: learning curves, 2 confusion matrices, samples, mistakes, reliability, filters, feature maps
)
REPORTS = {
    "reports/history.csv",
    "reports/confusion.csv",
    "reports/architecture.md",
    "reports/summary.txt",
    "reports/per_class.json",
    "reports/predictions.csv",
    "reports/robustness.json",
}
DATA_STAGES = ("download", "split", "normalize", "corrupt")
# Two machines' experiments: each changes what its stages retrain.
EXPERIMENTS = {
    "alice": ("alice-bs16", "train.batch_size=16", TINY_PROJECT_MODELS),
    "bob": ("bob-narrow", "models.student_b.layers.0.filters=8", ("student_b",)),
}


# Who logs in from each machine: the baseline's, two that run experiments at once, one that works offline.
USERS = ("lab", "alice", "bob", "dave")


@dataclass
class Server:
    uri: str
    logins: dict[str, dict[str, str]]  # each user's environment: the server's URI and their login


def login_env(credentials: Path) -> dict[str, str]:
    user, password = login(credentials)
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.fixture(scope="module")
def tracking_server() -> Iterator[Server]:
    """`make server` (PostgreSQL backend, logins on) in a folder the cluster's owner can reach, on a free
    port, with a user for each machine (`make server-user`); this process reads it as its admin."""
    if server.postgres_bin() is None:
        try:
            server.install_postgresql()
        except server.ServerError as error:
            pytest.skip(f"PostgreSQL is not installed and cannot be installed here: {error}")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-server-"))  # not under pytest's 0700 folder: as root,
    folder.chmod(0o755)  # the `postgres` user runs the cluster and must reach it
    port = free_port()
    try:
        server_cli("start", "--dir", folder, "--port", port)
        for user in USERS:
            server_cli("user", "--dir", folder, user)
        uri = f"http://127.0.0.1:{port}"
        logins = {
            user: {"MLFLOW_TRACKING_URI": uri, **login_env(folder / "users" / f"{user}.credentials")} for user in USERS
        }
        with pytest.MonkeyPatch.context() as environment:
            for name, value in login_env(folder / "admin.credentials").items():
                environment.setenv(name, value)
            yield Server(uri, logins)
    finally:
        server_cli("stop", "--dir", folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Shared:
    uri: str  # the tracking server
    logins: dict[str, dict[str, str]]  # each machine's user's environment (Server.logins)
    origin: Path  # the bare git repository every machine pushes to
    base: Path  # where the machines' clones go
    first: Path  # the machine that ran the baseline


@pytest.fixture(scope="module")
def shared(tracking_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """The first machine: `dvc repro` logging to the server, outputs committed, `git push`, `dvc push --run-cache`."""
    base = tmp_path_factory.mktemp("machines")
    origin = base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base)
    first = copy_project(base / "first", tiny_params(write_mirror(base / "mirror")))
    run(["dvc", "remote", "add", "-d", "shared", str(base / "dvc-remote")], first)
    run(["dvc", "repro"], first, **tracking_server.logins["lab"])
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "baseline: outputs and dvc.lock"], first)
    run(["git", "remote", "add", "origin", str(origin)], first)
    run(["git", "push", "-q", "origin", "main"], first)
    run(["dvc", "push", "--run-cache"], first)
    return Shared(tracking_server.uri, tracking_server.logins, origin, base, first)


def clone(shared: Shared, name: str) -> Path:
    """Another machine: `git clone` of the shared repository and `dvc pull` of its data and models."""
    target = shared.base / name
    run(["git", "clone", "-q", str(shared.origin), str(target)], shared.base)
    run(["dvc", "pull"], target)
    return target


def design_runs(client: mlflow.MlflowClient, experiment: str) -> dict[str, object]:
    """The server's runs of DVC experiment `experiment`, by design (and 'compare', and the data stages)."""
    mnist = client.get_experiment_by_name("mnist")
    found = client.search_runs([mnist.experiment_id], f"tags.dvc_experiment = '{experiment}'")
    return {run.data.tags.get("model") or run.data.tags["stage"]: run for run in found}


def evaluated(repo: Path, design: str) -> dict[str, float]:
    return json.loads((repo / RunPaths("mnist", design, SEED).metrics_dir / "evaluate.json").read_text())


def check_design_run(client: mlflow.MlflowClient, found, repo: Path, design: str) -> int:
    """A design's run holds what the stages logged (train and evaluate in one run); returns its artifact count."""
    assert found.info.status == "FINISHED" and found.data.tags["stage"] == "train+evaluate+robustness"
    assert found.data.metrics["test_accuracy"] == pytest.approx(evaluated(repo, design)["test_accuracy"])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_accuracy")] == [1]
    figures = client.list_artifacts(found.info.run_id, "figures")
    reports = {a.path for a in client.list_artifacts(found.info.run_id, "reports")}
    assert len(figures) == FIGURES and reports >= REPORTS
    (model,) = [
        m for m in client.search_logged_models([found.info.experiment_id]) if m.source_run_id == found.info.run_id
    ]
    assert model.artifact_location.startswith("mlflow-artifacts:")
    return len(figures) + len(reports) + 1


def test_the_pipeline_logs_params_metrics_figures_and_models_through_the_server(shared: Shared, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(shared.uri)
    mnist = client.get_experiment_by_name("mnist")
    assert mnist.artifact_location.startswith("mlflow-artifacts:")  # proxied: no client needs the server's disk
    runs = design_runs(client, "workspace")
    assert set(runs) == {*DATA_STAGES, *TINY_PROJECT_MODELS, "compare"}
    for design in TINY_PROJECT_MODELS:
        check_design_run(client, runs[design], shared.first, design)
        assert runs[design].data.params["train.epochs"] == "1"
    # the model comes back through the server's HTTP API alone
    (model,) = [
        m
        for m in client.search_logged_models([mnist.experiment_id])
        if m.source_run_id == runs[TINY_PROJECT_MODELS[0]].info.run_id
    ]
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=model.artifact_location, dst_path=str(tmp_path), tracking_uri=shared.uri
        )
    )
    assert (local / "MLmodel").is_file()
    assert runs["split"].data.metrics["size_train"] + runs["split"].data.metrics["size_val"] == 400
    assert {p.name for p in (shared.first / "mlruns").iterdir()} == {"README.md"}, "a run was logged locally"
    assert not (shared.first / "mlflow.db").exists(), "a run was logged locally"


def test_two_machines_share_their_experiments_and_a_third_sees_them_all(shared: Shared) -> None:
    machines = {name: clone(shared, name) for name in EXPERIMENTS}
    running = {
        name: subprocess.Popen(
            ["dvc", "exp", "run", "-n", exp, "-S", change],
            cwd=machines[name],
            env=tool_env(**shared.logins[name]),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, (exp, change, _) in EXPERIMENTS.items()
    }  # at the same time
    for name, process in running.items():
        output, _ = process.communicate(timeout=1500)
        assert process.returncode == 0, f"{name}'s dvc exp run failed:\n{output}"
    for name, (exp, _, _) in EXPERIMENTS.items():
        run(["dvc", "exp", "push", "origin", exp], machines[name])

    third = clone(shared, "carol")
    names = [exp for exp, _, _ in EXPERIMENTS.values()]
    run(["dvc", "exp", "pull", "origin", *names], third)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], third).stdout)
    seen = {
        rev["name"]: rev["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
    }
    assert set(names) <= set(seen), f"dvc exp show lists {sorted(seen)}"

    client = mlflow.MlflowClient(shared.uri)
    artifacts = 0
    for name, (exp, _, retrained) in EXPERIMENTS.items():
        runs = design_runs(client, exp)
        assert set(runs) == {*retrained, "compare"}, f"{exp}: the server has runs of {sorted(runs)}"
        metrics = seen[exp]["metrics"]
        for design in retrained:  # nothing lost: what DVC and the server hold agree
            artifacts += check_design_run(client, runs[design], machines[name], design)
            path = str(RunPaths("mnist", design, SEED).metrics_dir / "evaluate.json")
            assert metrics[path]["data"]["test_accuracy"] == pytest.approx(runs[design].data.metrics["test_accuracy"])

    # the third machine has bob's models without training them
    run(["dvc", "exp", "apply", "bob-narrow"], third)
    assert "up to date" in run(["dvc", "status"], third).stdout
    assert "Running stage" not in run(["dvc", "repro"], third).stdout
    every = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    print(
        f"\nseveral machines: {len(every)} runs on the server ({len(design_runs(client, 'workspace'))} baseline, "
        f"{sum(len(design_runs(client, exp)) for exp in names)} from the two machines), {len(seen)} experiments in "
        f"the third machine's dvc exp show, {artifacts} artifacts and models in the two machines' design runs"
    )


def test_a_server_that_goes_away_mid_stage_loses_nothing(shared: Shared) -> None:
    """The stages pass the check, then the server stops answering: the experiment completes with its outputs,
    and `make resync` logs its runs into the server as if it had never gone away."""
    machine = clone(shared, "dave")
    with stand_in_server(answers_the_check_only) as gone:
        result = run(
            ["dvc", "exp", "run", "-n", "offline", "-S", "models.student_b.layers.0.filters=4"],
            machine,
            MLFLOW_TRACKING_URI=gone,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        )
    assert result.stderr.count("this run is kept in") == 4, result.stderr  # train, evaluate, robustness, compare
    assert "up to date" in run(["dvc", "status"], machine).stdout  # DVC kept every output
    train_run = json.loads((machine / RunPaths("mnist", "student_b", SEED).model_dir / "run.json").read_text())
    assert train_run["run_id"].startswith("spooled-")  # it never reached a server

    resync = run(["python", "-m", "pipeline", "resync", "--to", shared.uri], machine, **shared.logins["dave"])
    assert "resync: 4 of 4 kept runs logged" in resync.stdout
    client = mlflow.MlflowClient(shared.uri)
    runs = design_runs(client, "offline")
    assert set(runs) == {"student_b", "compare"}
    check_design_run(client, runs["student_b"], machine, "student_b")
    assert runs["student_b"].data.params["design_spec.layers.0.filters"] == "4"
    replayed = json.loads((machine / ".tracking-spool" / "replayed.json").read_text())
    assert replayed[train_run["run_id"]] == runs["student_b"].info.run_id  # later evaluations find it
