"""A trained model folder as an MLflow model that takes raw uint8 pixels (pipeline/portable)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

from pipeline import portable
from pipeline.tracking.store import mlflow_api

SHIPPED_PACKAGE = "pipeline_model"


def log_model_folder(model_dir: str, metrics: dict[str, float]) -> None:
    """The trained model folder as an MLflow model that takes raw uint8 pixels: pipeline/portable/inference.py's
    Classifier (MLflow's loader-module workflow, no pickle), with the code it runs, the signature users
    call it with, the packages that load it, the class names, and its metrics.

    The signature and requirements are given rather than inferred: inferring them loads the model.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow = mlflow_api()
    folder = Path(model_dir)
    meta = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))["meta"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *meta["image_shape"]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, len(meta["class_names"])))]),
    )
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as work:
        data, code = Path(work, "trained_model"), Path(work, SHIPPED_PACKAGE)
        data.mkdir()
        code.mkdir()
        for name in ("model.keras", "preprocessing.json"):
            shutil.copy2(folder / name, data / name)
        for module in Path(portable.__file__).parent.glob("*.py"):  # the package whole: it imports nothing else
            shutil.copy2(module, code / module.name)
        warnings.filterwarnings("ignore", message=".*input example was not provided")  # the signature says it all
        logged = mlflow.pyfunc.log_model(
            name="model",
            loader_module=f"{SHIPPED_PACKAGE}.inference",
            data_path=str(data),
            code_paths=[str(code)],
            signature=signature,
            pip_requirements=_model_requirements(),
            metadata={"dataset": meta["dataset"], "class_names": meta["class_names"]},
        )
    mlflow.log_metrics(metrics, model_id=logged.model_id)


def _model_requirements() -> list[str]:
    """Keras on TensorFlow, NumPy and MLflow, at the versions that trained and logged the model."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(*distributions: str) -> str:
        for distribution in distributions:
            with contextlib.suppress(PackageNotFoundError):
                return version(distribution)
        raise PackageNotFoundError(distributions[0])

    return [
        f"mlflow=={mlflow_api().__version__}",
        f"keras=={installed('keras')}",
        f"tensorflow=={installed('tensorflow', 'tensorflow-cpu')}",
        f"numpy=={installed('numpy')}",
    ]
