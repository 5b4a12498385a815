"""The contract every backend fulfils, one method per lifecycle step.

Each method is idempotent and resumable from the run record: it first looks at what
the record says was already done (or created) and only does what is missing. Every
resource a method creates is recorded (`ctx.record.add_resource`) *before* it is
waited on, so another process can resume or tear it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from amlft.config import Profile
from amlft.console import Console
from amlft.records import RunRecord


@dataclass
class StepContext:
    """What a step needs: the validated profile, the run's journal and where to talk."""

    profile: Profile
    record: RunRecord
    console: Console
    rehearse: bool = False
    faults: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EndpointInfo:
    """Where a deployed model answers. The key is fetched only when a caller asks for it."""

    scoring_uri: str
    openai_base_url: str | None
    contract: str  # "azureml" or "openai"
    name: str
    auth: str = "key"


class Backend(Protocol):
    name: str

    def auth(self, ctx: StepContext) -> dict[str, Any]:
        """Resolve credentials/clients; returns non-secret facts to show (identity, workspace)."""

    def check(self, ctx: StepContext) -> list[dict[str, Any]]:
        """Preflight. Returns every finding (severity error|warning|info, check, message, fix).
        The lifecycle raises PreflightError when any has severity 'error'."""

    def data(self, ctx: StepContext) -> dict[str, Any]:
        """Prepare + validate the chat data (amlft.data), and for Azure upload it. Records outputs['data']."""

    def submit(self, ctx: StepContext) -> dict[str, Any]:
        """Start fine-tuning (Azure: submit the pipeline job; local: start/resume training). Records the job."""

    def wait(self, ctx: StepContext, *, timeout: float | None = None) -> dict[str, Any]:
        """Block until the fine-tune ends; raise JobFailed/JobCanceled/WaitTimeout otherwise."""

    def register(self, ctx: StepContext) -> dict[str, Any]:
        """Register the fine-tuned model with lineage tags. Records outputs['register']."""

    def deploy(self, ctx: StepContext) -> dict[str, Any]:
        """Create/update the endpoint + deployment and route traffic. Records outputs['deploy']."""

    def endpoint(self, ctx: StepContext) -> EndpointInfo:
        """Where the run's endpoint answers (raises RecordError if not deployed)."""

    def endpoint_key(self, ctx: StepContext) -> str:
        """The endpoint's key. Never printed except by `amlft endpoint credentials`."""

    def teardown(self, ctx: StepContext, *, delete_model: bool = False) -> dict[str, Any]:
        """Delete/stop everything this run created that bills or holds resources. Safe to repeat."""

    def left_running(self, ctx: StepContext) -> list[str]:
        """Human-readable list of this run's resources still alive (for the run summary)."""


def data_dir(record: RunRecord) -> Path:
    d = record.run_dir / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d
