"""The fine-tune pipeline job: inputs, parameter precedence, display name, DSL build, YAML export.

Parameter precedence (highest first): the profile's `finetune:` values, the model's
`model_specific_defaults` tag, then PROJECT_DEFAULTS (the reference notebook's values).
Everything is then coerced to the component's declared input types, because the
service accepts "True" for a "true"/"false" string input and fails hours later.
User keys that are not component inputs are errors (a typo would be silently ignored);
model-default keys that are not inputs (Phi-3 carries learning_rate_min/_max) are
dropped with a warning.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from amlft.errors import ConfigError
from amlft.extras import needs_extra

SNAPSHOT_VERSION = "0.0.82"

# The reference notebook's fine-tune settings (Phi-3 / ultrachat_200k).
PROJECT_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
    "apply_lora": "true",
    "apply_deepspeed": "true",
    "deepspeed_stage": "2",
}

# Inputs the backend sets from other profile sections; a `finetune:` key for them is an error.
RESERVED: dict[str, str] = {
    "mlflow_model_path": "model.name/version/label",
    "pytorch_model_path": "model.name",
    "huggingface_id": "model.name",
    "compute_model_import": "compute.cluster",
    "compute_preprocess": "compute.cluster",
    "compute_finetune": "compute.cluster",
    "compute_model_evaluation": "compute.cluster",
    "train_file_path": "data.*",
    "validation_file_path": "data.validation_split",
    "test_file_path": "data.*",
    "train_mltable_path": "data.*",
    "validation_mltable_path": "data.*",
    "test_mltable_path": "data.*",
    "number_of_gpu_to_use_finetuning": "compute.gpus_per_node",
    "num_nodes_finetune": "compute.num_nodes",
}
ASSET_TYPES = {"uri_file", "uri_folder", "mlflow_model", "custom_model", "mltable"}


@lru_cache(maxsize=4)
def load_snapshot(version: str = SNAPSHOT_VERSION) -> dict[str, Any]:
    """The pinned interface of azureml/chat_completion_pipeline, for offline validation."""
    from amlft.resources import resource_path

    path = resource_path("components", f"chat_completion_pipeline-{version}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def inputs_from_component(component: Any) -> dict[str, dict[str, Any]]:
    """The live component's inputs in the snapshot's shape (type/optional/default/enum)."""
    out: dict[str, dict[str, Any]] = {}
    for name, inp in (getattr(component, "inputs", None) or {}).items():
        spec: dict[str, Any] = {"type": str(getattr(inp, "type", "string") or "string"),
                                "optional": bool(getattr(inp, "optional", False))}
        default = getattr(inp, "default", None)
        if default is not None:
            spec["default"] = default
        enum = getattr(inp, "enum", None)
        if enum:
            spec["enum"] = [str(e) for e in enum]
        out[name] = spec
    return out


def is_flag(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "string" and sorted(str(e) for e in spec.get("enum") or []) == ["false", "true"]


def coerce(name: str, value: Any, spec: dict[str, Any]) -> Any:
    """One value in the type the component declares; raises ValueError saying what is wrong."""
    typ = spec.get("type", "string")
    if is_flag(spec):
        if isinstance(value, bool):
            return "true" if value else "false"
        text = str(value).strip().lower()
        if text in ("true", "false"):
            return text
        raise ValueError(f"{name} must be true or false (got {value!r})")
    if typ == "integer":
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer (got {value!r})")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer (got {value!r})") from None
        if f != int(f):
            raise ValueError(f"{name} must be a whole number (got {value!r})")
        out: Any = int(f)
    elif typ == "number":
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number (got {value!r})")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number (got {value!r})") from None
    elif typ == "string":
        out = ("true" if value else "false") if isinstance(value, bool) else str(value)
    else:
        raise ValueError(f"{name} is a {typ} input; set it through the profile section that owns it")
    enum = spec.get("enum")
    if enum and str(out) not in [str(e) for e in enum]:
        raise ValueError(f"{name} must be one of {', '.join(map(str, enum))} (got {value!r})")
    if "min" in spec and isinstance(out, (int, float)) and out < spec["min"]:
        raise ValueError(f"{name} must be >= {spec['min']} (got {value!r})")
    return out


@dataclass
class MergedParameters:
    values: dict[str, Any]
    sources: dict[str, str]  # input -> "profile" | "model default" | "project default"
    dropped: list[str] = field(default_factory=list)  # model-default keys that are not inputs
    errors: list[str] = field(default_factory=list)  # user keys/values the component rejects


def merge_parameters(user: dict[str, Any], model_defaults: dict[str, Any] | str | None,
                     inputs: dict[str, dict[str, Any]], *,
                     project_defaults: dict[str, Any] | None = None) -> MergedParameters:
    """user > model_specific_defaults > project defaults, coerced to the component's input types."""
    import ast

    if isinstance(model_defaults, str):
        try:
            model_defaults = ast.literal_eval(model_defaults) if model_defaults.strip() else {}
        except (ValueError, SyntaxError):
            model_defaults = {}
    model_defaults = dict(model_defaults or {}) if isinstance(model_defaults, dict) else {}
    layers = [("project default", PROJECT_DEFAULTS if project_defaults is None else project_defaults),
              ("model default", model_defaults), ("profile", user)]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    dropped: list[str] = []
    errors: list[str] = []
    for source, layer in layers:
        for key, value in layer.items():
            if key not in inputs or key in RESERVED:
                if source == "profile":
                    if key in RESERVED:
                        errors.append(f"finetune.{key} is set by amlft from {RESERVED[key]}; remove it from finetune:")
                    else:
                        close = difflib.get_close_matches(key, list(inputs), n=1)
                        errors.append(f"finetune.{key} is not an input of chat_completion_pipeline"
                                      + (f" (did you mean {close[0]}?)" if close else ""))
                elif source == "model default" and key not in RESERVED:
                    dropped.append(key)
                continue
            try:
                values[key] = coerce(key, value, inputs[key])
                sources[key] = source
            except ValueError as exc:
                if source == "profile":
                    errors.append(f"finetune.{exc}")
                else:
                    dropped.append(key)
    return MergedParameters(values, sources, sorted(set(dropped)), errors)


