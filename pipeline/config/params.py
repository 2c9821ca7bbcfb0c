"""params.yaml -> validated, typed configuration.

Every stage starts with `load_params()` (through `pipeline.cli`), so a wrong key, type or
value fails before any work starts, with an error that names the exact key, the value and
what was expected. Unknown keys are errors: a typo must not be silently ignored. Designs are
checked too: every student design against the course rule, and every design in
`experiments.models` against the input shape of every dataset in `experiments.datasets`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import datasets, designs, search
from pipeline.core import validate as v
from pipeline.core.validate import ConfigError
from pipeline.training import recipe

PARAMS_FILE = "params.yaml"
NORMALIZE_MODES = ("unit", "lecun", "standardize")
EQUALIZERS = ("none", "histogram", "clahe")  # pipeline/portable/preprocess.py
SEED_MAX = 2**31 - 1


@dataclass(frozen=True)
class DownloadParams:
    mirror: str | None  # folder or URL with one subfolder per dataset key
    accept_local_repacks: bool  # see pipeline/stages/download.py: local copies verified by their own MD5SUMS
    timeout_seconds: float


@dataclass(frozen=True)
class DatasetParams:
    key: str
    val_fraction: float
    source: str | None  # a folder holding this dataset's files, tried first
    options: dict[str, Any]  # dataset-specific options (see each dataset module)


@dataclass(frozen=True)
class NormalizeParams:
    mode: str
    pad_to: int | None
    grayscale: bool
    equalize: str  # none | histogram | clahe (pipeline/portable/preprocess.py)

    def describe(self) -> str:
        """The preprocessing in a few words, for reports."""
        steps = (
            []
            if self.equalize == "none"
            else [{"clahe": "CLAHE", "histogram": "histogram equalization"}[self.equalize]]
        )
        steps += ["grayscale"] if self.grayscale else []
        return ", ".join(steps + [f"{self.mode} scaling"])


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    sample_images: int


@dataclass(frozen=True)
class RobustnessParams:
    images: int | None  # test images in the corruption benchmark, drawn with `seed`; None: every test image


@dataclass(frozen=True)
class Params:
    seed: int
    download: DownloadParams
    datasets: dict[str, DatasetParams]
    normalize: NormalizeParams  # the defaults; normalize_for() applies a dataset's own overrides
    normalize_overrides: dict[str, dict[str, Any]]
    train: recipe.TrainSettings  # the shared block; train_settings() gives a design's recipe on a dataset
    train_per_dataset: dict[str, dict[str, Any]]  # train.per_dataset.<dataset>: partial train blocks
    models: dict[str, designs.Design]
    evaluate: EvaluateParams
    robustness: RobustnessParams
    search: tuple[dict[str, Any], dict[str, dict[str, Any]]]  # `search:` checked, and its per_dataset blocks
    experiment_datasets: tuple[str, ...]
    experiment_models: tuple[str, ...]
    experiment_seeds: tuple[int, ...]  # training seeds; `seed` above is the data split's
    experiment_robustness: bool  # run the corruption benchmark (stages corrupt and robustness)
    experiment_search: bool  # run the design search (stage search)
    raw: dict[str, Any]  # the file as parsed, for logging

    def dataset(self, key: str) -> DatasetParams:
        if key not in datasets.REGISTRY:
            raise ConfigError(f"{key}: unknown dataset; known datasets: {', '.join(datasets.REGISTRY)}")
        if key not in self.datasets:
            raise ConfigError(f"datasets.{key}: missing; add a block for it to {PARAMS_FILE}")
        return self.datasets[key]

    def normalize_for(self, dataset: str) -> NormalizeParams:
        """`normalize:` with `normalize.per_dataset.<dataset>` applied."""
        return NormalizeParams(**{**self.normalize.__dict__, **self.normalize_overrides.get(dataset, {})})

    def design(self, name: str) -> designs.Design:
        if name not in self.models:
            raise ConfigError(f"models.{name}: missing; known designs: {', '.join(self.models)}")
        return self.models[name]

    def train_settings(self, name: str, dataset: str) -> recipe.TrainSettings:
        """Design `name`'s recipe on `dataset`: the shared `train:` block, then its
        `per_dataset.<dataset>` values, then the design's own `train:` block, then that block's
        `per_dataset.<dataset>` values (the more specific wins)."""
        return recipe.merged_recipe(self.train, self.train_per_dataset, self.design(name), dataset)

    def dataset_recipe(self, dataset: str) -> recipe.TrainSettings:
        """The shared `train:` block with its `per_dataset.<dataset>` values: what a search's trials start from."""
        return self.train.merged(self.train_per_dataset.get(dataset, {}))

    def search_settings(self, dataset: str) -> search.SearchSettings:
        """`search:` with `search.per_dataset.<dataset>` applied: the search of `dataset`."""
        return search.settings_for(*self.search, dataset)

    def input_shape(self, key: str) -> tuple[int, int, int]:
        """(height, width, channels) of the images the models of dataset `key` get: the dataset's
        images as split writes them, then normalize's grayscale and pad_to (see pipeline/stages/normalize.py)."""
        height, width, channels = datasets.REGISTRY[key].image_shape(self.dataset(key).options)
        normalize = self.normalize_for(key)
        if normalize.grayscale:
            channels = 1
        if normalize.pad_to is not None:
            height, width = max(height, normalize.pad_to), max(width, normalize.pad_to)
        return height, width, channels

    def recipe(self, name: str, dataset: str) -> str:
        """How design `name` is trained on `dataset`, preprocessing included, in one line (compare's reports)."""
        return f"{self.normalize_for(dataset).describe()}; {self.train_settings(name, dataset).describe()}"

    def check_design(self, name: str, dataset: str) -> None:
        """Refuse design `name` if the images of `dataset` cannot go through it (see designs.check_shapes)."""
        designs.check_shapes(
            self.design(name), self.input_shape(dataset), datasets.REGISTRY[dataset].num_classes, dataset
        )

    def run_seed(self, seed: int | None) -> int:
        """The training seed a command means: the one given, else the first of experiments.seeds."""
        return self.experiment_seeds[0] if seed is None else v.integer(seed, "--seed", 0, SEED_MAX)


