"""Typed step outputs: what each lifecycle step records in `outputs.<step>` of the run record.

Every model is tolerant on purpose (`extra="allow"`, every field optional): the two backends
record different facts for the same step (a local pid, an Azure job name), and a record
written by an older or newer amlft must still load. What the models add is that a field
they *do* name has the type they say - `RunRecord.set_output` coerces and validates through
them, so a wrong type fails where it is written, not three steps later where it is read.

Read them typed with `record.get_output(DataOutput)`; `record.output("data")` still gives
the plain dict.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = [
    "OUTPUT_MODELS", "AuthOutput", "CheckOutput", "DataOutput", "DeployOutput", "EvalOutput", "InvokeOutput",
    "RegisterOutput", "StepOutput", "SubmitOutput", "TeardownOutput", "TrainOutput", "WaitOutput", "model_for",
]


# A path: given as str or Path, stored as str.
PathStr = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


class StepOutput(BaseModel):
    """Base of every step output; unknown fields are kept as they are."""

    model_config = ConfigDict(extra="allow")
    step: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields that were set (JSON-safe), as stored in the run record."""
        return self.model_dump(mode="json", exclude_unset=True)


class AuthOutput(StepOutput):
    step: ClassVar[str] = "auth"
    credential: str | None = None
    identity: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    location: str | None = None
    registry: str | None = None
    state_dir: PathStr | None = None


class CheckOutput(StepOutput):
    step: ClassVar[str] = "check"
    findings: list[dict[str, Any]] = []
    cost: dict[str, Any] | None = None
    device: str | None = None
    params: int | None = None
    cluster_sku: str | None = None
    gpus_per_node: int | None = None
    model_asset_id: str | None = None
    endpoint_name: str | None = None
    parameters: dict[str, Any] = {}


class DataOutput(StepOutput):
    step: ClassVar[str] = "data"
    train_file: PathStr | None = None
    test_file: PathStr | None = None
    validation_file: PathStr | None = None
    invoke_file: PathStr | None = None
    report_path: PathStr | None = None
    rejected_path: PathStr | None = None
    data_hash: str | None = None
    source: str | None = None
    requested_source: str | None = None
    format: str | None = None
    substituted: bool = False
    counts: dict[str, Any] = {}
    inputs_hash: str | None = None
    assets: dict[str, str] = {}


class SubmitOutput(StepOutput):
    step: ClassVar[str] = "submit"
    job_name: str | None = None  # azure
    studio_url: str | None = None
    experiment: str | None = None
    display_name: str | None = None
    pid: int | None = None  # local
    train_dir: PathStr | None = None
    log_path: PathStr | None = None
    resumed_from: str | None = None
    base_model: str | None = None
    hyperparameters: dict[str, Any] = {}


class WaitOutput(StepOutput):
    step: ClassVar[str] = "wait"
    status: str | None = None  # Completed | Failed | Canceled
    duration_s: float | None = None
    error: str | None = None
    steps: int | None = None
    final_loss: float | None = None
    tokens_per_s: float | None = None


class TrainOutput(StepOutput):
    step: ClassVar[str] = "train"
    adapter_dir: PathStr | None = None
    checkpoint_dir: PathStr | None = None
    merged_dir: PathStr | None = None
    base_model: str | None = None
    base_model_dir: PathStr | None = None
    hyperparameters: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    loss_curve_png: PathStr | None = None


class EvalOutput(StepOutput):
    step: ClassVar[str] = "eval"
    metric: str | None = None
    n: int | None = None
    before: float | None = None
    after: float | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []


class RegisterOutput(StepOutput):
    step: ClassVar[str] = "register"
    name: str | None = None
    version: str | None = None
    model_uri: str | None = None
    model_dir: PathStr | None = None
    tags: dict[str, Any] = {}


class DeployOutput(StepOutput):
    step: ClassVar[str] = "deploy"
    endpoint_name: str | None = None
    deployment_name: str | None = None
    scoring_uri: str | None = None
    openai_base_url: str | None = None
    contract: str | None = None
    pid: int | None = None  # local
    port: int | None = None
    host: str | None = None
    log_path: PathStr | None = None
    key_ref: str | None = None


class InvokeOutput(StepOutput):
    step: ClassVar[str] = "invoke"
    prompt: str | None = None
    response: str | None = None


class TeardownOutput(StepOutput):
    step: ClassVar[str] = "teardown"
    stopped: list[str] = []  # local
    deleted_models: list[str] = []
    endpoints: dict[str, Any] = {}  # azure
    jobs: dict[str, Any] = {}
    models: dict[str, Any] = {}


OUTPUT_MODELS: dict[str, type[StepOutput]] = {
    m.step: m for m in (AuthOutput, CheckOutput, DataOutput, SubmitOutput, WaitOutput, TrainOutput, EvalOutput,
                        RegisterOutput, DeployOutput, InvokeOutput, TeardownOutput)
}


def model_for(step: str) -> type[StepOutput]:
    """The output model of a step; steps added later (bench, publish, export) get the tolerant base."""
    return OUTPUT_MODELS.get(step, StepOutput)
