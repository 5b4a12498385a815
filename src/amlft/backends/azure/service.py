"""The one chokepoint where Azure SDK exceptions become `amlft.errors` with a hint.

Every SDK call the backend makes goes through `call()`: an HttpResponseError becomes a
ServiceError carrying status, service error code, message and request id (what Azure
support asks for); a credential failure becomes AuthError. Transient answers (429, 5xx)
are retried by azure-core's RetryPolicy (see `retries.py`), never here: one retry layer.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any, TypeVar

from amlft.errors import AmlftError, AuthError, ServiceError
from amlft.extras import needs_extra

T = TypeVar("T")
TRANSIENT = {408, 429, 500, 502, 503, 504}

_HINTS = {
    401: "The credential was rejected: run `az login` (or check AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_FEDERATED_TOKEN_FILE in CI).",
    403: "Your identity lacks a role here: grant it 'AzureML Data Scientist' on the workspace "
         "(and 'AzureML Registry User' for registries).",
    404: "Check the name/version in the profile; `amlft check` lists what exists.",
    409: "Something with that name already exists or is busy; pick another name or wait and retry.",
    429: "Azure is throttling requests; wait a minute and retry.",
}


def translate(exc: BaseException, what: str, *, hint: str | None = None) -> AmlftError | None:
    """The amlft error for an SDK exception, or None when `exc` is not a service/auth failure."""
    with needs_extra("azure", purpose="Reading Azure errors"):
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    try:
        from azure.identity import CredentialUnavailableError
    except ImportError:  # pragma: no cover - azure-identity is part of the azure extra
        CredentialUnavailableError = ClientAuthenticationError  # type: ignore[misc,assignment]

    if isinstance(exc, CredentialUnavailableError) or (
            isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None):
        return AuthError(f"{what}: no usable Azure credential ({_first_line(exc)}).",
                         hint="Run `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID (+ a secret or federated "
                              "token) for a service principal; in GitHub Actions use azure/login with OIDC.")
    with needs_extra("azure", purpose="Reading Azure errors"):
        from azure.ai.ml.exceptions import MlException

    if isinstance(exc, MlException):
        # The SDK checks some answers itself (e.g. a registry asset that does not exist) and raises
        # MlException instead of HttpResponseError; it is still the service saying no.
        text = _first_line(exc)
        missing = "does not exist" in text.lower() or "not found" in text.lower()
        category = getattr(exc, "error_category", None)
        return ServiceError(f"{what} failed: {text}", status=404 if missing else None,
                            code=str(getattr(category, "value", category) or "") or None,
                            hint=hint or (_HINTS[404] if missing else None))
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        err = getattr(exc, "error", None)
        code = getattr(err, "code", None) if err is not None else None
        message = getattr(err, "message", None) if err is not None else None
        message = message or _first_line(exc)
        request_id = None
        resp = getattr(exc, "response", None)
        if resp is not None:
            headers = getattr(resp, "headers", {}) or {}
            request_id = (headers.get("x-ms-request-id") or headers.get("x-request-id")
                          or headers.get("x-ms-client-request-id"))
        return ServiceError(f"{what} failed: {message}", status=status, code=code, request_id=request_id,
                            hint=hint or _HINTS.get(status or 0) or (
                                "Azure had a transient problem; retry in a few minutes." if status in TRANSIENT else None))
    return None


def call(what: str, fn: Callable[..., T], *args: Any, hint: str | None = None, **kwargs: Any) -> T:
    """Run one SDK call; a service or credential failure becomes an amlft error with a hint."""
    try:
        # The SDK's LRO poller prints progress dots to stdout, which would corrupt --json output.
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    except AmlftError:
        raise
    except Exception as exc:
        err = translate(exc, what, hint=hint)
        if err is None:
            raise
        raise err from exc


def enum_text(value: Any) -> str:
    """SDK fields are sometimes plain strings, sometimes enums (JobStatus.COMPLETED): their wire text."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def quiet_sdk_logs() -> None:
    """The SDK logs 'experimental class' notices at WARNING on every run; they are not the user's concern."""
    import logging

    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    # e.g. "Check: endpoint X exists" at INFO on a handler the SDK installs itself
    logging.getLogger("azure.ai.ml.operations").setLevel(logging.WARNING)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
