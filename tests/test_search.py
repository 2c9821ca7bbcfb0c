"""The design search: its space as data, a search end to end through DVC on tiny data (pruning, the
constraints refusing designs, the test split closed, MLflow's nested runs), resuming, a killed worker,
the finalists trained by the pipeline, and two workers sharing one study on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.core.errors import UserError
from pipeline.core.validate import ConfigError
from pipeline.search import space
from pipeline.search.study import best_so_far, pick_finalists, shown_storage
from pipeline.tracking import server
from pipeline.tracking.server import free_port
from tests.conftest import REPO, copy_project, edit_params, run, tiny_params, tool_env, write_mirror
from tests.test_tracking_server import server_cli

DATASET = "mnist"
# A search of a few short trials: 5 that train, 3 epochs each, pruned from the first epoch on.
TINY_SEARCH = {
    "experiments.search": True,
    "search.trials": 5,
    "search.population": 4,
    "search.min_epochs": 1,
    "search.recipe.epochs": 3,
}


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def with_search(**changes: object) -> dict:
    raw = raw_params()
    raw["search"].update(changes)
    return raw


# ---- The space as data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objectives": ["macs", "val_accuracy"]}, "search.objectives: must be [val_accuracy] followed by one or two"),
        ({"sampler": "random"}, "search.sampler: must be one of nsga2, tpe"),
        (
            {"constraints": {"flops": 10}},
            "search.constraints.flops: unknown key; allowed keys here: params, macs, latency_ms",
        ),
        ({"space": {**raw_params()["search"]["space"], "blocks": [3, 2]}}, "search.space.blocks: must have low < high"),
        ({"space": {**raw_params()["search"]["space"], "kernel": {"choices": []}}}, "search.space.kernel.choices"),
        (
            {"space": {**raw_params()["search"]["space"], "pooling": {"choices": ["maxpool", "l2pool"]}}},
            "search.space.pooling.choices.1",
        ),
        (
            {"recipe": {"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}},
            "search.recipe.learning_rate",
        ),
        ({"per_dataset": {"cifar": {"trials": 3}}}, "search.per_dataset.cifar: not a dataset of this file"),
        (
            {"per_dataset": {"mnist": {"space": {"filters": [8]}}}},
            "search.per_dataset.mnist.space.filters: must be [low, high]",
        ),
    ],
)
def test_a_wrong_search_block_names_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_params(with_search(**changes))
    assert message in str(error.value)


def test_a_trial_s_choices_make_a_design_of_the_family_and_its_recipe() -> None:
    settings = load_params(REPO / "params.yaml").search_settings("gtsrb")
    choices = {
        "blocks": 3,
        "convs_per_block": 1,
        "filters": 16,
        "growth": 2,
        "kernel": 5,
        "batchnorm": True,
        "pooling": "maxpool",
        "head": "globalavgpool",
        "dense_units": 64,
        "dropout": 0.3,
        "learning_rate": 0.002,
        "weight_decay": 0.0001,
        "augment_strength": 0.5,
    }
    candidate = space.sample(settings, optuna.trial.FixedTrial(choices), settings.raw["recipe"]["augment"])
    kinds = [layer["type"] for layer in candidate.layers]
    assert kinds == [
        *("conv", "batchnorm", "maxpool") * 2,
        "conv",
        "batchnorm",  # the last block ends in the global pooling, not a 2x2 one
        "globalavgpool",
        "dropout",
        "dense",
        "dense",
    ]
    assert [layer["filters"] for layer in candidate.layers if layer["type"] == "conv"] == [16, 32, 64]
    assert candidate.layers[-1] == {"type": "dense", "units": "classes", "activation": "softmax"}
    assert candidate.recipe["learning_rate"] == 0.002 and candidate.recipe["epochs"] == 10
    assert candidate.recipe["augment"]["rotation"] == 5.0  # half of the search recipe's 10 degrees
    # what a design in params.yaml is: the pipeline's own parser takes it
    raw = raw_params()
    raw["models"]["found"] = candidate.design_block()
    assert parse_params(raw).design("found").student


def test_the_finalists_spread_along_the_front_and_progress_is_best_so_far() -> None:
    rows = [
        {"number": n, "ended": "completed", "val_accuracy": a, "costs": {"macs": c}, "epochs": 3}
        for n, a, c in [(0, 0.90, 1e5), (1, 0.95, 1e6), (2, 0.97, 5e6), (3, 0.99, 2e7), (4, 0.93, 3e6)]
    ]
    assert pick_finalists(rows, [0, 1, 2, 3], 3, "macs") == [0, 2, 3]  # cheapest, between, most accurate
    assert pick_finalists(rows, [0, 3], 3, "macs") == [0, 3]
    assert best_so_far(rows) == [(3, 0.90), (6, 0.95), (9, 0.97), (12, 0.99), (15, 0.99)]


def test_a_storage_is_shown_without_its_password() -> None:
    assert shown_storage("postgresql+psycopg://optuna:s3cret@10.0.0.5:5432/optuna") == (
        "postgresql+psycopg://10.0.0.5:5432/optuna"
    )


# ---- End to end, on tiny data


def _search_project(base: Path, **changes: object) -> Path:
    repo = copy_project(base / "repo", {**tiny_params(write_mirror(base / "mirror")), **TINY_SEARCH, **changes})
    run(["dvc", "repro", f"normalize@{DATASET}"], repo)
    return repo


def _report(repo: Path) -> dict:
    return json.loads((repo / "search" / DATASET / "report.json").read_text())


def _trained(report: dict) -> list[dict]:
    return [row for row in report["trials"] if row["ended"] in ("completed", "pruned")]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project whose test split is gone, searched with `dvc repro search@mnist` (the stage alone)."""
    repo = _search_project(tmp_path_factory.mktemp("search"))
    for folder in ("split", "normalized"):
        (repo / "data" / folder / DATASET / "test.npz").unlink()  # the search must not need it
    run(["dvc", "repro", "--single-item", f"search@{DATASET}"], repo)
    return repo


