"""One Azure session per command: credential, workspace client, registry client.

Kept in the StepContext's `session` slot so the steps of `amlft run` share one set of
clients (and one token) instead of re-authenticating per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlft.config import Profile
from amlft.console import Console
from amlft.context import StepContext
from amlft.extras import needs_extra


@dataclass
class AzureSession:
    credential: Any
    credential_desc: str
    subscription_id: str
    resource_group: str
    workspace_name: str
    registry_name: str
    ws: Any  # MLClient for the workspace
    reg: Any  # MLClient for the registry
    rehearse: bool
    fake: Any = None
    sources: dict[str, str] | None = None

    @property
    def poll_interval_s(self) -> float:
        """Rehearsals poll fast: the fake's clock advances per request, not per second."""
        return 0.02 if self.rehearse else 30.0


def client_kwargs(rehearse: bool, console: Console) -> dict[str, Any]:
    """Options for MLClient: the one retry layer (azure-core's, announced on the console).

    Rehearsals do not sleep the announced waits: the fake's clock is virtual.
    """
    with needs_extra("azure", purpose="The Azure backend"):  # retries.py subclasses azure-core's RetryPolicy
        from amlft.backends.azure.retries import VisibleRetryPolicy

    policy = VisibleRetryPolicy(announce=console.warn, time_scale=0.0 if rehearse else 1.0)
    return {"show_progress": False, "retry_policy": policy}


def open_session(ctx: StepContext) -> AzureSession:
    """The context's session, created on first use and shared by the steps of one command."""
    if isinstance(ctx.session, AzureSession):
        return ctx.session
    sess = connect(ctx.profile, rehearse=ctx.rehearse, faults=ctx.faults, console=ctx.console, root=ctx.record.root)
    ctx.session = sess
    return sess


def connect(prof: Profile, *, rehearse: bool, faults: list[str], console: Console, root: Path | None = None) -> AzureSession:
    """Credential + workspace client + registry client (against the fake when rehearsing)."""
    from amlft.backends.azure import service

    with needs_extra("azure", purpose="The Azure backend"):
        from azure.ai.ml import MLClient
    service.quiet_sdk_logs()

    kwargs = client_kwargs(rehearse, console)
    if rehearse:
        from amlft.backends.azure.rehearsal import NOTICE, fake_for

        fake, state_path = fake_for(faults, root=root)
        console.info(NOTICE.format(path=state_path))
        if faults:
            console.info(f"REHEARSAL: injected fault(s): {', '.join(faults)}")
        credential, desc = fake.credential, "rehearsal credential (fake)"
        sub, rg, wsn = fake.subscription_id, fake.resource_group, fake.workspace_name
        sources = {"subscription_id": "rehearsal", "resource_group": "rehearsal", "workspace_name": "rehearsal"}
    else:
        from amlft.backends.azure.auth import build_credential, resolve_workspace

        fake = None
        coords = resolve_workspace(prof.workspace)
        credential, desc = build_credential()
        sub, rg, wsn, sources = coords.subscription_id, coords.resource_group, coords.workspace_name, coords.sources
    ws = MLClient(credential, subscription_id=sub, resource_group_name=rg, workspace_name=wsn, **kwargs)
    reg = service.call(f"Connecting to the '{prof.workspace.registry}' registry",
                       MLClient, credential, registry_name=prof.workspace.registry, **kwargs)
    return AzureSession(credential, desc, sub, rg, wsn, prof.workspace.registry, ws, reg, rehearse, fake, sources)
