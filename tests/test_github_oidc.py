"""The long-job GitHub OIDC credential: a fresh GitHub token whenever Entra ID needs one.

The GitHub Actions token endpoint is a real HTTP server on loopback; the Entra ID token
endpoint is faked at the HTTP layer (`responses`), so azure-identity's real
ClientAssertionCredential code runs end to end.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

responses = pytest.importorskip("responses")
pytest.importorskip("azure.identity")

from amlft.backends.azure.github_oidc import (  # noqa: E402
    AZURE_AD_TOKEN_EXCHANGE_AUDIENCE,
    GitHubOidcTokenFetcher,
    credential_from_environment,
)

TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT = "00000000-0000-0000-0000-0000000000bb"
REQUEST_TOKEN = "ghs-request-token-SECRET-1234"
TOKEN_URL = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
SCOPE = "https://management.azure.com/.default"


class FakeActionsTokenService:
    """The Actions runtime's OIDC endpoint: checks the request token and audience, issues numbered JWTs."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.issued: list[str] = []
        self.audiences: list[str] = []
        self.fail_first = fail_first
        self.fail_status = status
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                if self.headers.get("Authorization") != f"Bearer {REQUEST_TOKEN}":
                    return self._send(401, {"message": "bad request token"})
                if service.fail_first > 0:
                    service.fail_first -= 1
                    return self._send(service.fail_status, {"message": "try later"})
                service.audiences.append(query.get("audience", ""))
                assert query.get("api-version") == "2.0"  # the runner's own query string is kept
                token = f"eyJhbGciOi.github-oidc-{len(service.issued) + 1}-SECRET.sig"
                service.issued.append(token)
                return self._send(200, {"count": 1, "value": token})

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/_apis/distributedtask/hubs/Actions/plans/p/jobs/j/idtoken?api-version=2.0"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeActionsTokenService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeEntraTokenEndpoint:
    """Entra ID's token endpoint: accepts only the newest GitHub token, like the real one after expiry."""

    def __init__(self, github: FakeActionsTokenService, expires_in: int) -> None:
        self.github = github
        self.expires_in = expires_in
        self.assertions: list[str] = []
        self.access_tokens: list[str] = []

    def __call__(self, request):  # responses callback
        form = dict(urllib.parse.parse_qsl(request.body if isinstance(request.body, str) else request.body.decode()))
        assertion = form.get("client_assertion", "")
        self.assertions.append(assertion)
        assert form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        assert form.get("client_id") == CLIENT
        if not self.github.issued or assertion != self.github.issued[-1]:
            return (400, {"Content-Type": "application/json"}, json.dumps({"error": "invalid_client", "error_description":
                                         "AADSTS700024: Client assertion is not within its valid time range."}))
        token = f"aad-access-{len(self.access_tokens) + 1}-SECRET"
        self.access_tokens.append(token)
        return (200, {"Content-Type": "application/json"},
                json.dumps({"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in,
                            "access_token": token}))


def _env(github: FakeActionsTokenService) -> dict[str, str]:
    return {"ACTIONS_ID_TOKEN_REQUEST_URL": github.url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
            "AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT}


@pytest.mark.parametrize("missing", ["ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                                     "AZURE_CLIENT_ID", "AZURE_TENANT_ID"])
def test_not_selected_outside_github_actions_oidc(missing: str) -> None:
    env = {"ACTIONS_ID_TOKEN_REQUEST_URL": "http://127.0.0.1:9/x", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t",
           "AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT}
    del env[missing]
    assert credential_from_environment(env) is None


def test_selected_in_github_actions_and_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import ClientAssertionCredential

    for key, value in {"ACTIONS_ID_TOKEN_REQUEST_URL": "http://127.0.0.1:9/x?api-version=2.0",
                       "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t", "AZURE_CLIENT_ID": CLIENT,
                       "AZURE_TENANT_ID": TENANT}.items():
        monkeypatch.setenv(key, value)
    assert isinstance(credential_from_environment(), ClientAssertionCredential)


def test_fetcher_asks_for_the_entra_audience_and_a_new_token_each_call() -> None:
    with FakeActionsTokenService() as github:
        fetch = GitHubOidcTokenFetcher(github.url, REQUEST_TOKEN)
        first, second = fetch(), fetch()
    assert first != second and [first, second] == github.issued
    assert github.audiences == [AZURE_AD_TOKEN_EXCHANGE_AUDIENCE] * 2
    assert REQUEST_TOKEN not in repr(fetch)


def test_fetcher_retries_transient_errors_and_stops_on_refusal() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    with FakeActionsTokenService(fail_first=2, status=503) as github:
        assert GitHubOidcTokenFetcher(github.url, REQUEST_TOKEN, backoff_s=0.01)() == github.issued[-1]
    with FakeActionsTokenService() as github, pytest.raises(ClientAuthenticationError, match="id-token: write") as info:
        GitHubOidcTokenFetcher(github.url, "wrong-request-token", backoff_s=0.01)()
    assert "wrong-request-token" not in str(info.value)


def test_long_job_gets_a_fresh_github_token_when_the_access_token_expires(
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeActionsTokenService() as github, responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        entra = FakeEntraTokenEndpoint(github, expires_in=2)
        rsps.add_callback(responses.POST, TOKEN_URL, callback=entra)
        rsps.add_passthru("http://127.0.0.1")
        credential = credential_from_environment(_env(github))
        assert credential is not None

        first = credential.get_token(SCOPE)
        again = credential.get_token(SCOPE)  # still valid: served from the cache, GitHub not asked
        assert again.token == first.token and len(github.issued) == 1

        time.sleep(2.2)  # the access token has expired (so would the first GitHub token, in real life)
        second = credential.get_token(SCOPE)

    assert first.token == "aad-access-1-SECRET" and second.token == "aad-access-2-SECRET"
    assert len(github.issued) == 2 and entra.assertions == github.issued  # each exchange used a fresh token

    printed = capsys.readouterr()
    logged = caplog.text + printed.out + printed.err
    for secret in [*github.issued, *entra.access_tokens, REQUEST_TOKEN]:
        assert secret not in logged


def test_a_stale_github_token_is_what_aadsts700024_is_about() -> None:
    """Control for the test above: replaying the first GitHub token is refused, as in production."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientAssertionCredential

    with FakeActionsTokenService() as github, responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        entra = FakeEntraTokenEndpoint(github, expires_in=3600)
        rsps.add_callback(responses.POST, TOKEN_URL, callback=entra)
        rsps.add_passthru("http://127.0.0.1")
        fetch = GitHubOidcTokenFetcher(github.url, REQUEST_TOKEN)
        stale = fetch()
        fetch()  # a newer token exists; the first is now "expired"
        credential = ClientAssertionCredential(TENANT, CLIENT, lambda: stale)
        with pytest.raises(ClientAuthenticationError, match="AADSTS700024"):
            credential.get_token(SCOPE)
