"""`FakeAzureML`: an in-process, stateful fake of the Azure ML REST API.

It sits under the real azure-ai-ml SDK at the HTTP layer (a `responses` mock of
`requests`, which azure-core's default transport uses), so code driven against it
sends exactly the requests it would send to Azure — wrong arguments and serialization
errors surface here, not in production. Loopback traffic passes through (a local
scoring server keeps working); any other unknown route answers 501 and is recorded in
`fake.unhandled`, so a gap in the fake is loud rather than silently "fine".
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from amlft.extras import needs_extra
from amlft.testing import seed
from amlft.testing.http import FakeRequest, Router, reply_error, reply_json
from amlft.testing.state import FakeState

FAULTS = (
    "throttle",
    "server_error",
    "model_retired",
    "cluster_failed",
    "sku_not_allowed",
    "finetune_step_fails",
    "job_not_responding",
    "quota_exceeded",
    "scoring_timeout",
    "scoring_throttled",
    "model_error",
    "deployment_quota",
    "container_crash",
    "endpoint_name_taken",
)

_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS")
_LOOPBACK = ("http://127.0.0.1", "http://localhost", "http://[::1]", "https://127.0.0.1", "https://localhost")
_INTERCEPT = re.compile(r"^https?://(?!(127\.0\.0\.1|localhost|\[::1\])[:/])")


class _FakeCredential:
    """A TokenCredential that never calls AAD.

    The token is an unsigned JWT whose audience is the requested scope: the SDK decodes
    it (without verifying) before submitting jobs and checks the audience.
    """

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        with needs_extra("rehearse", purpose="amlft's in-process Azure ML fake (--rehearse)"):
            from azure.core.credentials import AccessToken

        expires = int(time.time()) + 3600
        audience = (scopes[0] if scopes else "https://management.azure.com/.default").removesuffix("/.default")
        claims = {"aud": audience, "iss": "https://sts.windows.net/fake/", "tid": "22222222-2222-2222-2222-222222222222",
                  "oid": "44444444-4444-4444-4444-444444444444", "upn": "rehearsal@amlft.invalid", "exp": expires}

        def b64(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.ZmFrZXNpZ25hdHVyZQ"
        return AccessToken(token, expires)

    def close(self) -> None:
        pass

    def __enter__(self) -> _FakeCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeAzureML:
    """A fake Azure ML subscription: workspace, cluster, `azureml` registry, endpoints.

    Use as a context manager (or `start()`/`stop()`); while active, every `requests`
    call to a non-loopback host is answered from the fake's state.
    """

    subscription_id = seed.SUBSCRIPTION_ID
    resource_group = seed.RESOURCE_GROUP
    workspace_name = seed.WORKSPACE_NAME
    location = seed.LOCATION
    cluster_name = seed.CLUSTER_NAME

    def __init__(self, state_path: Path | str | None = None, *, faults: Iterable[str] = (),
                 tick_s: float = 120.0) -> None:
        self.tick_s = float(tick_s)
        self._store = FakeState(Path(state_path) if state_path is not None else None, seed.initial_state())
        self._mock: Any = None
        self._lock = threading.RLock()
        self.unhandled: list[str] = []
        self.requests: list[str] = []  # "METHOD url" of every intercepted call, for tests
        self.log: list[tuple[str, str, int]] = []  # (method, url, status) of every intercepted call
        self.credential = _FakeCredential()
        from amlft.testing.routes import build_router

        self._router: Router = build_router()
        with self._store.transaction():
            pass
        for name in faults:
            self.add_fault(name)
        if self._store.path is not None and not self._store.path.exists():
            self._store.save()

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> FakeAzureML:
        from amlft.extras import require

        responses = require("responses", extra="rehearse", purpose="amlft's in-process Azure ML fake (--rehearse)")

        if self._mock is not None:
            return self
        mock = responses.RequestsMock(assert_all_requests_are_fired=False, passthru_prefixes=_LOOPBACK)
        for method in _METHODS:
            mock.add_callback(method, _INTERCEPT, callback=self._on_request)
        mock.start()
        self._mock = mock
        return self

    def stop(self) -> None:
        if self._mock is not None:
            self._mock.stop()
            self._mock.reset()
            self._mock = None

    def __enter__(self) -> FakeAzureML:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------
    def ml_client(self, **kwargs: Any) -> Any:
        with needs_extra("rehearse", purpose="amlft's in-process Azure ML fake (--rehearse)"):
            from azure.ai.ml import MLClient

        return MLClient(self.credential, self.subscription_id, self.resource_group, self.workspace_name, **kwargs)

    def registry_client(self, registry_name: str = seed.REGISTRY_NAME, **kwargs: Any) -> Any:
        with needs_extra("rehearse", purpose="amlft's in-process Azure ML fake (--rehearse)"):
            from azure.ai.ml import MLClient

        return MLClient(self.credential, registry_name=registry_name, **kwargs)

    # -- state, faults, clock --------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The current world (reloaded from the state file); mutate via the fake's methods."""
        with self._store.transaction() as st:
            return st

    @property
    def faults(self) -> list[str]:
        return list(self.state["faults"])

    def add_fault(self, name: str) -> None:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; choose one of: {', '.join(FAULTS)}")
        with self._store.transaction() as st:
            if name not in st["faults"]:
                st["faults"].append(name)
                st["fault_hits"][name] = 0

    def remove_fault(self, name: str) -> None:
        with self._store.transaction() as st:
            if name in st["faults"]:
                st["faults"].remove(name)

    def add_compute(self, name: str, *, vm_size: str = seed.CLUSTER_SKU, min_nodes: int = 0, max_nodes: int = 2,
                    idle_seconds: int = 1800) -> None:
        """Another AmlCompute cluster in the workspace (the seed has one, `gpu-a100`)."""
        with self._store.transaction() as st:
            st["computes"][name] = {"vm_size": vm_size, "min_nodes": min_nodes, "max_nodes": max_nodes,
                                    "idle_seconds": idle_seconds, "provisioning_state": "Succeeded",
                                    "created": "2025-01-01T00:00:00Z"}

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (jobs progress, LROs finish)."""
        with self._store.transaction() as st:
            st["clock"] = float(st["clock"]) + float(seconds)

    def now(self) -> float:
        return float(self.state["clock"])

    def left_running(self) -> list[str]:
        """Billable things still alive: endpoints and their deployments."""
        from amlft.testing.routes_endpoints import _alive

        st = self.state
        now = float(st["clock"])
        alive = [f"endpoint:{n}" for n, ep in sorted(st["endpoints"].items()) if _alive(ep, now)]
        alive += [f"deployment:{k}" for k, dep in sorted(st["deployments"].items()) if _alive(dep, now)]
        return alive

    # -- dispatch -------------------------------------------------------------------
    def _on_request(self, prepared: Any) -> tuple[int, dict[str, str], Any]:
        req = FakeRequest.from_prepared(prepared)
        with self._lock:
            self.requests.append(f"{req.method} {req.url}")
            reply = self._dispatch(req)
            self.log.append((req.method, req.url, reply[0]))
            return reply

    def _dispatch(self, req: FakeRequest) -> tuple[int, dict[str, str], Any]:
        where = f"{req.method} {req.host}{req.path}"
        found = self._router.find(req)
        if found is None:
            self.unhandled.append(where)
            if req.method == "HEAD":
                return 501, {"x-ms-error-code": "NotImplementedInFake"}, b""
            return reply_error(501, "NotImplementedInFake", f"amlft.testing.FakeAzureML has no route for {where}")
        handler, params = found
        try:
            with self._store.transaction() as st:
                from amlft.testing.routes import transient_fault

                fault = transient_fault(self, req, st)
                if fault is not None:
                    return fault
                status, headers, body = handler(self, req, st, **params)
                return status, headers, (b"" if req.method == "HEAD" else body)
        except Exception as exc:  # a bug in the fake must be visible, not a hang
            self.unhandled.append(f"{where} (fake error: {exc!r})")
            return reply_error(500, "FakeInternalError", f"{where}: {exc!r}\n{traceback.format_exc()}")

    # Exposed for routes: a monotonic id for names and operation ids.
    @staticmethod
    def next_seq(st: dict[str, Any]) -> int:
        st["seq"] = int(st.get("seq", 0)) + 1
        return st["seq"]


__all__ = ["FAULTS", "FakeAzureML", "reply_json"]
