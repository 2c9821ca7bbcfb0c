"""Running a search: an Optuna study whose trials are designs of the search space, trained on the training
split and judged on the validation split only.

- **The study.** Multi-objective (validation accuracy up, one or two costs down), seeded, in an RDB storage:
  SQLite under .search/ on one machine, the tracking server's PostgreSQL (PIPELINE_SEARCH_STORAGE) for
  workers on several. Its name holds a fingerprint of what makes it this study (the space, the objectives,
  the constraints, the sampler, the data), so a changed space starts another study and the same one
  continues where it stopped: the trials budget counts every worker's trials.
- **Constraints.** A design that breaks the course rule, does not fit the images, or costs more than a
  constraint allows never trains: it ends `infeasible`, with Optuna's constraint values saying by how much,
  which both samplers use to steer away from it.
- **Pruning.** Optuna prunes single-objective studies only; each trial reports its validation accuracy per
  epoch to a twin trial in a single-objective study beside the main one (`<study>-pruning`), whose pruner
  decides. A trial is pruned on accuracy alone, within the constraints: its costs are known before it trains.
- **Several workers.** Trials go to workers through the storage, so none runs twice. Each worker beats a
  heartbeat; a trial whose worker went silent is marked failed and queued again (once) by the next worker.
- **The test split is closed.** An audit hook refuses, in this process, any open of a test split or raw file.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna

from pipeline import designs, tracking
from pipeline.core import files, paths
from pipeline.core.errors import UserError
from pipeline.core.validate import ConfigError
from pipeline.search import space as search_space
from pipeline.search.space import ACCURACY, Candidate, SearchSettings
from pipeline.training import compute, recipe
from pipeline.training.checkpoints import fingerprint

log = logging.getLogger(__name__)
# The heartbeat and its retry callback are "experimental" since Optuna 2.8; a warning per worker start says only that.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# The twin study's trials are asked for, not optimized; the main study's heartbeat covers the worker.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

STORAGE_VARIABLE = "PIPELINE_SEARCH_STORAGE"  # an RDB URL; its password in PGPASSFILE or ~/.pgpass, never in it
STATE_FOLDER = Path(".search")  # SQLite studies, gitignored: like checkpoints, what a search resumes from
ENDED = ("completed", "pruned", "infeasible", "failed")
PARENT_RUN = "mlflow_run_id"  # the study's user attribute: the MLflow run its trials nest under
COURSE_MAX_LAYERS = 15  # the course rule: fewer than this many layers (pipeline/designs/language.py)
RETRIES = 1  # a trial whose worker died runs once more, then stays failed
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who ran a trial: the report counts trials per worker
INFEASIBLE_FACTOR = 5  # a space whose designs mostly break the rules, or are all tried, still ends
TRAINED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


def storage_url(dataset: str) -> str:
    url = os.environ.get(STORAGE_VARIABLE)
    if url:
        if "://" not in url:
            raise UserError(
                f"{STORAGE_VARIABLE}: {url!r} is no database URL; set it to e.g. "
                f"postgresql+psycopg://mlflow@127.0.0.1:5432/optuna (`make server` prints it), or unset it for SQLite"
            )
        return url
    folder = files.project_root() / STATE_FOLDER
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / f'{dataset}.db'}"


def shown_storage(url: str) -> str:
    """The storage for logs and reports: its scheme and host, never a password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if scheme != "sqlite" else url


def study_name(settings: SearchSettings, base_recipe: recipe.TrainSettings) -> str:
    data = paths.NORMALIZED / settings.dataset
    train = base_recipe.as_params()
    # a jitter that is off is no jitter: a key the recipe schema gains later, at 0, continues the study
    train["augment"] = {key: value for key, value in train["augment"].items() if value}
    digest = fingerprint(
        {"dataset": settings.dataset, "search": settings.study_values(), "train": train},
        [data / "train.npz", data / "val.npz", data / "meta.json"],
    )
    return f"{settings.dataset}-{digest[:12]}"


