"""Print a design's architecture report (markdown): per layer, its output shape, parameters, MACs,
activation memory and receptive field (pipeline/designs/report.py)."""

from __future__ import annotations

import argparse

from pipeline.config import Params

ARGUMENTS = ("dataset", "design", ("--batch-size", {"type": int, "help": "default: the design's train.batch_size"}))


def main(args: argparse.Namespace, params: Params) -> None:
    from pipeline.designs.keras_build import build_model
    from pipeline.designs.report import architecture_report, dataset_shape, format_report

    input_shape, num_classes = dataset_shape(params, args.dataset)
    model = build_model(params.design(args.design), input_shape, num_classes, params.seed)
    batch_size = args.batch_size or params.train_settings(args.design, args.dataset).batch_size
    print(format_report(architecture_report(model, batch_size)), end="")