@pytest.mark.e2e
def test_a_search_runs_through_dvc_without_the_test_split(searched: Path) -> None:
    report = _report(searched)
    ended = report["ended"]
    assert len(_trained(report)) == 5, ended  # the budget counts trainings
    assert ended["pruned"] >= 1 and ended["completed"] >= 1, ended
    infeasible = [row for row in report["trials"] if row["ended"] == "infeasible"]
    assert infeasible, "the default space has designs over 14 layers or 100k parameters (mnist): some must be refused"
    assert all(row["epochs"] == 0 and row["reason"] for row in infeasible)  # never trained, and it says why
    assert all(row["epochs"] == 3 for row in report["trials"] if row["ended"] == "completed")
    assert all(0 < row["epochs"] <= 3 for row in report["trials"] if row["ended"] == "pruned")
    assert report["spent"]["epochs"] == sum(row["epochs"] for row in report["trials"])
    # the front holds completed trials under the constraints, and nothing beats a member on both objectives
    front = [row for row in report["trials"] if row["number"] in report["front"]]
    assert front and all(row["ended"] == "completed" and row["costs"]["params"] <= 100_000 for row in front)
    for member in front:
        assert not any(
            other["val_accuracy"] > member["val_accuracy"] and other["costs"]["macs"] < member["costs"]["macs"]
            for other in report["trials"]
            if other["ended"] == "completed"
        )
    assert (searched / "plots" / "search" / DATASET / "pareto_macs.png").stat().st_size > 0
    assert (searched / "plots" / "search" / DATASET / "progress.png").stat().st_size > 0
    markdown = (searched / "search" / DATASET / "report.md").read_text()
    assert f"Study `{report['study']}`" in markdown and "test accuracy is measured for the finalists only" in markdown
    # the finalists are params.yaml designs under the course rule
    finalists = yaml.safe_load((searched / "search" / DATASET / "finalists.yaml").read_text())
    assert set(finalists["models"]) == set(report["finalists"]) and finalists["models"]
    raw = yaml.safe_load((searched / "params.yaml").read_text())
    raw["models"].update(finalists["models"])
    assert all(parse_params(raw).design(name).student for name in finalists["models"])
    status = run(["dvc", "status", f"search@{DATASET}"], searched).stdout
    assert "changed" not in status, status


