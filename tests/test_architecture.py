"""The architecture report: parameters, MACs, activation memory and receptive fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import pytest

from pipeline import cli, designs
from pipeline.designs import report as architecture
from pipeline.designs.keras_build import build_model
from pipeline.designs.report import architecture_report, format_report

ROOT = Path(__file__).resolve().parents[1]


def builtin(name: str, input_shape=(32, 32, 1), classes: int = 10) -> keras.Model:
    return build_model(designs.parse_design(name, {"builtin": name}, f"models.{name}"), input_shape, classes, seed=0)


def small_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)  # valid: 6x6x4
    x = keras.layers.MaxPooling2D(2, name="pool")(x)  # 3x3x4
    x = keras.layers.Conv2D(2, 5, strides=2, padding="same", name="strided")(x)  # 2x2x2
    x = keras.layers.Flatten(name="flat")(x)  # 8
    x = keras.layers.Dense(5, name="dense")(x)
    return keras.Model(inputs, x, name="small")


def test_macs_and_params_of_known_layers():
    rows = {row["name"]: row for row in architecture_report(small_model(), batch_size=2)["layers"]}
    # each of the 6*6*4 outputs of a 3x3 conv over 3 channels does 3*3*3 multiply-adds
    assert rows["conv"]["macs"] == 6 * 6 * 4 * (3 * 3 * 3) == 3888
    assert rows["conv"]["trainable_params"] == 3 * 3 * 3 * 4 + 4
    assert rows["pool"]["macs"] == 0
    assert rows["strided"]["output_shape"] == [2, 2, 2]
    assert rows["strided"]["macs"] == 2 * 2 * 2 * (5 * 5 * 4)
    assert rows["dense"]["macs"] == 8 * 5
    assert architecture_report(small_model(), 2)["totals"]["macs"] == 3888 + 800 + 40


def test_activation_memory_for_the_batch():
    report = architecture_report(small_model(), batch_size=2)
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["input"]["forward_bytes"] == 8 * 8 * 3 * 2 * 4  # float32
    assert rows["conv"]["forward_bytes"] == 6 * 6 * 4 * 2 * 4
    assert rows["flat"]["forward_bytes"] == 8 * 2 * 4 and rows["flat"]["backprop_bytes"] == 0  # a view
    totals = report["totals"]
    assert totals["forward_peak_bytes"] == (8 * 8 * 3 + 6 * 6 * 4) * 2 * 4  # input + conv output
    assert totals["training_activation_bytes"] == sum(r["backprop_bytes"] for r in report["layers"])
    assert (
        architecture_report(small_model(), batch_size=4)["totals"]["training_activation_bytes"]
        == 2 * totals["training_activation_bytes"]
    )


def test_receptive_field_of_lenet5_modern():
    rows = architecture_report(builtin("lenet5_modern"), 1)["layers"]
    fields = [(row["name"], row["receptive_field"], row["jump"]) for row in rows[:6]]
    assert fields == [
        ("input", [1, 1], [1, 1]),
        ("00_conv", [5, 5], [1, 1]),  # 5x5 kernel
        ("01_maxpool", [6, 6], [2, 2]),  # 5 + (2-1)*1
        ("02_conv", [14, 14], [2, 2]),  # 6 + (5-1)*2
        ("03_maxpool", [16, 16], [4, 4]),  # 14 + (2-1)*2
        ("04_flatten", None, None),  # the whole image
    ]
    assert architecture_report(builtin("lenet5_modern"), 1)["totals"]["receptive_field"] == 16


def test_lenet5_classic_report_matches_the_paper():
    report = architecture_report(builtin("lenet5_classic"), batch_size=1)
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["c3"]["macs"] == 10 * 10 * 1500  # only Table I's 60 connected 5x5 kernels
    assert rows["c1"]["macs"] == 28 * 28 * 6 * 25
    assert rows["c5"]["receptive_field"] == [32, 32]  # C5 sees the whole 32x32 input
    assert rows["output"]["non_trainable_params"] == 840 and rows["output"]["forward_bytes"] == 10 * 8  # float64
    totals = report["totals"]
    assert (totals["params"], totals["trainable_params"], totals["non_trainable_params"]) == (60_840, 60_000, 840)
    assert all(isinstance(value, int) for value in totals.values())  # loggable as MLflow metrics


def test_format_report_is_a_markdown_table():
    model = builtin("lenet5_classic")
    text = format_report(architecture_report(model, batch_size=128))
    assert text.startswith("### lenet5_classic: 60,840 parameters")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + (len(model.layers) - 1) + 1  # header, rule, input, layers, total
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| 3 | c3 | PartiallyConnectedConv2D | 10×10×16 | 1,516 | 0 | 150,000 |" in text


def test_dataset_shape_without_and_with_normalized_data(tmp_path, monkeypatch):
    from pipeline.config import load_params

    params = load_params(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert architecture.dataset_shape(params, "mnist") == ((32, 32, 1), 10)  # 28x28 padded to 32
    assert architecture.dataset_shape(params, "gtsrb") == ((32, 32, 3), 43)
    meta = tmp_path / "data" / "normalized" / "mnist" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"input_shape": [28, 28, 1], "class_names": list("0123456789")}))
    assert architecture.dataset_shape(params, "mnist") == ((28, 28, 1), 10)


def test_cli_prints_the_report(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert cli.run(["architecture", "mnist", "lenet5_modern", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### lenet5_modern: 82,826 parameters")
    assert "a batch of 32" in out


@pytest.mark.parametrize("name", ["cnn_homl", "lenet5_d2l"])
def test_report_params_agree_with_keras(name):
    model = builtin(name, (32, 32, 3), 43)
    assert architecture_report(model, 8)["totals"]["params"] == model.count_params()
