"""The route table: which handler answers which REST call, and the transient faults."""

from __future__ import annotations

from typing import Any

from amlft.testing.http import FakeRequest, Reply, Router, reply_error

# Transient faults hit this many ARM reads, each followed by a success, so azure-core's
# retry policy (which retries a first failure immediately) recovers in one retry.
TRANSIENT_HITS = 2


def build_router() -> Router:
    from amlft.testing import routes_endpoints, routes_jobs, routes_registry, routes_storage, routes_workspace

    router = Router()
    routes_registry.register(router)
    routes_workspace.register(router)
    routes_jobs.register(router)  # before storage: job logs live on the blob host
    routes_storage.register(router)
    routes_endpoints.register(router)
    return router


def transient_fault(fake: Any, req: FakeRequest, st: dict[str, Any]) -> Reply | None:
    """429/500 on ARM reads while a transient fault is active, alternating with successes.

    Only GETs to management.azure.com: azure-core retries GETs on both statuses, but not
    POSTs on 429, and storage's own retry policy would sleep 15 s between attempts.
    The 429 carries `Retry-After`, as ARM's throttling answers do, and azure-core's
    RetryPolicy honours it (azure/core/pipeline/policies/_retry.py::RetryPolicy.sleep in
    azure-core, the one retry layer amlft uses; see backends/azure/retries.py).
    """
    if req.method != "GET" or req.host != "management.azure.com":
        return None
    for name in ("throttle", "server_error"):
        if name not in st["faults"]:
            continue
        hits = int(st["fault_hits"].get(name, 0))
        if hits >= 2 * TRANSIENT_HITS:
            continue
        st["fault_hits"][name] = hits + 1
        if hits % 2:
            continue
        if name == "throttle":
            return reply_error(429, "TooManyRequests",
                               "The request is being throttled: too many requests for this subscription. "
                               "Retry after the delay in the Retry-After header.", {"Retry-After": "1"})
        return reply_error(500, "InternalServerError",
                           "An unexpected error occurred while processing the request (transient; please retry).")
    return None
