"""The search block of params.yaml: the space of student designs and recipes, the objectives, the
constraints, the budget and the optimizer's settings, parsed and checked; and turning a trial's
choices into a design written in the layer language and a recipe.

No Optuna import: `sample` takes anything with Optuna's `suggest_*` methods, so params validate in
milliseconds. A dimension of the space is written as:
- a plain value: fixed, not searched (`kernel: 3`);
- `[low, high]`: a range, of ints if both are ints (`blocks: [1, 3]`), else of floats;
- `{low, high, log, step}`: a range with options (`learning_rate: {low: 0.0005, high: 0.01, log: true}`);
- `{choices: [...]}`: one of these values (`pooling: {choices: [maxpool, avgpool]}`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.core import validate as v
from pipeline.training import recipe

SAMPLERS = ("nsga2", "tpe")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
COSTS = ("params", "macs", "latency_ms")  # latency_ms: measured at batch 1, on this machine
ACCURACY = "val_accuracy"
POOL_TYPES = ("maxpool", "avgpool")
HEADS = ("flatten", "globalavgpool", "globalmaxpool")

# The design family: `blocks` blocks of `convs_per_block` 3x3 (or `kernel`) convolutions, each followed by
# batch normalization if `batchnorm`, and a 2x2 pooling between blocks; then the head (flatten after a last
# pooling, or a global pooling), an optional dropout and hidden dense layer, and the softmax output.
# Block b has round(filters * growth**b) filters.
SPACE_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "blocks": lambda x, w: v.integer(x, w, 1, 6),
    "convs_per_block": lambda x, w: v.integer(x, w, 1, 4),
    "filters": lambda x, w: v.integer(x, w, 1, 1024),
    "growth": lambda x, w: v.number(x, w, 0.25, 4.0),
    "kernel": lambda x, w: v.integer(x, w, 1, 11),
    "batchnorm": v.boolean,
    "pooling": lambda x, w: v.choice(x, w, POOL_TYPES),
    "head": lambda x, w: v.choice(x, w, HEADS),
    "dense_units": lambda x, w: v.integer(x, w, 0, 4096),  # 0: no hidden dense layer
    "dropout": lambda x, w: v.number(x, w, 0.0, 0.9),
}
# `augment_strength` scales every jitter of the recipe's `augment` (0 turns it off); the other keys are train keys.
STRENGTH = "augment_strength"
RECIPE_KEYS: dict[str, Callable[[Any, str], Any]] = {
    **{key: check for key, check in recipe.TRAIN_KEYS.items() if key != "augment"},
    STRENGTH: lambda x, w: v.number(x, w, 0.0, 4.0),
}
SETTING_KEYS = (
    "sampler",
    "seed",
    "population",
    "trials",
    "minutes",
    "objectives",
    "constraints",
    "pruner",
    "min_epochs",
    "finalists",
    "heartbeat_seconds",
    "space",
    "recipe",
)
# What a study is: a run with other values of these is another study; the others (the budget, the finalists'
# count, the heartbeat) can change between runs of one study.
STUDY_KEYS = ("sampler", "seed", "population", "objectives", "constraints", "pruner", "min_epochs", "space", "recipe")


@dataclass(frozen=True)
class Dimension:
    """One searched or fixed key: `kind` is fixed, int, float or choices."""

    name: str
    kind: str
    value: Any = None  # fixed
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def sample(self, trial: Any) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choices":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class SearchSettings:
    """`search:` (with its `per_dataset.<dataset>` values) as one dataset's search uses it."""

    dataset: str
    sampler: str
    seed: int
    population: int
    trials: int  # the study's total over every worker and run: a run stops when the study has this many
    minutes: float | None  # this run's wall-clock budget
    objectives: tuple[str, ...]  # val_accuracy, then the costs to minimize
    constraints: dict[str, float | None]  # cost -> maximum
    pruner: str
    min_epochs: int
    finalists: int
    heartbeat_seconds: int
    space: dict[str, Dimension]
    recipe: dict[str, Dimension]
    raw: dict[str, Any]  # the merged block as written, for the study's fingerprint and the report

    @property
    def costs(self) -> tuple[str, ...]:
        return self.objectives[1:]

    def study_values(self) -> dict[str, Any]:
        return {key: self.raw[key] for key in STUDY_KEYS}

    def measured_costs(self) -> tuple[str, ...]:
        """The costs a trial measures: its objectives' and its constraints'."""
        return tuple(cost for cost in COSTS if cost in self.costs or self.constraints.get(cost) is not None)


