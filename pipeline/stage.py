"""The one way every stage starts: arguments, validated params, tracking, then the stage's work.

`python -m pipeline.<stage> ARGS` runs, at the top of the stage's module, before its own imports::

    if __name__ == "__main__":
        stage.enter(__spec__.name, __doc__, "dataset", "design")

`enter` parses the arguments (each positional named for what it is; an argument given as
`(name, argparse settings)` takes those, e.g. `("paths", {"nargs": "+"})`), loads params.yaml
(validated whole, designs included: see `pipeline.config`), checks the arguments against it
(a `design` against the stage's `dataset` too), starts the tracking worker so that MLflow
loads in parallel with what the stage imports next (TensorFlow, for train and evaluate), and
only then imports the stage's module and calls its `main(args, params)`.

An error the user can fix (`pipeline.errors.UserError`, or a tracking failure) is printed as
`error: <file or key>: <what is wrong>; <what to do>` on stderr, without a traceback, and the
stage exits with status 2; anything else is a crash and keeps its traceback and status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable, NoReturn, Sequence

from pipeline import exit_now, tracking
from pipeline.config import Params, load_params
from pipeline.errors import UserError
from pipeline.progress import setup_logging

USER_ERROR_STATUS = 2
# Errors a user can fix. The tracking worker's failure is one: the message says which store to
# check, or how to run without tracking.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, tracking.TrackingError)

# An argument: its name, or its name and argparse's settings for it.
Argument = str | tuple[str, dict[str, Any]]
# Positional arguments checked against params: each must name something params.yaml declares.
_CHECKS: dict[str, Callable[[Params, str], object]] = {
    "dataset": Params.dataset,
    "design": Params.design,
}


def enter(module: str, description: str, *arguments: Argument, with_keras: bool = False,
          tracked: bool = True) -> NoReturn:
    """Run stage `module` with the command line's arguments, then end the process with its status."""
    exit_now(run(module, sys.argv[1:], description, arguments, with_keras, tracked))


def run(module: str, argv: Sequence[str], description: str, arguments: Sequence[Argument] = (),
        with_keras: bool = False, tracked: bool = True) -> int:
    """Run stage `module`'s `main(args, params)`; returns 0, or 2 after printing a user error.

    `with_keras`: the stage logs a model, so the tracking worker loads Keras too (see tracking.warm_up).
    `tracked`: false for a command that logs nothing (pipeline.predict), which then starts no worker.
    """
    try:
        args = _parser(description, arguments).parse_args(argv)
        setup_logging()
        params = load_params()
        names = [argument[0] if isinstance(argument, tuple) else argument for argument in arguments]
        for name in names:
            if name in _CHECKS:
                _CHECKS[name](params, getattr(args, name))
        if "dataset" in names and "design" in names:
            params.check_design(args.design, args.dataset)  # also when the pair is not in `experiments`
        if tracked:
            tracking.check_server()  # a tracking server that is down stops the stage now, not after its work
            tracking.warm_up(with_keras)
        importlib.import_module(module).main(args, params)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_STATUS
    return 0


def _parser(description: str, arguments: Sequence[Argument]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    for argument in arguments:
        name, settings = argument if isinstance(argument, tuple) else (argument, {})
        if name == "--seed":
            parser.add_argument(name, type=int, help="training seed (default: the first of experiments.seeds)")
        else:
            parser.add_argument(name, **settings)
    return parser