def close_test_split(dataset: str) -> None:
    """From now on this process cannot open the test split (split or normalized), the corrupted test
    images or the raw files of `dataset`: a trial that tried would fail, naming the file."""
    closed = [
        (paths.SPLIT / dataset / "test.npz").resolve(),
        (paths.NORMALIZED / dataset / "test.npz").resolve(),
        (paths.CORRUPTED / dataset).resolve(),
        (paths.RAW / dataset).resolve(),
    ]

    def refuse(event: str, arguments: tuple[Any, ...]) -> None:
        if event != "open" or not isinstance(arguments[0], str | os.PathLike):
            return
        opened = Path(os.fsdecode(arguments[0])).resolve()
        if any(opened == path or path in opened.parents for path in closed):
            raise PermissionError(
                f"{opened}: a search judges designs on the validation split only; evaluate reads the test split"
            )

    sys.addaudithook(refuse)


@dataclass
class Search:
    """One worker's run of a dataset's study."""

    params: Any  # Params
    settings: SearchSettings
    url: str

    def __post_init__(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module logs each trial in one line
        self.dataset = self.settings.dataset
        self.base_recipe = self.params.dataset_recipe(self.dataset)
        self.name = study_name(self.settings, self.base_recipe)
        meta = files.read_json(paths.NORMALIZED / self.dataset / "meta.json")
        self.input_shape, self.classes = tuple(meta["input_shape"]), len(meta["class_names"])
        self.storage = self._storage()
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=self.name,
            directions=["maximize", *("minimize" for _ in self.settings.costs)],
            sampler=self._sampler(),
            load_if_exists=True,
        )
        self.twin = optuna.create_study(
            storage=self.storage,
            study_name=f"{self.name}-pruning",
            direction="maximize",
            pruner=self._pruner(),
            load_if_exists=True,
        )
        if "settings" not in self.study.user_attrs:
            self.study.set_user_attr("settings", self.settings.study_values())
            self.study.set_user_attr("dataset", self.dataset)

    def _storage(self, attempts: int = 5) -> optuna.storages.RDBStorage:
        """The study's storage. Workers that start together on a new database race to create Optuna's tables; the
        loser's CREATE fails on the winner's (a duplicate key), and it tries again, finding them made."""
        import sqlalchemy.exc

        for attempt in range(attempts):
            try:
                return optuna.storages.RDBStorage(
                    self.url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=self.settings.heartbeat_seconds,
                    grace_period=3 * self.settings.heartbeat_seconds,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == attempts - 1:
                    raise
                time.sleep(1 + attempt)
            except sqlalchemy.exc.OperationalError as error:
                reason = str(error.orig or error).strip().splitlines()[0]
                raise UserError(
                    f"{STORAGE_VARIABLE}: cannot reach the search's storage {shown_storage(self.url)} ({reason}); "
                    f"check the URL, and that its password is in PGPASSFILE or ~/.pgpass (`make server` prints both)"
                ) from None
        raise AssertionError("unreachable")

    def _sampler(self) -> optuna.samplers.BaseSampler:
        if self.settings.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.settings.population, seed=self.settings.seed)
        return optuna.samplers.TPESampler(seed=self.settings.seed, multivariate=True, constant_liar=True)

    def _pruner(self) -> optuna.pruners.BasePruner:
        first = self.settings.min_epochs
        return {
            "none": lambda: optuna.pruners.NopPruner(),
            "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first - 1),
            "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
                min_resource=first, reduction_factor=3
            ),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=first, reduction_factor=3),
        }[self.settings.pruner]()

    # ---- the run

    def counted(self) -> int:
        """Trials that count against the budget: those that trained (completed or pruned) or train now on some
        worker. An infeasible one costs no training and does not count, nor does a repeat of a design trained
        before (the search stops after INFEASIBLE_FACTOR x trials of any kind); a failed one does not either: a
        worker's death is no verdict on a design, and its trial runs again."""
        trials = self.study.get_trials(deepcopy=False, states=COUNTED)
        return sum(t.user_attrs.get("ended") != "infeasible" and "duplicate_of" not in t.user_attrs for t in trials)

    def _stop_when_spent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.counted() >= self.settings.trials or len(study.trials) >= INFEASIBLE_FACTOR * self.settings.trials:
            study.stop()

    def run(self, parent_run_id: str | None) -> None:
        """Run trials until the study has `trials` of them or this run's `minutes` are spent."""
        if parent_run_id and PARENT_RUN not in self.study.user_attrs:
            self.study.set_user_attr(PARENT_RUN, parent_run_id)
        self.parent_run_id = self.study.user_attrs.get(PARENT_RUN, parent_run_id)
        remaining = self.settings.trials - self.counted()
        if remaining <= 0 or len(self.study.trials) >= INFEASIBLE_FACTOR * self.settings.trials:
            log.info(
                "search %s: the study has its %d trials; raise search.trials to run more",
                self.name,
                self.settings.trials,
            )
            return
        log.info(
            "search %s (%s): %d of %d trials to go%s",
            self.name,
            shown_storage(self.url),
            remaining,
            self.settings.trials,
            f", at most {self.settings.minutes:g} minutes" if self.settings.minutes else "",
        )
        self.study.optimize(
            self.objective,
            timeout=self.settings.minutes * 60 if self.settings.minutes else None,
            callbacks=[self._progress, self._stop_when_spent],
            gc_after_trial=True,
        )

    def _progress(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        measured = attrs.get("costs", {})
        costs = ", ".join(
            _cost_text(cost, measured[cost]) for cost in self.settings.measured_costs() if cost in measured
        )
        outcome = f"val accuracy {attrs['val_accuracy']:.4f}" if "val_accuracy" in attrs else attrs.get("reason", "")
        log.info(
            "trial %d (%d/%d) %s after %d epochs in %.0fs: %s; %s",
            trial.number,
            self.counted(),
            self.settings.trials,
            attrs.get("ended", "failed"),
            attrs.get("epochs", 0),
            attrs.get("seconds", 0.0),
            outcome,
            costs,
        )

    def objective(self, trial: optuna.Trial) -> tuple[float, ...]:
        started, cpu_started = time.perf_counter(), time.process_time()
        self._close_orphaned_twins()
        candidate = search_space.sample(self.settings, trial, self._base_augment())
        trial.set_user_attr("layers", candidate.layers)
        trial.set_user_attr("recipe", candidate.recipe)
        trial.set_user_attr("worker", WORKER)
        design, settings, problems = self._design(trial.number, candidate)
        # a design the sampler proposed before keeps its costs: measured again, a latency would differ by noise
        # alone, and the copy would dominate the trial that trained it
        earlier = self._trained_before(trial) if design is not None else None
        if earlier is not None:
            costs = dict(earlier.user_attrs["costs"])
        elif design is not None:
            costs = self._costs(design, settings)
        else:
            costs = dict.fromkeys(search_space.COSTS, float("inf"))
        for cost, maximum in self.settings.constraints.items():
            if maximum is not None:
                over = search_space.violation(costs[cost], maximum)
                reason = f"{_cost_text(cost, costs[cost])} over the maximum {maximum:g}"
                problems[cost] = (over, reason)
        for name, (over, _) in problems.items():  # Optuna's form: feasible when every value is <= 0
            trial.set_constraint(name, over)
        reasons = [reason for over, reason in problems.values() if over > 0]
        trial.set_user_attr("costs", costs)
        values = [costs[cost] for cost in self.settings.costs]
        with tracking.stage_run(
            self.params,
            self.dataset,
            "search-trial",
            run_name=f"trial {trial.number}",
            # read again: two workers that started together both made a search run, and the one the study kept is
            # the run every trial nests in
            parent_run_id=self.study.user_attrs.get(PARENT_RUN, self.parent_run_id),
            seed=self.settings.seed,
        ):
            tracking.log_params(
                {
                    "study": self.name,
                    "trial": trial.number,
                    **candidate.choices,
                    "design_spec": candidate.design_block(),
                }
            )
            tracking.log_metrics({cost: value for cost, value in costs.items() if np.isfinite(value)})
            if reasons:
                ended, accuracy, epochs = "infeasible", 0.0, 0
                trial.set_user_attr("reason", "; ".join(reasons))
            elif earlier is not None:  # the sampler proposed a design it has: same design, seed and data, same result
                ended, accuracy, epochs = earlier.user_attrs["ended"], earlier.user_attrs["val_accuracy"], 0
                trial.set_user_attr("duplicate_of", earlier.number)
                trial.set_user_attr("val_accuracy", accuracy)
                tracking.log_metrics({ACCURACY: accuracy})
                tracking.log_tags({"duplicate_of": earlier.number})
            else:
                ended, accuracy, epochs = self._train(trial, design, settings)
                trial.set_user_attr("val_accuracy", accuracy)
                tracking.log_metrics({ACCURACY: accuracy})
            trial.set_user_attr("ended", ended)
            trial.set_user_attr("epochs", epochs)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            trial.set_user_attr("cpu_seconds", time.process_time() - cpu_started)
            tracking.log_metrics({"epochs": epochs, "cpu_seconds": time.process_time() - cpu_started})
            tracking.log_tags({"trial_state": ended, "study": self.name})
        if ended == "pruned":
            raise optuna.TrialPruned()
        return (accuracy, *values)

    def _trained_before(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        """The trial of this study that trained the very design and recipe `trial` chose, if one did."""
        for earlier in self.study.get_trials(deepcopy=False, states=TRAINED):
            attrs = earlier.user_attrs
            original = attrs.get("ended") in ("completed", "pruned") and "duplicate_of" not in attrs
            if original and earlier.params == trial.params:
                return earlier
        return None

    def _close_orphaned_twins(self) -> None:
        """A worker that died left its twin trial running: once its trial is marked failed, so is the twin."""
        failed = {t.number for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
        for twin in self.twin.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if twin.user_attrs.get("trial") in failed:
                self.twin.tell(twin.number, state=optuna.trial.TrialState.FAIL)

    def _base_augment(self) -> dict[str, Any]:
        written = self.settings.raw["recipe"].get("augment")
        return dict(written) if written else dict(self.base_recipe.augment.__dict__)

    def _design(
        self, number: int, candidate: Candidate
    ) -> tuple[designs.Design | None, recipe.TrainSettings, dict[str, tuple[float, str]]]:
        """The trial's design (None if the images do not fit it) and recipe, and for each rule, how far the design
        is over it (<= 0: within) and why. The samplers learn from how far."""
        name = f"trial_{number}"
        design = designs.parse_design(name, {"layers": candidate.layers}, f"search trial {number}")
        overrides, _ = recipe.parse_train(candidate.recipe, f"search trial {number} recipe", partial=True)
        design = replace(design, student=True, train_overrides=overrides)
        settings = self.base_recipe.merged(overrides)
        settings = replace(settings, threads=compute.resolve_threads(settings.threads))
        problems = {"course_rule": (-1.0, ""), "fits": (-1.0, "")}
        layers = designs.declared_layers(design)
        try:
            designs.check_course_rule(layers, name)
        except ConfigError as error:
            over = float(max(len(layers) - (COURSE_MAX_LAYERS - 1), 1))
            problems["course_rule"] = (
                over,
                "the course rule: " + str(error).split("): it ", 1)[1].split(". Layers")[0],
            )
        try:
            recipe.check_recipe(design, settings, self.dataset)
            designs.check_shapes(design, self.input_shape, self.classes, self.dataset)
        except ConfigError as error:
            problems["fits"] = (1.0, str(error))
            return None, settings, problems
        return design, settings, problems

    def _costs(self, design: designs.Design, settings: recipe.TrainSettings) -> dict[str, float]:
        from pipeline.designs.keras_build import build_model
        from pipeline.designs.report import architecture_report, graph_call, latency_ms

        compute.use_threads(settings.threads)
        # its costs whether or not the course rule admits it (build_model refuses a student design breaking it)
        model = build_model(replace(design, student=False), self.input_shape, self.classes, self.settings.seed)
        totals = architecture_report(model, 1)["totals"]
        costs = {"params": float(model.count_params()), "macs": float(totals["macs"]), "latency_ms": float("nan")}
        if "latency_ms" in self.settings.measured_costs():
            import tensorflow as tf

            costs["latency_ms"] = latency_ms(graph_call(model), tf.zeros((1, *self.input_shape)))
        keras.backend.clear_session()
        return costs

    def _train(
        self, trial: optuna.Trial, design: designs.Design, settings: recipe.TrainSettings
    ) -> tuple[str, float, int]:
        from pipeline.training.loop import train

        twin = self.twin.ask()
        twin.set_user_attr("trial", trial.number)
        pruning = Pruning(twin, self.settings.min_epochs)
        try:
            result = train(design, self.dataset, self.settings.seed, None, settings, callbacks=[pruning])
        except BaseException:
            self.twin.tell(twin, state=optuna.trial.TrialState.FAIL)
            raise
        metrics = result["metrics"]
        del result
        keras.backend.clear_session()
        gc.collect()
        if pruning.pruned_after is not None:
            self.twin.tell(twin, state=optuna.trial.TrialState.PRUNED)
            trial.set_user_attr("val_accuracy_when_pruned", metrics["best_val_accuracy"])
            return "pruned", metrics["best_val_accuracy"], metrics["epochs_run"]
        self.twin.tell(twin, metrics["best_val_accuracy"])
        return "completed", metrics["best_val_accuracy"], metrics["epochs_run"]


class Pruning(keras.callbacks.Callback):
    """Reports each epoch's validation accuracy to the twin trial, and stops training when its pruner says."""

    def __init__(self, twin: optuna.Trial, min_epochs: int) -> None:
        super().__init__()
        self.twin, self.min_epochs = twin, min_epochs
        self.pruned_after: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.twin.report(float((logs or {})["val_accuracy"]), epoch + 1)
        if epoch + 1 >= self.min_epochs and self.twin.should_prune():
            self.pruned_after = epoch + 1
            self.model.stop_training = True
            log.info("pruned after epoch %d: its validation accuracy is behind the other trials'", epoch + 1)


def _cost_text(cost: str, value: float) -> str:
    if not np.isfinite(value):
        return f"{cost} unknown"
    if cost == "latency_ms":
        return f"{value:.2f} ms"
    return f"{_si(value)} {cost}"


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}"


# ---- What a study found


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial, as the report lists it."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        state = trial.state.name.lower()
        ended = attrs.get("ended") if trial.state.is_finished() and state != "fail" else None
        rows.append(
            {
                "number": trial.number,
                "ended": ended or {"fail": "failed", "running": "running", "waiting": "queued"}.get(state, state),
                "val_accuracy": attrs.get("val_accuracy"),
                "costs": {
                    key: (value if np.isfinite(value) else None) for key, value in attrs.get("costs", {}).items()
                },
                "epochs": attrs.get("epochs", 0),
                "seconds": attrs.get("seconds"),
                "cpu_seconds": attrs.get("cpu_seconds"),
                "reason": attrs.get("reason"),
                "choices": trial.params,
                "layers": attrs.get("layers"),
                "recipe": attrs.get("recipe"),
                "worker": attrs.get("worker"),
                "duplicate_of": attrs.get("duplicate_of"),
                "retried_from": optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial),
            }
        )
    return rows


def pareto_front(study: optuna.Study) -> list[int]:
    """The numbers of the feasible completed trials no other trial beats on every objective."""
    return sorted(
        trial.number
        for trial in study.best_trials
        if trial.user_attrs.get("ended") == "completed" and "duplicate_of" not in trial.user_attrs
    )


def pick_finalists(rows: list[dict[str, Any]], front: list[int], count: int, cost: str) -> list[int]:
    """At most `count` trials of the front, spread along it: the most accurate, the cheapest (by `cost`),
    and evenly between them."""
    members = sorted((row for row in rows if row["number"] in front), key=lambda row: row["costs"][cost])
    if len(members) <= count:
        return [row["number"] for row in members]
    positions = np.linspace(0, len(members) - 1, count).round().astype(int)
    return [members[index]["number"] for index in sorted(set(positions.tolist()))]


def best_so_far(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(epochs spent, best validation accuracy of a feasible completed trial so far), in trial order."""
    points, spent, best = [], 0, None
    for row in sorted(rows, key=lambda row: row["number"]):
        spent += row["epochs"]
        if row["ended"] == "completed" and (best is None or row["val_accuracy"] > best):
            best = row["val_accuracy"]
        if best is not None:
            points.append((spent, best))
    return points