def parse_search(value: Any, where: str = "search") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Check the `search:` block as written: (its keys, its per_dataset blocks), each checked whole or, per
    dataset, as partial overrides; `settings_for` merges them."""
    block = v.keys(value, where, required=SETTING_KEYS, optional=(recipe.PER_DATASET,))
    base = {key: block[key] for key in SETTING_KEYS}
    _check(base, where, partial=False)
    per_dataset = {}
    for dataset, overrides in v.mapping(block.get(recipe.PER_DATASET) or {}, v.join(where, recipe.PER_DATASET)).items():
        at = v.join(v.join(where, recipe.PER_DATASET), dataset)
        _check(v.keys(overrides, at, optional=SETTING_KEYS), at, partial=True)
        per_dataset[dataset] = dict(overrides)
        _check(_merged(base, per_dataset[dataset]), at, partial=False)
    return base, per_dataset


def settings_for(base: dict[str, Any], per_dataset: dict[str, dict[str, Any]], dataset: str) -> SearchSettings:
    raw = _merged(base, per_dataset.get(dataset, {}))
    where = "search" if dataset not in per_dataset else f"search.per_dataset.{dataset}"
    return SearchSettings(
        dataset=dataset,
        sampler=raw["sampler"],
        seed=raw["seed"],
        population=raw["population"],
        trials=raw["trials"],
        minutes=raw["minutes"],
        objectives=tuple(raw["objectives"]),
        constraints={cost: raw["constraints"].get(cost) for cost in COSTS},
        pruner=raw["pruner"],
        min_epochs=raw["min_epochs"],
        finalists=raw["finalists"],
        heartbeat_seconds=raw["heartbeat_seconds"],
        space={k: _dimension(k, raw["space"][k], f"{where}.space.{k}", SPACE_KEYS[k]) for k in SPACE_KEYS},
        recipe={
            k: _dimension(k, x, f"{where}.recipe.{k}", RECIPE_KEYS[k])
            for k, x in raw["recipe"].items()
            if k != "augment"
        },
        raw=raw,
    )


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A dataset's values over the shared ones; constraints, space and recipe merge key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = {**base[key], **value} if key in ("constraints", "space", "recipe") else value
    return merged


def _check(block: dict[str, Any], where: str, partial: bool) -> None:
    checks: dict[str, Callable[[Any, str], Any]] = {
        "sampler": lambda x, w: v.choice(x, w, SAMPLERS),
        "seed": lambda x, w: v.integer(x, w, 0, 2**31 - 1),
        "population": lambda x, w: v.integer(x, w, 2),
        "trials": lambda x, w: v.integer(x, w, 1),
        "minutes": lambda x, w: None if x is None else v.number(x, w, 0.0, 100_000.0, low_open=True),
        "objectives": _objectives,
        "constraints": _constraints,
        "pruner": lambda x, w: v.choice(x, w, PRUNERS),
        "min_epochs": lambda x, w: v.integer(x, w, 1),
        "finalists": lambda x, w: v.integer(x, w, 1, 20),
        "heartbeat_seconds": lambda x, w: v.integer(x, w, 1, 3600),
        "space": lambda x, w: _dimensions(x, w, SPACE_KEYS, required=not partial),
        "recipe": _recipe,
    }
    for key, value in block.items():
        checks[key](value, v.join(where, key))


def _objectives(value: Any, where: str) -> None:
    names = v.string_list(value, where, (ACCURACY, *COSTS))
    if not names or names[0] != ACCURACY or len(names) > 3 or ACCURACY in names[1:]:
        raise v.fail(where, f"must be [{ACCURACY}] followed by one or two of {', '.join(COSTS)}", value)


def _constraints(value: Any, where: str) -> None:
    block = v.keys(value, where, optional=COSTS)
    for cost, maximum in block.items():
        if maximum is not None:
            v.number(maximum, v.join(where, cost), 0.0, float("inf"), low_open=True)


def _recipe(value: Any, where: str) -> None:
    block = v.keys(value, where, optional=(*RECIPE_KEYS, "augment"))
    _dimensions({k: x for k, x in block.items() if k != "augment"}, where, RECIPE_KEYS, required=False)
    if "augment" in block:
        recipe.parse_train({"augment": block["augment"]}, where, partial=True)


def _dimensions(value: Any, where: str, schema: dict[str, Callable[[Any, str], Any]], required: bool) -> None:
    block = v.keys(value, where, required=schema if required else (), optional=() if required else schema)
    for key, spec in block.items():
        _dimension(key, spec, v.join(where, key), schema[key])


def _dimension(name: str, spec: Any, where: str, check: Callable[[Any, str], Any]) -> Dimension:
    """One key of the space as written (see the module's docstring), its values checked as the key's own."""
    if isinstance(spec, list):
        if len(spec) != 2:
            raise v.fail(where, "must be [low, high] (a range), {choices: [...]} or a plain value", spec)
        spec = {"low": spec[0], "high": spec[1]}
    if not isinstance(spec, dict):
        return Dimension(name, "fixed", value=check(spec, where))
    if "choices" in spec:
        v.keys(spec, where, required=("choices",))
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise v.fail(v.join(where, "choices"), "must be a non-empty list of values", choices)
        return Dimension(
            name, "choices", choices=tuple(check(c, v.join(where, f"choices.{i}")) for i, c in enumerate(choices))
        )
    block = v.keys(spec, where, required=("low", "high"), optional=("log", "step"))
    low, high = check(block["low"], v.join(where, "low")), check(block["high"], v.join(where, "high"))
    if isinstance(low, bool) or not isinstance(low, int | float) or not isinstance(high, int | float):
        raise v.fail(where, "takes a range of numbers only; write {choices: [...]} for other values", spec)
    if high <= low:
        raise v.fail(where, f"must have low < high, got low {low} and high {high}", spec)
    log = v.boolean(block.get("log", False), v.join(where, "log"))
    if log and low <= 0:
        raise v.fail(v.join(where, "low"), "must be above 0 on a log scale (log: true)", low)
    step = None
    if block.get("step") is not None:
        step = v.number(block["step"], v.join(where, "step"), 0.0, high - low, low_open=True)
        if log:
            raise v.fail(v.join(where, "step"), "cannot go with log: true (Optuna samples either); drop one", step)
    is_int = isinstance(low, int) and isinstance(high, int) and (step is None or float(step).is_integer())
    return Dimension(name, "int" if is_int else "float", low=low, high=high, log=log, step=step)


@dataclass(frozen=True)
class Candidate:
    """A trial's design (a `models:` entry of the layer language) and the recipe keys it trains with."""

    choices: dict[str, Any]  # every dimension's value, fixed ones too
    layers: list[dict[str, Any]]
    recipe: dict[str, Any]  # a partial train block over the dataset's recipe

    def design_block(self) -> dict[str, Any]:
        return {"train": self.recipe, "layers": self.layers}


def sample(settings: SearchSettings, trial: Any, base_augment: dict[str, Any]) -> Candidate:
    """The candidate a trial's choices make. `base_augment`: the jitter `augment_strength` scales (the
    search recipe's `augment`, over the dataset's recipe)."""
    space = {name: dimension.sample(trial) for name, dimension in settings.space.items()}
    chosen = {name: dimension.sample(trial) for name, dimension in settings.recipe.items()}
    train = {key: value for key, value in chosen.items() if key != STRENGTH}
    if STRENGTH in chosen:
        strength = chosen[STRENGTH]
        train["augment"] = {
            key: (value if isinstance(value, bool) else round(value * strength, 4))
            for key, value in base_augment.items()
        }
    elif settings.raw["recipe"].get("augment"):
        train["augment"] = dict(settings.raw["recipe"]["augment"])
    return Candidate({**space, **chosen}, layers_of(space), train)


def layers_of(space: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of the design family (see SPACE_KEYS) with these choices."""
    layers: list[dict[str, Any]] = []
    conv = {
        "type": "conv",
        "kernel": space["kernel"],
        "padding": "same",
        "activation": "relu",
        "initializer": "he_normal",
    }
    for block in range(space["blocks"]):
        filters = max(1, int(round(space["filters"] * space["growth"] ** block)))
        for _ in range(space["convs_per_block"]):
            layers.append({**conv, "filters": filters})
            if space["batchnorm"]:
                layers.append({"type": "batchnorm"})
        if block < space["blocks"] - 1 or space["head"] == "flatten":
            layers.append({"type": space["pooling"], "pool": 2})
    layers.append({"type": space["head"]})
    if space["dropout"] > 0:
        layers.append({"type": "dropout", "rate": round(float(space["dropout"]), 4)})
    if space["dense_units"]:
        layers.append(
            {"type": "dense", "units": space["dense_units"], "activation": "relu", "initializer": "he_normal"}
        )
    layers.append({"type": "dense", "units": "classes", "activation": "softmax"})
    return layers


def violation(cost: float, maximum: float | None) -> float:
    """How far `cost` is over `maximum`, as a fraction of it (<= 0: within it); Optuna's constraint form."""
    if maximum is None:
        return 0.0
    return (cost - maximum) / maximum if math.isfinite(cost) else 1.0
