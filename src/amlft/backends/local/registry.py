"""The local model registry: MLflow tracking + model registry in a SQLite file under .amlft/.

Why MLflow rather than a folder of files: it is what Azure ML speaks too (an Azure ML
workspace is an MLflow tracking server), so the same lineage tags, metrics and
`models:/<name>/<version>` URIs work on both backends, and `mlflow ui` shows the run:

    mlflow ui --backend-store-uri sqlite:///.amlft/mlflow.db

The model is logged with the transformers flavor (task llm/v1/chat) from the merged
weights, so `mlflow models serve -m models:/<name>/<version>` can serve it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amlft.extras import needs_extra

EXPERIMENT = "amlft-local"


def tracking_uri(state: Path) -> str:
    return f"sqlite:///{Path(state).resolve() / 'mlflow.db'}"


def artifact_root(state: Path) -> Path:
    return Path(state).resolve() / "mlartifacts"


@contextlib.contextmanager
def _offline_quiet() -> Iterator[None]:
    """No hub look-ups (model cards, licenses) while logging a local model, and no MLflow or
    transformers chatter (their INFO lines and progress bars would bury the lifecycle's output)."""
    import logging

    with needs_extra("local", purpose="The local MLflow model registry"):
        from transformers.utils import logging as hf_logging

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        mlflow_logger.setLevel(level)
        hf_logging.enable_progress_bar()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _client(state: Path) -> Any:
    with needs_extra("local", purpose="The local MLflow model registry"):
        import mlflow

    mlflow.set_tracking_uri(tracking_uri(state))
    mlflow.set_registry_uri(tracking_uri(state))
    return mlflow.MlflowClient()


def _experiment_id(client: Any, state: Path) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return str(exp.experiment_id)
    root = artifact_root(state)
    root.mkdir(parents=True, exist_ok=True)
    return str(client.create_experiment(EXPERIMENT, artifact_location=root.as_uri()))


def register_model(state: Path, *, name: str, model_dir: Path, run_name: str, params: dict[str, Any],
                   history: list[dict[str, Any]], metrics: dict[str, Any], tags: dict[str, str],
                   artifacts: list[Path], card_text: str) -> dict[str, Any]:
    """Log a tracking run (params, per-step loss, metrics, artifacts) and register its model.

    Returns {name, version, model_uri, mlflow_run_id, tracking_uri}.
    """
    with needs_extra("local", purpose="The local MLflow model registry"):
        import accelerate
        import mlflow
        import torch
        import transformers
        from huggingface_hub import ModelCard

    with _offline_quiet():
        client = _client(state)
        exp_id = _experiment_id(client, state)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            for h in history:
                mlflow.log_metric("loss", float(h["loss"]), step=int(h["step"]))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            for a in artifacts:
                if a and Path(a).exists():
                    mlflow.log_artifact(str(a))
            # A pipeline object, not the folder path: MLflow 3's from-folder path breaks on
            # transformers 5's lazy pipeline registry. The merged model is small enough to load.
            pipe = transformers.pipeline("text-generation", model=str(model_dir))
            info = mlflow.transformers.log_model(
                transformers_model=pipe, name="model", task="llm/v1/chat",
                model_card=ModelCard(card_text), registered_model_name=name,
                pip_requirements=[f"transformers=={transformers.__version__}", f"torch=={torch.__version__}",
                                  f"accelerate=={accelerate.__version__}"],
                await_registration_for=0, tags=tags,
            )
        version = info.registered_model_version
        if version is None:  # older MLflow: find the version this run created
            versions = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
            version = max(int(v.version) for v in versions)
        for k, v in tags.items():
            client.set_model_version_tag(name, str(version), k, v)
    return {"name": name, "version": str(version), "model_uri": f"models:/{name}/{version}",
            "mlflow_run_id": run.info.run_id, "tracking_uri": tracking_uri(state)}


def delete_model_version(state: Path, *, name: str, version: str) -> bool:
    """Idempotent: True if it was there and is now gone; the registered model goes with its last version."""
    with needs_extra("local", purpose="The local MLflow model registry"):
        from mlflow.exceptions import MlflowException

    client = _client(state)
    try:
        client.delete_model_version(name, version)
    except MlflowException:
        return False
    with contextlib.suppress(MlflowException):
        if not client.search_model_versions(f"name='{name}'"):
            client.delete_registered_model(name)
    return True


def model_version_exists(state: Path, *, name: str, version: str) -> bool:
    with needs_extra("local", purpose="The local MLflow model registry"):
        from mlflow.exceptions import MlflowException

    try:
        _client(state).get_model_version(name, version)
        return True
    except MlflowException:
        return False


def register_export(state: Path, *, name: str, export_dir: Path, tags: dict[str, str],
                    mlflow_run_id: str | None = None, run_name: str = "export") -> dict[str, Any]:
    """Log an exported model folder (ONNX Runtime GenAI) as artifacts and register it as a new version.

    The folder is not an MLflow flavor, so it is registered from its artifact location directly;
    `tags` (format, precision, execution provider, lineage) go on the version. It is logged into
    the fine-tune's MLflow run when there is one, so `mlflow ui` shows it beside the model.
    Returns {name, version, model_uri, artifact_uri, mlflow_run_id}.
    """
    with needs_extra("local", purpose="The local MLflow model registry"):
        from mlflow.exceptions import MlflowException

    artifact_path = f"exports/{export_dir.name}"
    with _offline_quiet():
        client = _client(state)
        if mlflow_run_id is None:
            run = client.create_run(_experiment_id(client, state), run_name=run_name, tags=tags)
            mlflow_run_id = run.info.run_id
            client.set_terminated(mlflow_run_id)
        client.log_artifacts(mlflow_run_id, str(export_dir), artifact_path=artifact_path)
        source = f"{client.get_run(mlflow_run_id).info.artifact_uri}/{artifact_path}"
        with contextlib.suppress(MlflowException):  # already registered by an earlier export
            client.create_registered_model(name, tags={"format": tags.get("format", ""), "created_by": "amlft"})
        mv = client.create_model_version(name, source=source, run_id=mlflow_run_id, tags=tags)
    return {"name": name, "version": str(mv.version), "model_uri": f"models:/{name}/{mv.version}",
            "artifact_uri": source, "mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri(state)}
