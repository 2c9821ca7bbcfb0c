"""params.yaml -> typed config: every mistake fails before work starts, naming key, value and expectation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.core.validate import ConfigError
from pipeline.tracking.client import flatten
from tests.conftest import REPO
from tests.fuzzing import no_hang

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def edited(**changes: object) -> dict:
    """The shipped params with dotted keys replaced (value `...` deletes the key)."""
    raw = copy.deepcopy(SHIPPED)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[leaf]
        elif isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return raw


def test_shipped_params_are_valid_and_typed() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.seed == 42
    assert params.dataset("mnist").val_fraction == pytest.approx(0.1)
    assert params.dataset("gtsrb").options == {"image_size": 32, "crop_roi": True}
    assert params.normalize.mode in ("unit", "lecun", "standardize")
    assert set(params.experiment_models) <= set(params.models)
    assert params.design("student_a").student and not params.design("lenet5_modern").student
    assert params.experiment_seeds == (42,)


def test_a_command_trains_the_seed_given_else_the_first_configured_one() -> None:
    params = parse_params(edited(experiments__seeds=[7, 1]))
    assert params.run_seed(None) == 7 and params.run_seed(3) == 3
    assert params.seed == SHIPPED["seed"]  # the split's seed is another key
    with pytest.raises(ConfigError, match=r"--seed: must be an int from 0 to 2147483647, got -1"):
        params.run_seed(-1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": "42"}, "seed: must be an int from 0 to 2147483647, got '42'"),
        ({"seed": -1}, "seed: must be an int from 0 to 2147483647, got -1"),
        ({"train__epochs": 0}, "train.epochs: must be"),
        ({"train__learning_rate": "fast"}, "train.learning_rate: must be a number"),
        ({"train__optimizer": "adagrad"}, "train.optimizer: must be one of"),
        ({"train__epoch": 3}, "train.epoch: unknown key; allowed keys here: epochs"),
        (
            {"train__threads": 0},
            "train.threads: must be a positive int (TensorFlow's threads) or auto (cores / "
            "trainings side by side), got 0",
        ),
        ({"train__threads": True}, "train.threads: must be a positive int"),
        (
            {"models__student_gtsrb__train__threads": "max"},
            "models.student_gtsrb.train.threads: must be a positive int",
        ),
        ({"train__precision": "float16"}, "train.precision: must be one of float32, mixed_bfloat16, got 'float16'"),
        ({"normalize__mode": "minmax"}, "normalize.mode: must be one of unit, lecun, standardize, got 'minmax'"),
        ({"normalize__grayscale": "yes"}, "normalize.grayscale: must be true or false, got 'yes'"),
        (
            {"datasets__mnist__val_fraction": 1.0},
            "datasets.mnist.val_fraction: must be a number in (0.0, 1.0), got 1.0",
        ),
        ({"datasets__gtsrb__image_size": 4}, "datasets.gtsrb.image_size: must be an int from 8 to 256, got 4"),
        ({"datasets__mnist__crop_roi": True}, "datasets.mnist.crop_roi: unknown key"),
        ({"datasets__cifar10": {"val_fraction": 0.1, "source": None}}, "datasets.cifar10: unknown dataset"),
        ({"download__mirror": ...}, "download.mirror: missing; this key is required"),
        ({"experiments__models": ["lenet5_modern", "lenet6"]}, "experiments.models.1: must be one of"),
        ({"experiments__datasets": []}, "experiments.datasets: must be a non-empty list, got []"),
        ({"experiments__seeds": []}, "experiments.seeds: must be a non-empty list of ints, got []"),
        ({"experiments__seeds": 42}, "experiments.seeds: must be a non-empty list of ints, got 42"),
        ({"experiments__seeds": [1, "2"]}, "experiments.seeds.1: must be an int from 0 to 2147483647, got '2'"),
        (
            {"experiments__seeds": [1, 1]},
            "experiments.seeds: must not repeat an entry, but experiments.seeds.1 repeats experiments.seeds.0 (1), "
            "got [1, 1]",
        ),
        (
            {"experiments__seeds": [3, 1, 3]},
            "experiments.seeds: must not repeat an entry, but experiments.seeds.2 repeats experiments.seeds.0 (3)",
        ),
        (
            {"experiments__models": ["lenet5_modern", "lenet5_classic", "lenet5_modern"]},
            "experiments.models: must not repeat an entry, but experiments.models.2 repeats experiments.models.0 "
            "('lenet5_modern')",
        ),
        ({"experiments__seeds": ...}, "experiments.seeds: missing; this key is required"),
        ({"evaluate__sample_images": 0}, "evaluate.sample_images: must be an int from 1 to 100, got 0"),
        ({"colour": "red"}, "colour: unknown key"),
    ],
)
def test_mistakes_name_the_key_the_value_and_the_expectation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(edited(**changes))
    assert message in str(caught.value)


def test_design_mistakes_name_the_layer_key() -> None:
    layers = copy.deepcopy(SHIPPED["models"]["student_a"]["layers"])
    layers[3]["kernel"] = 0
    with pytest.raises(ConfigError, match=r"models\.student_a\.layers\.3\.kernel: .*got 0"):
        parse_params(edited(models__student_a__layers=layers))


def test_load_params_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrain: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == (
        f"{path} line 2: not valid YAML (while parsing a flow sequence, expected ',' or ']', "
        f"but got '<stream end>'); fix the syntax there"
    )  # one line, not PyYAML's five
    with pytest.raises(ConfigError, match="not found; run from the project root"):
        load_params(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump(edited(train__batch_size=0)))
    with pytest.raises(ConfigError, match=r"params.yaml: train.batch_size: must be a positive int, got 0"):
        load_params(path)


SHIPPED_TEXT = (REPO / "params.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "seed: " + "[" * 60 + "]" * 60,
            " line 1: not valid YAML (nested more than 50 levels deep); fix the syntax there",
        ),
        (
            SHIPPED_TEXT.replace("seed: 42", "seed: 2024-13-45"),
            " line 3: not valid YAML ('2024-13-45' is no timestamp: month must be in 1..12); fix the value there",
        ),
        (SHIPPED_TEXT.replace("seed: 42", "seed: !!int ''"), " line 3: not valid YAML ('' is no int: "),
        (SHIPPED_TEXT.replace("seed: 42", "seed: " + "9" * 5000), " line 3: not valid YAML ('99999"),
        ("seed: 42\nx: \x00", " line 2: not valid YAML (special characters are not allowed (#x0000)); remove that"),
    ],
)
def test_what_yaml_cannot_read_is_one_line_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    # Found by tests/test_properties_params.py: RecursionError, ValueError, IndexError, two lines.
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}{message}") and "\n" not in str(error.value)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"seed: 42\n\xff")
    with pytest.raises(ConfigError, match=r"params.yaml: not UTF-8 text \(invalid start byte at byte 9\); save it"):
        load_params(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train__learning_rate": float("nan")}, "train.learning_rate: must be a number in (0.0, 10.0], got nan"),
        (
            {"download__timeout_seconds": float("inf")},
            "download.timeout_seconds: must be a number in (0, 3600], got inf",
        ),
        (
            {"models__student_b__layers__1": {"type": "batchnorm", "epsilon": float("inf")}},
            "models.student_b.layers.1.epsilon: must be a finite number > 0.0, got inf",
        ),
    ],
)
def test_nan_and_infinity_are_no_setting(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(edited(**changes))
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["../student_b", "student b", "a.b", "-x", "x;rm", 7, ""])
def test_a_design_name_must_be_usable_as_a_folder_a_key_and_a_word(name: object) -> None:
    raw = edited()
    raw["models"][name] = raw["models"].pop("student_b")
    with pytest.raises(ConfigError, match=r"cannot name a design, which names a folder .*; rename it with letters"):
        parse_params(raw)


def test_a_key_that_is_not_plain_text_is_quoted_in_one_line() -> None:
    raw = edited()
    raw["se\ned"] = 42
    with pytest.raises(ConfigError, match=r"^'se\\ned': unknown key; allowed keys here: seed, download,"):
        parse_params(raw)


def test_a_value_is_shown_in_a_bounded_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(edited(seed=[list(range(1000))] * 1000))
    assert len(str(caught.value)) < 400 and str(caught.value).startswith("seed: must be an int")


def test_repeats_in_a_long_list_are_found_in_linear_time() -> None:
    with no_hang(10):  # items.index() per item made it quadratic: 2e10 comparisons here
        parse_params(edited(experiments__seeds=list(range(200_000))))


def test_design_train_overrides_merge_over_the_shared_block() -> None:
    params = parse_params(edited(models__lenet5_d2l={"builtin": "lenet5_d2l", "train": {"learning_rate": 0.003}}))
    assert params.train_settings("lenet5_d2l", "mnist").learning_rate == pytest.approx(0.003)
    assert params.train_settings("lenet5_d2l", "mnist").epochs == params.train.epochs
    assert params.train_settings("lenet5_modern", "mnist").learning_rate == params.train.learning_rate


def test_a_recipe_per_dataset_wins_over_the_general_one_and_the_design_over_the_shared_block() -> None:
    params = parse_params(
        edited(
            train__per_dataset={"gtsrb": {"epochs": 30, "augment": {"rotation": 10}}, "mnist": {"batch_size": 64}},
            models__lenet5_modern={"builtin": "lenet5_modern"},
            models__lenet5_d2l={
                "builtin": "lenet5_d2l",
                "train": {"epochs": 5, "learning_rate": 0.003, "per_dataset": {"gtsrb": {"learning_rate": 0.01}}},
            },
        )
    )
    gtsrb, mnist = params.train_settings("lenet5_d2l", "gtsrb"), params.train_settings("lenet5_d2l", "mnist")
    assert (gtsrb.epochs, gtsrb.learning_rate, gtsrb.augment.rotation, gtsrb.batch_size) == (5, 0.01, 10, 128)
    assert (mnist.epochs, mnist.learning_rate, mnist.augment.rotation, mnist.batch_size) == (5, 0.003, 0, 64)
    modern = params.train_settings("lenet5_modern", "gtsrb")  # no block of its own: the shared one, per dataset
    assert (modern.epochs, modern.learning_rate, modern.augment.rotation) == (30, 0.001, 10)
    assert params.train_settings("lenet5_modern", "fashion_mnist") == params.train


def test_per_dataset_recipes_are_checked_like_the_rest() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^train.per_dataset.cifar10: not a dataset of this file; declared "
        r"datasets: mnist, fashion_mnist, gtsrb$",
    ):
        parse_params(edited(train__per_dataset={"cifar10": {"epochs": 3}}))
    with pytest.raises(
        ConfigError,
        match=r"^models.lenet5_d2l.train.per_dataset.gtsrb.epochs: must be a positive "
        r"int, got 0$",
    ):
        parse_params(
            edited(models__lenet5_d2l={"builtin": "lenet5_d2l", "train": {"per_dataset": {"gtsrb": {"epochs": 0}}}})
        )
    with pytest.raises(ConfigError, match=r"^train.per_dataset.mnist.per_dataset: unknown key"):
        parse_params(edited(train__per_dataset={"mnist": {"per_dataset": {}}}))
    with pytest.raises(
        ConfigError,
        match=r"^models.lenet5_d2l.train.per_dataset.mnist: warmup_epochs \(4\) must "
        r"be fewer than epochs \(3\)",
    ):
        parse_params(
            edited(
                models__lenet5_d2l={
                    "builtin": "lenet5_d2l",
                    "train": {"schedule": "cosine", "warmup_epochs": 4, "per_dataset": {"mnist": {"epochs": 3}}},
                }
            )
        )


def test_flatten_gives_the_dotted_keys_dvc_and_mlflow_show() -> None:
    flat = flatten({"train": {"epochs": 3}, "models": {"a": {"layers": [{"type": "conv"}]}}})
    assert flat == {"train.epochs": 3, "models.a.layers.0.type": "conv"}