def effective_batch_size(params: dict[str, Any], *, gpus_per_node: int, num_nodes: int) -> int:
    return (int(params.get("per_device_train_batch_size", 1)) * int(params.get("gradient_accumulation_steps", 1))
            * int(gpus_per_node) * int(num_nodes))


def display_name(model: str, dataset: str, params: dict[str, Any], *, gpus_per_node: int, num_nodes: int) -> str:
    """Encodes what distinguishes runs in the Studio job list, as the reference notebook does."""
    bs = effective_batch_size(params, gpus_per_node=gpus_per_node, num_nodes=num_nodes)
    ds = f"ds{params.get('deepspeed_stage', '2')}" if params.get("apply_deepspeed") == "true" else "nods"
    lora = "lora" if params.get("apply_lora") == "true" else "nolora"
    return (f"{model}-{dataset}-bs{bs}-{params.get('lr_scheduler_type', 'linear')}-{ds}-{lora}"
            f"-save_limit{params.get('save_total_limit', -1)}-seqlen{params.get('max_seq_length', -1)}")


def model_asset_id(registry: str, name: str, *, version: str | None, label: str | None) -> str:
    if version:
        return f"azureml://registries/{registry}/models/{name}/versions/{version}"
    return f"azureml://registries/{registry}/models/{name}/labels/{label or 'latest'}"


def component_id(registry: str, name: str, *, version: str | None, label: str | None) -> str:
    if version:
        return f"azureml://registries/{registry}/components/{name}/versions/{version}"
    return f"azureml://registries/{registry}/components/{name}/labels/{label or 'latest'}"


@dataclass
class JobSpec:
    """Everything the pipeline job needs, independent of how it is built (DSL or YAML)."""

    component: str  # registry component id (for YAML) - the DSL gets the component object
    model_path: str
    cluster: str
    files: dict[str, str]  # input name -> path or azureml:<asset>:<version>
    gpus_per_node: int
    num_nodes: int
    parameters: dict[str, Any]
    experiment: str
    display_name: str
    tags: dict[str, str]

    def scalar_inputs(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"compute_{k}": self.cluster
                               for k in ("model_import", "preprocess", "finetune", "model_evaluation")}
        out["number_of_gpu_to_use_finetuning"] = self.gpus_per_node
        out["num_nodes_finetune"] = self.num_nodes
        out.update(self.parameters)
        return out


