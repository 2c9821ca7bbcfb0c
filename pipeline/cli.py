"""The one way in: `python -m pipeline <command> [ARGS]` runs every stage and every tool.

A command is the module of that name in pipeline/stages/ or pipeline/tools/. It declares:
- `ARGUMENTS`: its arguments, each a name (`"dataset"`, `"--seed"`) or a name and argparse's settings
  (`("paths", {"nargs": "+"})`); or, for subcommands, `add_arguments(parser)`;
- `PARAMS = False` if it does not read params.yaml; `TRACKED` (a stage logs to MLflow unless it says
  False; a tool does not unless it says True); `WITH_KERAS = True` if it logs a model;
- `main(args, params)`, returning None or its exit status.

Before `main` runs, params.yaml is loaded and validated whole (designs included), a `dataset` and a
`design` argument are checked against it, a tracking server is checked and the tracking worker
started, so MLflow loads while the command imports what it needs (TensorFlow inside `main`).
The error policy: an error the user can fix (`UserError`, a tracking failure) prints one line,
`error: <file or key>: <what is wrong>; <what to do>`, and exits with status 2; anything else is a
crash and keeps its traceback and status 1.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from pipeline import stages, tools, tracking
from pipeline.config import Params, load_params
from pipeline.core.errors import UserError
from pipeline.core.process import exit_now
from pipeline.core.progress import setup_logging

USER_ERROR_STATUS = 2
# Errors a user can fix; the tracking worker's failure is one (its message says which store to check).
USER_ERRORS: tuple[type[Exception], ...] = (UserError, tracking.TrackingError)
COMMAND_PACKAGES = (stages, tools)

# An argument: its name, or its name and argparse's settings for it.
Argument = str | tuple[str, dict[str, Any]]


def commands() -> dict[str, str]:
    """Every command's name and module, found without importing them."""
    found = {}
    for package in COMMAND_PACKAGES:
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                found.setdefault(module.name, f"{package.__name__}.{module.name}")
    return found


def main(argv: Sequence[str] | None = None) -> NoReturn:
    exit_now(run(sys.argv[1:] if argv is None else argv))


def run(argv: Sequence[str]) -> int:
    """Run the command `argv` names; returns its exit status (2 after printing a user error)."""
    available = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(available), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else USER_ERROR_STATUS
    if argv[0] not in available:
        print(
            f"error: {argv[0]}: not a command; the commands are {', '.join(sorted(available))} "
            f"(python -m pipeline <command> --help)",
            file=sys.stderr,
        )
        return USER_ERROR_STATUS
    module = importlib.import_module(available[argv[0]])
    args = _parser(argv[0], module).parse_args(argv[1:])
    try:
        setup_logging()
        params = load_params() if getattr(module, "PARAMS", True) else None
        if params is not None:
            _check_arguments(params, args, getattr(module, "DESIGN_ALIASES", ()))
        if getattr(module, "TRACKED", module.__name__.startswith(f"{stages.__name__}.")):
            tracking.check_server()  # a server that is down stops the command now, not after its work
            tracking.warm_up(getattr(module, "WITH_KERAS", False))
        status = module.main(args, params)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_STATUS
    return status or 0


def _check_arguments(params: Params, args: argparse.Namespace, aliases: tuple[str, ...] = ()) -> None:
    """A `dataset` and a `design` argument must name what params.yaml declares, and fit each other; a command's
    DESIGN_ALIASES (predict's `champion`) name a design it resolves itself."""
    dataset, design = getattr(args, "dataset", None), getattr(args, "design", None)
    if dataset is not None:
        params.dataset(dataset)
    if design is not None and design not in aliases:
        params.design(design)
        if dataset is not None:
            params.check_design(design, dataset)  # also when the pair is not in `experiments`


def _usage(available: dict[str, str]) -> str:
    lines = ["usage: python -m pipeline <command> [ARGS]   (python -m pipeline <command> --help)", ""]
    for package in COMMAND_PACKAGES:
        lines.append(f"{package.__name__.split('.')[-1]}:")
        lines += [
            f"  {name}" for name, module in sorted(available.items()) if module.startswith(f"{package.__name__}.")
        ]
    return "\n".join(lines)


def _parser(name: str, module: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline {name}", description=(module.__doc__ or name).strip().splitlines()[0]
    )
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    for argument in getattr(module, "ARGUMENTS", ()):
        name, settings = argument if isinstance(argument, tuple) else (argument, {})
        if name == "--seed":
            parser.add_argument(name, type=int, help="training seed (default: the first of experiments.seeds)")
        else:
            parser.add_argument(name, **settings)
    return parser
