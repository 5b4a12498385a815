"""The one retry layer: azure-core's RetryPolicy, made visible.

azure-core already retries 408/429/500/502/503/504 (GETs and PUTs; never a POST on
429), honours `Retry-After` / `x-ms-retry-after-ms`, and backs off exponentially.
amlft adds nothing to *when* it retries; it only says on the console that a retry is
happening (status, wait, attempt n/N), because a run that silently stalls on throttling
looks exactly like a hang.

Rehearsals set `time_scale=0`: the fake's clock is virtual, so the announced wait is
the one the service asked for, but nobody actually sleeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.policies import RetryPolicy

# Retries per request: 4 answers in a row that all fail transiently are an outage, not a blip.
RETRY_TOTAL = 4


class VisibleRetryPolicy(RetryPolicy):
    """azure-core's RetryPolicy that announces every retry before it sleeps."""

    def __init__(self, *, announce: Callable[[str], None], time_scale: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("retry_total", RETRY_TOTAL)
        super().__init__(**kwargs)
        self._announce = announce
        self._time_scale = time_scale

    def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        wait = self.get_retry_after(response) if response is not None else None
        source = "Retry-After" if wait else "backoff"
        if not wait:
            wait = self.get_backoff_time(settings)
        attempt = len(settings["history"]) + 1  # the attempt about to be made
        total = self.total_retries + 1
        self._announce(f"retry {attempt}/{total}: {_describe(settings, response)}; waiting {wait:.1f}s ({source})")
        if wait > 0 and self._time_scale > 0:
            transport.sleep(wait * self._time_scale)


def _describe(settings: dict[str, Any], response: Any) -> str:
    if response is not None:
        req = response.http_request
        path = urlsplit(req.url).path.rsplit("/providers/", 1)[-1]
        return f"{req.method} .../{path} answered {response.http_response.status_code}"
    history = settings.get("history") or []
    err = getattr(history[-1], "error", None) if history else None
    return f"request failed ({type(err).__name__ if err else 'connection error'})"
