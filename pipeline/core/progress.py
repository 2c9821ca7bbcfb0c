"""Progress bars and log lines that read well in a terminal and in a CI log.

In a terminal tqdm redraws one line; in a log that is not a TTY every redraw is a new
line, so there bars update at most every 15 s instead of flooding the log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm import tqdm


def is_tty() -> bool:
    return sys.stderr.isatty()


def bar(total: float | None = None, desc: str = "", unit: str = "it", **kwargs: Any) -> tqdm:
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "file": sys.stderr, "dynamic_ncols": True}
    if unit == "B":
        options.update(unit_scale=True, unit_divisor=1024)
    if not is_tty():
        options.update(mininterval=15, maxinterval=60, ncols=100)
    options.update(kwargs)
    return tqdm(**options)


def setup_logging() -> logging.Logger:
    """One format for every stage: time, stage logger name, message."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    # MLflow and friends are chatty at INFO; their warnings still show.
    for noisy in ("mlflow", "alembic", "urllib3", "git", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("pipeline")
