"""Every JobStatus the service returns, in one table the poller and the backend share.

The statuses and their meanings are the service's own (the `JobStatus` enum of the
REST spec, `specification/machinelearningservices/resource-manager/
Microsoft.MachineLearningServices/stable/2024-04-01/mfe.json` in
Azure/azure-rest-api-specs, mirrored in azure-ai-ml 1.35.2 as
`azure/ai/ml/_restclient/arm_ml_service/models/_enums.py::JobStatus`).

Only Completed, Failed and Canceled are terminal. NotResponding and Paused are not:
the spec says a NotResponding run "can go from NotResponding to any of the previous
states", and a Paused job resumes when someone resumes it. Both still hold compute, so
`wait` explains them and stops waiting after `pipeline.stalled_timeout_s` instead of
polling forever, and teardown still cancels them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobState:
    name: str
    terminal: bool
    meaning: str
    stalled: bool = False  # not progressing on its own; waiting on it could take forever


_STATES = (
    JobState("NotStarted", False, "accepted, not started yet"),
    JobState("Starting", False, "starting"),
    JobState("Provisioning", False, "compute is being provisioned"),
    JobState("Preparing", False, "the run environment (image, data mounts) is being prepared"),
    JobState("Queued", False, "waiting for nodes on the cluster (it scales up from 0, or other jobs hold them)"),
    JobState("Running", False, "running"),
    JobState("Finalizing", False, "finished; outputs are being uploaded"),
    JobState("CancelRequested", False, "cancellation requested; the nodes are being released"),
    JobState("Completed", True, "completed"),
    JobState("Failed", True, "failed"),
    JobState("Canceled", True, "canceled"),
    JobState("NotResponding", False,
             "has stopped sending heartbeats to run history (node lost, process hung or out of memory); it may "
             "recover on its own, but it still holds its compute", stalled=True),
    JobState("Paused", False, "is paused by a user; it resumes only when someone resumes it, and keeps its "
             "compute meanwhile", stalled=True),
    JobState("Unknown", False, "the service reports no known status"),
)
STATES: dict[str, JobState] = {s.name.lower(): s for s in _STATES}
TERMINAL = frozenset(s.name for s in _STATES if s.terminal)
STALLED = frozenset(s.name for s in _STATES if s.stalled)


def state_of(status: str | None) -> JobState:
    """The table row for a status as the service spells it (any case); Unknown for anything else."""
    return STATES.get(str(status or "").lower(), STATES["unknown"])


def is_terminal(status: str | None) -> bool:
    return state_of(status).terminal


def is_stalled(status: str | None) -> bool:
    return state_of(status).stalled
