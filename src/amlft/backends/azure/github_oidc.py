"""A credential that keeps working for the whole of a long GitHub Actions job.

`azure/login` exchanges one GitHub OIDC token for an Azure CLI session. That GitHub token
expires after about five minutes and the Azure CLI cannot fetch another, so the first
Azure access token refresh after an hour fails with AADSTS700024 ("client assertion is
not within its valid time range") - exactly when `amlft wait` is following a multi-hour
fine-tune. Here the Entra ID token exchange is done by azure-identity's
ClientAssertionCredential, whose assertion callback asks the Actions runtime for a fresh
GitHub OIDC token every time Entra ID needs one, for as long as the job runs.

The callback is only invoked when azure-identity has no valid cached access token, so a
multi-hour job asks GitHub for a token about once an hour.
Tokens are never logged or put in exception messages.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING

from amlft.extras import needs_extra

if TYPE_CHECKING:  # pragma: no cover
    from azure.core.credentials import TokenCredential

_LOG = logging.getLogger(__name__)

# The audience Entra ID expects in a federated GitHub token (the federated credential's `audiences`).
AZURE_AD_TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"

# Set by the Actions runner in every step of a job with `permissions: id-token: write`.
REQUEST_URL_VAR = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN_VAR = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
# Set by the workflow from repository variables (the user-assigned identity and its tenant).
CLIENT_ID_VAR = "AZURE_CLIENT_ID"
TENANT_ID_VAR = "AZURE_TENANT_ID"


def credential_from_environment(environ: Mapping[str, str] | None = None) -> TokenCredential | None:
    """A refreshing GitHub OIDC credential when running in GitHub Actions with OIDC, else None.

    Needs ACTIONS_ID_TOKEN_REQUEST_URL + ACTIONS_ID_TOKEN_REQUEST_TOKEN (the job has
    `permissions: id-token: write`) and AZURE_CLIENT_ID + AZURE_TENANT_ID (the identity
    with the federated credential). AZURE_AUTHORITY_HOST selects a sovereign cloud.
    Returning None lets the caller fall back to DefaultAzureCredential.
    """
    env = os.environ if environ is None else environ
    request_url = env.get(REQUEST_URL_VAR, "").strip()
    request_token = env.get(REQUEST_TOKEN_VAR, "").strip()
    client_id = env.get(CLIENT_ID_VAR, "").strip()
    tenant_id = env.get(TENANT_ID_VAR, "").strip()
    if not (request_url and request_token and client_id and tenant_id):
        return None

    with needs_extra("azure", purpose="GitHub OIDC sign-in to Azure"):
        from azure.identity import ClientAssertionCredential

    fetcher = GitHubOidcTokenFetcher(request_url, request_token)
    kwargs = {}
    authority = env.get("AZURE_AUTHORITY_HOST", "").strip()
    if authority:
        kwargs["authority"] = authority
    _LOG.info("using the GitHub Actions OIDC credential (client id %s); it fetches a fresh GitHub token "
              "whenever Azure needs one", client_id)
    return ClientAssertionCredential(tenant_id, client_id, fetcher, **kwargs)


class GitHubOidcTokenFetcher:
    """Callable returning a new GitHub OIDC token (a JWT) from the Actions token endpoint.

    A new token on every call on purpose: azure-identity calls it only when it must
    acquire an access token, and a cached GitHub token could be the expired one.
    Transient failures (network, 5xx, 429) are retried; a 401/403 means the request token
    is wrong or the job lacks `id-token: write`, which no retry fixes.
    """

    def __init__(self, request_url: str, request_token: str, *,
                 audience: str = AZURE_AD_TOKEN_EXCHANGE_AUDIENCE, attempts: int = 4,
                 backoff_s: float = 1.0, timeout_s: float = 30.0) -> None:
        self._url = _with_audience(request_url, audience)
        self._request_token = request_token
        self._attempts = max(1, attempts)
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self.calls = 0  # how many tokens were fetched (tests and diagnostics; never the token itself)

    def __repr__(self) -> str:  # keep the request token out of any repr that ends up in a log
        return f"GitHubOidcTokenFetcher(url={_redact_url(self._url)!r})"

    def __call__(self) -> str:
        with needs_extra("azure", purpose="GitHub OIDC sign-in to Azure"):
            from azure.core.exceptions import ClientAuthenticationError

        last_problem = "no attempt made"
        for attempt in range(1, self._attempts + 1):
            request = urllib.request.Request(self._url, headers={
                "Authorization": f"Bearer {self._request_token}",
                "Accept": "application/json; api-version=2.0",
            })
            try:
                with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                last_problem = f"HTTP {exc.code}"
                if exc.code in (401, 403, 404):
                    raise ClientAuthenticationError(
                        f"GitHub refused to issue an OIDC token ({last_problem}). Give the job "
                        "`permissions: id-token: write`, and run amlft inside that job's steps.") from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last_problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            else:
                token = _token_from_body(body)
                self.calls += 1
                _LOG.debug("fetched a fresh GitHub OIDC token (#%d)", self.calls)
                return token
            if attempt < self._attempts:
                _LOG.warning("GitHub OIDC token request failed (%s); retrying (%d/%d)",
                             last_problem, attempt, self._attempts - 1)
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
        raise ClientAuthenticationError(
            f"Could not get a GitHub OIDC token from the Actions runtime after {self._attempts} attempts "
            f"({last_problem}) at {_redact_url(self._url)}.")


def _token_from_body(body: bytes) -> str:
    with needs_extra("azure", purpose="GitHub OIDC sign-in to Azure"):
        from azure.core.exceptions import ClientAuthenticationError

    try:
        value = json.loads(body.decode("utf-8")).get("value")
    except (ValueError, AttributeError, UnicodeDecodeError):
        value = None
    if not isinstance(value, str) or not value:
        raise ClientAuthenticationError("The GitHub OIDC token endpoint answered without a token "
                                        "(expected JSON with a 'value' field).")
    return value


def _with_audience(url: str, audience: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "audience"]
    query.append(("audience", audience))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _redact_url(url: str) -> str:
    """Scheme, host and path only: the query may carry run-specific identifiers."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