def load_params(path: str | os.PathLike[str] = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root, where params.yaml lives") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(path, text, error)) from None
    try:
        return parse_params(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


# Deeper than any params.yaml needs (its deepest key has 6 levels), and far from the nesting at which
# PyYAML's recursive composer raises RecursionError.
MAX_YAML_DEPTH = 50


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, with every malformed input a YAMLError that names its line: too deep a nesting,
    and what PyYAML's constructors let out on a value they cannot make: ValueError (a date `2024-13-45`,
    an int of 5,000 digits), IndexError (`!!int ''`), KeyError (`!!bool maybe`), AttributeError (`!!timestamp x`)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, LookupError, AttributeError, OverflowError) as error:
            kind = node.tag.rsplit(":", 1)[-1]
            raise _ValueProblem(None, None, f"{v.shown(node.value)} is no {kind}: {error}", node.start_mark) from None


class _ValueProblem(yaml.constructor.ConstructorError):
    """A scalar whose tag (written, or implied by its look: `2024-01-01` is a date) its text does not fit."""


def _yaml_problem(path: Path, text: str, error: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: where it is (PyYAML's own message takes five), and what is wrong."""
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow: no mark, fields of its own
        line = text.count("\n", 0, error.position) + 1
        character = f" (#x{error.character:04x})" if isinstance(error.character, int) else ""
        return f"{path} line {line}: not valid YAML ({error.reason}{character}); remove that character"
    mark = getattr(error, "context_mark", None) or getattr(error, "problem_mark", None)
    where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
    problem = ", ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
    fix = "fix the value there" if isinstance(error, _ValueProblem) else "fix the syntax there"
    return f"{where}: not valid YAML ({' '.join((problem or str(error)).split())}); {fix}"


def parse_params(raw: Any) -> Params:
    top = v.keys(
        raw,
        "",
        required=(
            "seed",
            "download",
            "datasets",
            "normalize",
            "train",
            "models",
            "evaluate",
            "robustness",
            "search",
            "experiments",
        ),
    )
    seed = v.integer(top["seed"], "seed", 0, SEED_MAX)

    block = v.keys(top["download"], "download", required=("mirror", "accept_local_repacks", "timeout_seconds"))
    download = DownloadParams(
        mirror=v.optional_text(block["mirror"], "download.mirror"),
        accept_local_repacks=v.boolean(block["accept_local_repacks"], "download.accept_local_repacks"),
        timeout_seconds=v.number(block["timeout_seconds"], "download.timeout_seconds", 0, 3600, low_open=True),
    )

    dataset_blocks = v.mapping(top["datasets"], "datasets")
    parsed_datasets = {key: _parse_dataset(key, value) for key, value in dataset_blocks.items()}

    block = v.keys(top["normalize"], "normalize", required=NORMALIZE_KEYS, optional=("per_dataset",))
    normalize = NormalizeParams(**_parse_normalize(block, "normalize"))
    overrides = {}
    per_dataset = v.mapping(block.get("per_dataset") or {}, "normalize.per_dataset")
    _check_datasets_named(per_dataset, "normalize.per_dataset", parsed_datasets)
    for key, value in per_dataset.items():
        where = v.join("normalize.per_dataset", key)
        overrides[key] = _parse_normalize(v.keys(value, where, optional=NORMALIZE_KEYS), where)

    shared, train_per_dataset = recipe.parse_train(top["train"], "train")
    train = recipe.TrainSettings(**shared)
    _check_datasets_named(train_per_dataset, "train.per_dataset", parsed_datasets)

    model_blocks = v.mapping(top["models"], "models")
    if not model_blocks:
        raise v.fail("models", "must declare at least one design", {})
    models = {name: _parse_design(name, value) for name, value in model_blocks.items()}
    for design in models.values():
        _check_datasets_named(design.train_per_dataset, f"models.{design.name}.train.per_dataset", parsed_datasets)
        for dataset in parsed_datasets:
            recipe.check_recipe(design, recipe.merged_recipe(train, train_per_dataset, design, dataset), dataset)

    block = v.keys(top["evaluate"], "evaluate", required=("batch_size", "sample_images"))
    evaluate = EvaluateParams(
        batch_size=v.integer(block["batch_size"], "evaluate.batch_size", 1),
        sample_images=v.integer(block["sample_images"], "evaluate.sample_images", 1, 100),
    )

    block = v.keys(top["robustness"], "robustness", required=("images",))
    robustness = RobustnessParams(
        images=None if block["images"] is None else v.integer(block["images"], "robustness.images", 1)
    )

    search_block = search.parse_search(top["search"])
    _check_datasets_named(search_block[1], "search.per_dataset", parsed_datasets)

    block = v.keys(top["experiments"], "experiments", required=("datasets", "models", "seeds", "robustness", "search"))
    experiment_datasets = v.string_list(block["datasets"], "experiments.datasets", list(parsed_datasets))
    experiment_models = v.string_list(block["models"], "experiments.models", list(models))
    experiment_seeds = v.integer_list(block["seeds"], "experiments.seeds", 0, SEED_MAX)
    experiment_robustness = v.boolean(block["robustness"], "experiments.robustness")
    experiment_search = v.boolean(block["search"], "experiments.search")

    params = Params(
        seed,
        download,
        parsed_datasets,
        normalize,
        overrides,
        train,
        train_per_dataset,
        models,
        evaluate,
        robustness,
        search_block,
        experiment_datasets,
        experiment_models,
        experiment_seeds,
        experiment_robustness,
        experiment_search,
        raw,
    )
    for name, design in models.items():
        if design.student:
            designs.check_course_rule(designs.declared_layers(design), name)
    for dataset in experiment_datasets:
        for name in experiment_models:
            params.check_design(name, dataset)
    return params


def _parse_design(name: str, value: Any) -> designs.Design:
    """A design (pipeline.designs) with its own recipe block (`models.<name>.train`, pipeline.training.recipe)."""
    where = v.join("models", name)
    design = designs.parse_design(name, value, where)
    if "train" in value:
        overrides, per_dataset = recipe.parse_train(value["train"], v.join(where, "train"), partial=True)
        design = dataclasses.replace(design, train_overrides=overrides, train_per_dataset=per_dataset)
    return design


def _check_datasets_named(per_dataset: Any, where: str, declared: dict[str, DatasetParams]) -> None:
    """Each key of a `per_dataset` block must be a dataset this file declares."""
    for key in per_dataset:
        if key not in declared:
            raise ConfigError(
                f"{v.join(where, key)}: not a dataset of this file; declared datasets: {', '.join(declared)}"
            )


NORMALIZE_KEYS = ("mode", "pad_to", "grayscale", "equalize")
_NORMALIZE_CHECKS = {
    "mode": lambda x, w: v.choice(x, w, NORMALIZE_MODES),
    "pad_to": lambda x, w: None if x is None else v.integer(x, w, 1, 1024),
    "grayscale": v.boolean,
    "equalize": lambda x, w: v.choice(x, w, EQUALIZERS),
}


def _parse_normalize(block: Any, where: str) -> dict[str, Any]:
    return {key: _NORMALIZE_CHECKS[key](block[key], f"{where}.{key}") for key in block if key != "per_dataset"}


def _parse_dataset(key: str, value: Any) -> DatasetParams:
    where = v.join("datasets", key)
    if key not in datasets.REGISTRY:
        raise ConfigError(f"{where}: unknown dataset; known datasets: {', '.join(datasets.REGISTRY)}")
    spec = datasets.REGISTRY[key]
    block = v.keys(value, where, required=("val_fraction", "source"), optional=spec.options)
    options = {
        name: (check(block[name], f"{where}.{name}") if name in block else default)
        for name, (check, default) in spec.options.items()
    }
    return DatasetParams(
        key=key,
        val_fraction=v.number(block["val_fraction"], f"{where}.val_fraction", 0.0, 1.0, low_open=True, high_open=True),
        source=v.optional_text(block["source"], f"{where}.source"),
        options=options,
    )
