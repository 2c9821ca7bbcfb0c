"""`python -m pipeline adopt <dataset> [--trial N]`: add a search's finalists (search/<dataset>/finalists.yaml),
or one of its trials, to params.yaml as designs, and to experiments.models, so that `dvc repro` trains them
with experiments.seeds and compare tests them on the test split beside the shipped designs.

params.yaml is edited in place with its comments kept (ruamel.yaml's round trip), checked whole as every
stage checks it, and replaced only if the result is valid. A design already there with the same layers and
recipe is left as it is; one of that name with others is an error, never overwritten.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipeline.config import PARAMS_FILE, Params, parse_params
from pipeline.core import files, paths
from pipeline.core.errors import UserError

ARGUMENTS = ("dataset",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trial", type=int, help="adopt this trial of the search's report instead of the finalists")
    parser.add_argument(
        "--no-experiments", action="store_true", help="add the designs to models only, not to experiments.models"
    )


def main(args: argparse.Namespace, params: Params) -> int:
    out = paths.SearchPaths(args.dataset)
    found = _trial_design(out, args.dataset, args.trial) if args.trial is not None else _finalists(out)
    if not found:
        raise UserError(
            f"{out.finalists}: holds no finalists; run the search first (python -m pipeline search {args.dataset})"
        )
    added = adopt(Path(PARAMS_FILE), found, experiments=not args.no_experiments)
    for name in found:
        print(f"adopt: {name} {'added to' if name in added else 'already in'} {PARAMS_FILE}")
    if added:
        print("adopt: `dvc repro` trains and evaluates them with experiments.seeds; compare tests them")
    return 0


def _finalists(out: paths.SearchPaths) -> dict[str, Any]:
    if not out.finalists.is_file():
        raise UserError(f"{out.finalists}: not found; run the search first (python -m pipeline search {out.dataset})")
    return dict(YAML(typ="safe").load(out.finalists.read_text(encoding="utf-8")).get("models") or {})


def _trial_design(out: paths.SearchPaths, dataset: str, number: int) -> dict[str, Any]:
    if not out.json.is_file():
        raise UserError(f"{out.json}: not found; run the search first (python -m pipeline search {dataset})")
    rows = {row["number"]: row for row in files.read_json(out.json).get("trials", [])}
    row = rows.get(number)
    if row is None or not row.get("layers") or row["ended"] not in ("completed", "pruned"):
        trained = ", ".join(str(n) for n, r in rows.items() if r["ended"] in ("completed", "pruned")) or "none"
        raise UserError(f"{out.json}: trial {number} trained no design; trials that did: {trained}")
    return {f"search_{dataset}_t{number}": {"train": row["recipe"], "layers": row["layers"]}}


def adopt(path: Path, designs: dict[str, Any], experiments: bool = True) -> list[str]:
    """Add `designs` (name -> {train, layers}) to the params file at `path`; returns the names it added."""
    yaml = YAML()  # round trip: comments and layout stay
    yaml.width = 4096  # never wraps: a flow mapping params.yaml writes on one line stays on one
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own layout
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = yaml.load(path.read_text(encoding="utf-8"))
    models, added = document["models"], []
    for name, design in designs.items():
        if name in models:
            if _plain(models[name]) != _plain(design):
                raise UserError(
                    f"{path}: models.{name} exists with other layers or recipe; rename or remove it, then adopt again"
                )
            continue
        models[name] = _written(design)
        added.append(name)
        if experiments and name not in document["experiments"]["models"]:
            document["experiments"]["models"].append(name)
    text = io.StringIO()
    yaml.dump(document, text)
    parse_params(YAML(typ="safe").load(text.getvalue()))  # the file as the stages will read it, checked whole
    with files.atomic_file(path, "w") as handle:
        handle.write(text.getvalue())
    return added


def _plain(value: Any) -> Any:
    """Plain dicts, lists and numbers, for comparing what the file holds (ruamel's types) with a design."""
    return json.loads(json.dumps(value))


def _written(design: dict[str, Any]) -> CommentedMap:
    """A design as params.yaml writes one: a recipe key per line, a layer per line."""
    train = CommentedMap(design["train"])
    if isinstance(design["train"].get("augment"), dict):
        augment = CommentedMap(design["train"]["augment"])
        augment.fa.set_flow_style()
        train["augment"] = augment
    layers = CommentedSeq()
    for layer in design["layers"]:
        written = CommentedMap(layer)
        written.fa.set_flow_style()
        layers.append(written)
    return CommentedMap({"train": train, "layers": layers})