def validate_spec(spec: JobSpec, inputs: dict[str, dict[str, Any]]) -> list[str]:
    """Offline check of a spec against a component interface: names, types, required inputs."""
    problems: list[str] = []
    given = {"mlflow_model_path": spec.model_path, **spec.files, **spec.scalar_inputs()}
    for name, value in given.items():
        if name not in inputs:
            problems.append(f"{name} is not an input of the component")
            continue
        typ = inputs[name].get("type")
        if typ in ASSET_TYPES:
            continue
        try:
            coerce(name, value, inputs[name])
        except ValueError as exc:
            problems.append(str(exc))
    for name, s in inputs.items():
        if not s.get("optional", True) and name not in given and s.get("default") is None:
            problems.append(f"required input {name} is not set")
    return problems


def build_pipeline_job(component: Any, spec: JobSpec) -> Any:
    """The pipeline job via the DSL: calling the component with an unknown input raises here."""
    with needs_extra("azure", purpose="The Azure fine-tuning pipeline"):
        from azure.ai.ml import Input, dsl

    file_inputs = {k: Input(type="uri_file", path=v) for k, v in spec.files.items()}
    model_input = Input(type="mlflow_model", path=spec.model_path)

    @dsl.pipeline(None, name="amlft_chat_completion", description="amlft fine-tune of " + spec.model_path)
    def chat_finetune() -> dict[str, Any]:
        step = component(mlflow_model_path=model_input, **file_inputs, **spec.scalar_inputs())
        return {"trained_model": step.outputs.mlflow_model_folder}

    with needs_extra("azure", purpose="The Azure fine-tuning pipeline"):
        from azure.ai.ml.exceptions import MlException

    try:
        job = chat_finetune()
    except MlException as exc:  # raised locally by the DSL, before anything is sent
        raise ConfigError(f"The pipeline job does not fit the component: {exc}",
                          hint="Fix the finetune: keys named above (`amlft check` lists the component's inputs).") from exc
    with needs_extra("azure", purpose="The Azure fine-tuning pipeline"):
        from azure.ai.ml.entities import PipelineJobSettings

    settings = job.settings or PipelineJobSettings()
    settings.force_rerun = True
    settings.continue_on_step_failure = False
    job.settings = settings
    job.display_name = spec.display_name
    job.experiment_name = spec.experiment
    job.tags = dict(spec.tags)
    return job


def export_yaml(spec: JobSpec, path: Path, *, inputs: dict[str, dict[str, Any]]) -> Path:
    """az-ml pipeline job YAML (`az ml job create -f`), checked by loading it back with load_job."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step_inputs: dict[str, Any] = {"mlflow_model_path": {"type": "mlflow_model", "path": spec.model_path}}
    for k, v in spec.files.items():
        p = v
        if not v.startswith(("azureml:", "azureml://", "https://", "wasbs://", "abfss://")):
            # az ml resolves local paths relative to the YAML file
            try:
                p = str(Path(v).resolve().relative_to(path.resolve().parent))
            except ValueError:
                p = str(Path(v).resolve())
        step_inputs[k] = {"type": "uri_file", "path": p}
    for k, v in spec.scalar_inputs().items():
        step_inputs[k] = coerce(k, v, inputs[k]) if k in inputs else v
    doc = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json",
        "type": "pipeline",
        "display_name": spec.display_name,
        "experiment_name": spec.experiment,
        "tags": dict(spec.tags),
        "settings": {"force_rerun": True, "continue_on_step_failure": False},
        "outputs": {"trained_model": {"type": "mlflow_model"}},
        "jobs": {
            "chat_completion_pipeline": {
                "type": "pipeline",
                "component": spec.component,
                "inputs": step_inputs,
                "outputs": {"mlflow_model_folder": "${{parent.outputs.trained_model}}"},
            },
        },
    }
    path.write_text("# Generated by `amlft submit --dry-run --export`; submit with `az ml job create -f "
                    f"{path.name}`\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False),
                    encoding="utf-8")
    with needs_extra("azure", purpose="The Azure fine-tuning pipeline"):
        from azure.ai.ml import load_job
        from azure.ai.ml.exceptions import MlException

    from amlft.backends.azure.service import quiet_sdk_logs

    quiet_sdk_logs()
    try:
        load_job(source=path)
    except MlException as exc:  # the file we wrote must load; a schema error here is our bug, said plainly
        raise ConfigError(f"The exported job {path} does not load with azure.ai.ml.load_job: {exc}") from exc
    return path
