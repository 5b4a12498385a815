"""What each HTTP error from a scoring endpoint means and what to change, for `invoke` and `bench`.

The statuses and their causes are the ones Azure ML documents for managed online
endpoints ("Troubleshoot online endpoint deployment and scoring", HTTP status codes:
https://learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-online-endpoints#http-status-codes).
A 424 carries the model container's own status and reason in the
`ms-azureml-model-error-statuscode` / `ms-azureml-model-error-reason` headers; every
answer carries `x-request-id`, which Azure support asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ScoringError", "explain", "kind_of"]

MODEL_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_REASON_HEADER = "ms-azureml-model-error-reason"


@dataclass(frozen=True)
class ScoringError:
    status: int
    kind: str  # what bench counts by
    meaning: str
    fix: str


_TABLE = {e.status: e for e in (
    ScoringError(401, "unauthorized", "the key or token was rejected",
                 "use the endpoint's current key (`amlft endpoint credentials`); keys change when regenerated"),
    ScoringError(403, "http_403", "the caller may not score this endpoint",
                 "check the endpoint's auth mode and your role on the workspace"),
    ScoringError(404, "no_deployment", "no deployment takes traffic (or the endpoint/route does not exist)",
                 "route traffic to a deployment (`amlft deploy` sets 100%), or name one with the "
                 "azureml-model-deployment header"),
    ScoringError(408, "request_timeout", "the model did not answer within request_timeout_ms",
                 "raise endpoint.request_timeout_ms, or ask for fewer tokens (max_new_tokens)"),
    ScoringError(424, "model_error", "the model container failed while scoring",
                 "read the deployment log (`az ml online-deployment get-logs`); the container's own status "
                 "and reason are shown above"),
    ScoringError(429, "throttled", "more requests than 2 x max_concurrent_requests_per_instance x instances "
                 "were in flight", "send fewer requests at once, or raise "
                 "endpoint.max_concurrent_requests_per_instance / endpoint.instance_count"),
    ScoringError(500, "http_500", "the scoring server failed", "retry; if it persists, read the deployment log"),
    ScoringError(502, "http_502", "the model container crashed or returned an invalid answer",
                 "read the deployment log; check the container's memory"),
    ScoringError(503, "http_503", "the deployment is scaling or overloaded", "retry with backoff, or add instances"),
    ScoringError(504, "http_504", "the request timed out in the gateway", "retry; raise request_timeout_ms"),
)}


def kind_of(status: int) -> str:
    """The short name bench counts errors by (e.g. "throttled"); http_<status> for the rest."""
    known = _TABLE.get(status)
    return known.kind if known else f"http_{status}"


def explain(status: int, headers: Mapping[str, str] | None = None) -> str:
    """One sentence: what the status means, the model's own error (424), the fix and the request id."""
    h = {k.lower(): v for k, v in (headers or {}).items()}
    known = _TABLE.get(status)
    text = f"HTTP {status}: " + (f"{known.meaning}" if known else "the endpoint refused the request")
    if h.get(MODEL_STATUS_HEADER) or h.get(MODEL_REASON_HEADER):
        text += f" (model answered {h.get(MODEL_STATUS_HEADER, '?')}: {h.get(MODEL_REASON_HEADER, 'no reason given')})"
    if known:
        text += f"; {known.fix}"
    request_id = h.get("x-request-id") or h.get("x-ms-request-id")
    if request_id:
        text += f" [x-request-id {request_id}]"
    return text + "."
