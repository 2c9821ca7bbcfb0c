"""MLflow: the store and its tags (store), what a stage calls (client), the worker process that logs
(worker), the MLflow model export (export), the spool and resync, and the tracking server.

A stage imports only the client (and the store): the worker runs as its own process, so its code,
the spool's and the server's change what MLflow holds, never a stage's DVC outputs.
May import: core, portable.
"""

from pipeline.tracking.client import (
    TrackingError,
    log_artifact,
    log_input,
    log_metrics,
    log_model,
    log_params,
    log_tags,
    log_text,
    promote,
    stage_run,
    warm_up,
)
from pipeline.tracking.store import TrackingServerError, check_server, server_problem

__all__ = [
    "TrackingError",
    "TrackingServerError",
    "check_server",
    "log_artifact",
    "log_input",
    "log_metrics",
    "log_model",
    "log_params",
    "log_tags",
    "log_text",
    "promote",
    "server_problem",
    "stage_run",
    "warm_up",
]