@pytest.mark.e2e
def test_every_trial_is_an_mlflow_run_inside_the_search_s_run(searched: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{searched / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(DATASET)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.stage = 'search'")
    trials = client.search_runs([experiment.experiment_id], "tags.stage = 'search-trial'")
    report = _report(searched)
    assert len(trials) == len(report["trials"])
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parent.info.run_id}
    by_trial = {int(run.data.params["trial"]): run for run in trials}
    for row in report["trials"]:
        logged = by_trial[row["number"]]
        assert logged.data.tags["trial_state"] == row["ended"]
        assert "design_spec.layers.0.type" in logged.data.params and "learning_rate" in logged.data.params
        if row["ended"] in ("completed", "pruned"):  # its per-epoch validation accuracy
            history = client.get_metric_history(logged.info.run_id, "val_accuracy")
            assert len([m for m in history if m.step]) == row["epochs"]
    assert parent.data.params["study"] == report["study"]
    assert parent.data.metrics["trials"] == len(report["trials"])
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/report.md", "search/finalists.yaml", "search/pareto_macs.png"} <= artifacts


@pytest.mark.e2e
def test_a_search_run_again_with_a_bigger_budget_continues_its_study(searched: Path, tmp_path: Path) -> None:
    repo = tmp_path / "again"
    shutil.copytree(searched, repo, symlinks=True)
    before = _report(repo)
    edit_params(repo / "params.yaml", {"search.trials": 7})
    run(["dvc", "repro", "--single-item", f"search@{DATASET}"], repo)
    after = _report(repo)
    assert after["study"] == before["study"]
    assert len(_trained(after)) == 7  # two more trainings, not seven
    assert after["trials"][: len(before["trials"])] == before["trials"]  # the earlier trials, as they were


@pytest.mark.e2e
def test_the_search_process_cannot_open_the_test_split(searched: Path) -> None:
    (searched / "data" / "normalized" / DATASET / "test.npz").write_bytes(b"not read")
    script = (
        "import numpy as np\n"
        "from pipeline.search.study import close_test_split\n"
        f"close_test_split({DATASET!r})\n"
        f"np.load('data/normalized/{DATASET}/train.npz')\n"
        "try:\n"
        f"    open('data/normalized/{DATASET}/test.npz', 'rb')\n"
        "except PermissionError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=searched, env=tool_env(), capture_output=True, text=True, check=True
    )
    assert "test.npz: a search judges designs on the validation split only" in result.stdout


@pytest.mark.e2e
def test_a_worker_killed_mid_trial_leaves_it_failed_and_queued_again(tmp_path: Path) -> None:
    repo = _search_project(tmp_path, **{"search.heartbeat_seconds": 1, "search.recipe.epochs": 60, "search.trials": 2})
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "search", DATASET],
        cwd=repo,
        env=tool_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    for line in worker.stderr:  # the first trial that trains, at its second epoch
        if "epoch 2/60" in line:
            break
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    storage = f"sqlite:///{repo / '.search' / f'{DATASET}.db'}"
    (name,) = [name for name in optuna.get_all_study_names(storage) if not name.endswith("-pruning")]
    study = optuna.load_study(study_name=name, storage=storage)
    (killed,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    time.sleep(4)  # its heartbeat is older than the grace period (3 heartbeats)
    run([sys.executable, "-m", "pipeline", "search", DATASET], repo)
    rows = {row["number"]: row for row in _report(repo)["trials"]}
    assert rows[killed.number]["ended"] == "failed"
    retried = [row for row in rows.values() if row["retried_from"] == killed.number]
    assert len(retried) == 1 and retried[0]["choices"] == rows[killed.number]["choices"]
    assert retried[0]["ended"] in ("completed", "pruned")
    assert not [row for row in rows.values() if row["ended"] in ("running", "queued")]


@pytest.mark.e2e
def test_a_design_proposed_again_is_not_trained_again_and_a_spent_space_ends(tmp_path: Path) -> None:
    """Also: latency at batch 1 as the cost objective, measured for every design."""
    fixed = dict(raw_params()["search"]["space"])
    fixed.update(blocks=2, convs_per_block=1, filters=8, growth=2, batchnorm=False, pooling="maxpool")
    fixed.update(head="flatten", dense_units=0, dropout=0.0, kernel={"choices": [3, 5]})  # two designs in all
    recipe = {"epochs": 2, "learning_rate": 0.001, "threads": 1}
    changes = {"search.space": fixed, "search.recipe": recipe, "search.trials": 3}
    repo = _search_project(tmp_path, **changes, **{"search.objectives": ["val_accuracy", "latency_ms"]})
    run([sys.executable, "-m", "pipeline", "search", DATASET], repo)
    report = _report(repo)
    rows = report["trials"]
    originals = [row for row in rows if row["duplicate_of"] is None]
    assert sorted(row["choices"]["kernel"] for row in originals) == [3, 5]  # each design trained once
    assert report["objectives"] == ["val_accuracy", "latency_ms"]
    assert all(0 < row["costs"]["latency_ms"] < 1000 for row in originals), [row["costs"] for row in originals]
    assert len(rows) == 5 * 3  # the budget of 3 trainings cannot be met: it stops at 5 x trials
    for row in rows:
        if row["duplicate_of"] is not None:
            original = rows[row["duplicate_of"]]
            assert row["choices"] == original["choices"] and row["epochs"] == 0
            assert row["costs"] == original["costs"]  # not measured again: a latency would differ by noise
            assert (row["ended"], row["val_accuracy"]) == (original["ended"], original["val_accuracy"])
    assert _report(repo)["front"] and all(rows[n]["duplicate_of"] is None for n in _report(repo)["front"])


@pytest.mark.e2e
def test_adopted_finalists_train_with_the_pipeline(searched: Path, tmp_path: Path) -> None:
    repo = tmp_path / "adopted"
    shutil.copytree(searched, repo, symlinks=True)
    run(["dvc", "repro", f"normalize@{DATASET}"], repo)  # the test split back, for evaluate
    result = run([sys.executable, "-m", "pipeline", "adopt", DATASET], repo)
    names = list(_report(repo)["finalists"])
    assert all(f"adopt: {name} added to params.yaml" in result.stdout for name in names)
    params = load_params(repo / "params.yaml")
    assert set(names) <= set(params.experiment_models)
    again = run([sys.executable, "-m", "pipeline", "adopt", DATASET], repo)
    assert all(f"adopt: {name} already in params.yaml" in again.stdout for name in names)
    run(["dvc", "repro", f"evaluate@{DATASET}-{names[0]}-42"], repo)
    evaluated = json.loads((repo / "metrics" / DATASET / names[0] / "seed_42" / "evaluate.json").read_text())
    assert 0.0 <= evaluated["test_accuracy"] <= 1.0


def test_adopt_adds_designs_and_leaves_the_rest_of_params_yaml_as_written(tmp_path: Path) -> None:
    from pipeline.tools.adopt import adopt

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    design = {
        "train": {"epochs": 3, "learning_rate": 0.002, "augment": {"rotation": 5.0}},
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
            {"type": "maxpool", "pool": 2},
            {"type": "flatten"},
            {"type": "dense", "units": "classes", "activation": "softmax"},
        ],
    }
    assert adopt(path, {"search_gtsrb_t3": design}) == ["search_gtsrb_t3"]
    before, after = (REPO / "params.yaml").read_text().splitlines(), path.read_text().splitlines()
    removed = [line for line in before if line not in after]
    assert removed == [line for line in before if line.startswith("  models: [")]  # experiments.models, extended
    assert "  models: [lenet5_modern, lenet5_classic, student_gtsrb, search_gtsrb_t3]" in after
    assert "      - {type: conv, filters: 8, kernel: 3, padding: same, activation: relu}" in after
    params = load_params(path)
    assert params.train_settings("search_gtsrb_t3", "gtsrb").learning_rate == 0.002
    assert adopt(path, {"search_gtsrb_t3": design}) == []  # already there, as it is
    changed = {**design, "layers": design["layers"][1:]}
    with pytest.raises(UserError, match="models.search_gtsrb_t3 exists with other layers or recipe"):
        adopt(path, {"search_gtsrb_t3": changed})


