"""The contract every backend fulfils, one method per lifecycle step.

Each method is idempotent and resumable from the run record: it first looks at what
the record says was already done (or created) and only does what is missing. Every
resource a method creates is recorded (`ctx.record.add_resource`) *before* it is
waited on, so another process can resume or tear it down.

Backends do one step each and never call other steps: the lifecycle (amlft.lifecycle)
decides which steps a command runs, in which order, and journals them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from amlft.context import StepContext
from amlft.records import RunRecord

__all__ = ["Backend", "EndpointInfo", "StepContext", "data_dir"]


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
        """Start fine-tuning (Azure: submit the pipeline job; local: start/resume training). Records the job.
        The lifecycle has run check and data first."""

    def dry_run(self, ctx: StepContext, *, export_path: str | None = None) -> dict[str, Any]:
        """Validate everything submit would use and build the job without starting anything billable.
        `ctx.record` is a throwaway record (not listed by `amlft runs`)."""

    def wait(self, ctx: StepContext, *, timeout: float | None = None) -> dict[str, Any]:
        """Block until the fine-tune ends; raise JobFailed/JobCanceled/WaitTimeout otherwise."""

    def register(self, ctx: StepContext) -> dict[str, Any]:
        """Register the fine-tuned model with lineage tags. Records outputs['register']."""

    def deploy(self, ctx: StepContext) -> dict[str, Any]:
        """Create/update the endpoint + deployment and route traffic. Records outputs['deploy']."""

    def endpoint(self, ctx: StepContext) -> EndpointInfo:
        """Where the run's endpoint answers, checked live (raises RecordError if not deployed or gone)."""

    def endpoint_key(self, ctx: StepContext) -> str:
        """The endpoint's key. Never printed except by `amlft endpoint credentials`."""

    def teardown(self, ctx: StepContext, *, delete_model: bool = False) -> dict[str, Any]:
        """Delete/stop everything this run created that bills or holds resources. Safe to repeat."""

    def left_running(self, ctx: StepContext) -> list[str]:
        """This run's resources still alive, checked live (process + health probe locally, a GET on
        Azure); resources found gone are marked deleted in the record."""


def data_dir(record: RunRecord) -> Path:
    """Kept for callers written before `RunRecord.data_dir`."""
    return record.data_dir