# ---- Two workers, one study, a real PostgreSQL


@pytest.fixture(scope="module")
def postgres_server() -> dict[str, str]:
    """`make server` (PostgreSQL) in a folder the cluster's owner can reach; yields the environment of a
    search worker: the tracking server and the search's storage (its login in PGPASSFILE)."""
    if server.postgres_bin() is None:
        try:
            server.install_postgresql()
        except server.ServerError as error:
            pytest.skip(f"PostgreSQL is not installed and cannot be installed here: {error}")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-search-server-"))
    folder.chmod(0o755)  # as root, the `postgres` user runs the cluster and must reach it
    port = free_port()
    try:
        started = server_cli("start", "--dir", folder, "--port", port, "--no-auth")
        state = json.loads((folder / "server.json").read_text())
        assert f"PIPELINE_SEARCH_STORAGE={server.search_storage_uri(state['db_port'])}" in started.stdout
        assert "PGPASSFILE=" in started.stdout and server.SEARCH_USER not in (folder / "pgpass").read_text()
        yield {
            "MLFLOW_TRACKING_URI": state["uri"],
            "PIPELINE_SEARCH_STORAGE": server.search_storage_uri(state["db_port"]),
            "PGPASSFILE": str(folder / "search.pgpass"),
        }
    finally:
        server_cli("stop", "--dir", folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_two_workers_split_one_study_on_postgresql(
    postgres_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSFILE", postgres_server["PGPASSFILE"])  # this process reads the study too
    mirror = write_mirror(tmp_path / "mirror")
    changes = {**tiny_params(mirror), **TINY_SEARCH, "search.trials": 8, "search.recipe.threads": 1}
    machines = [copy_project(tmp_path / name, changes) for name in ("first", "second")]
    for repo in machines:
        run(["dvc", "repro", f"normalize@{DATASET}"], repo)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "search", DATASET],
            cwd=repo,
            env=tool_env(**postgres_server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for repo in machines
    ]
    outputs = [worker.communicate(timeout=1000)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    report = _report(machines[1])
    storage = optuna.storages.RDBStorage(postgres_server["PIPELINE_SEARCH_STORAGE"])
    trials = optuna.load_study(study_name=report["study"], storage=storage).trials
    numbers = [trial.number for trial in trials]
    assert len(numbers) == len(set(numbers))
    trained = [
        t for t in trials if t.user_attrs.get("ended") in ("completed", "pruned") and "duplicate_of" not in t.user_attrs
    ]
    # the budget is the study's, shared, not 8 per worker; two workers that check it at the same moment may
    # each start one more
    assert 8 <= len(trained) <= 9
    per_worker: dict[str, int] = {}
    for trial in trained:
        per_worker[trial.user_attrs["worker"]] = per_worker.get(trial.user_attrs["worker"], 0) + 1
    assert len(per_worker) == 2 and min(per_worker.values()) >= 1, per_worker
    # every trial's MLflow run reached the one server, nested in the study's one parent run
    client = mlflow.MlflowClient(tracking_uri=postgres_server["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(DATASET)
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'search'")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'search-trial'", max_results=1000)
    assert sorted(int(run.data.params["trial"]) for run in runs) == sorted(numbers)
    (parent,) = {run.data.tags["mlflow.parentRunId"] for run in runs}  # one search run holds every trial
    # two workers that start at the same moment may each open a search run; the study keeps one
    assert parent in {run.info.run_id for run in parents} and len(parents) <= 2
    print(f"two workers: trials per worker {per_worker}; {len(numbers)} trials, 0 duplicates")
    assert "PGPASSFILE" not in " ".join(outputs) and "password" not in " ".join(outputs).lower()


def test_the_search_storage_defaults_to_sqlite_and_refuses_a_non_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.search.study import storage_url

    monkeypatch.delenv("PIPELINE_SEARCH_STORAGE", raising=False)
    assert storage_url("mnist").startswith("sqlite:///") and storage_url("mnist").endswith(".search/mnist.db")
    monkeypatch.setenv("PIPELINE_SEARCH_STORAGE", "localhost:5432")
    with pytest.raises(UserError, match="PIPELINE_SEARCH_STORAGE: 'localhost:5432' is no database URL"):
        storage_url("mnist")
