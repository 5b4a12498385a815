"""Upload a PublishPlan: create the repo (private by default) and push everything in one commit.

Why one commit: a half-uploaded model (weights without tokenizer, or a card describing
files that are not there) is worse than none. `create_commit` uploads the large files
first (LFS/Xet) and then writes one commit, so the repo moves from "nothing" to "the whole
model with its card" atomically, with a message that names the run it came from.

Every huggingface_hub error funnels through `_service_error`, which keeps the status and
request id, drops the token if a message ever carried it, and says what to do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from amlft.console import Console
from amlft.errors import AuthError, ConfigError, ServiceError
from amlft.extras import needs_extra, require
from amlft.hub.plan import PublishPlan, RepoPlan
from amlft.hub.token import HubToken, check_write_access, redact


def hub_endpoint() -> str | None:
    """HF_ENDPOINT read now (huggingface_hub reads it once, at import)."""
    value = (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/")
    return value or None


def publish_plan(plan: PublishPlan, *, token: HubToken, console: Console, endpoint: str | None = None) -> dict[str, Any]:
    """Create the repo(s) and push the planned files; returns what was published."""
    hub = require("huggingface_hub", extra="hub", purpose="Publishing to the Hugging Face Hub")
    from amlft.version import __version__

    endpoint = endpoint or hub_endpoint()
    api = hub.HfApi(endpoint=endpoint, token=token.value, library_name="amlft", library_version=__version__)
    with _hub_errors(token, endpoint or "https://huggingface.co"):
        user = check_write_access(api, token, sorted({r.repo_id.split("/")[0] for r in plan.repos()}))
        console.info(f"authenticated to {api.endpoint} as {user} (token from {token.source})")
        result: dict[str, Any] = {"user": user, "private": plan.private, "mode": plan.mode}
        for repo in plan.repos():
            pushed = _push_repo(hub, api, repo, private=plan.private, console=console)
            key = "" if repo.repo_type == "model" else "dataset_"
            result.update({f"{key}repo_id": repo.repo_id, f"{key}repo_url": pushed["repo_url"],
                           f"{key}commit_url": pushed["commit_url"], f"{key}commit_oid": pushed["commit_oid"],
                           f"{key}files": len(repo.files)})
    return result


def _push_repo(hub: Any, api: Any, repo: RepoPlan, *, private: bool, console: Console) -> dict[str, Any]:
    kind = "dataset repo" if repo.repo_type == "dataset" else "model repo"
    console.step(f"{kind} {repo.repo_id} ({'private' if private else 'public'})")
    url = api.create_repo(repo.repo_id, repo_type=repo.repo_type, private=private, exist_ok=True)
    info = api.repo_info(repo.repo_id, repo_type=repo.repo_type)
    if private and info.private is False:
        raise ConfigError(f"The {kind} {repo.repo_id} already exists and is public; amlft publishes privately "
                          "unless told otherwise, so nothing was uploaded.",
                          hint="Pass --public to publish into the public repo, or choose another --repo-id.")
    if not private and info.private:
        console.warn(f"{repo.repo_id} already exists and is private; it stays private (change it on the Hub).")
    ops = [hub.CommitOperationAdd(path_in_repo=f.path_in_repo,
                                  path_or_fileobj=f.content if f.content is not None else f.source)
           for f in repo.files]
    total = sum(f.size for f in repo.files)
    console.info(f"uploading {len(ops)} files ({_human(total)}) in one commit: {repo.commit_message}")
    commit = api.create_commit(repo.repo_id, ops, commit_message=repo.commit_message,
                               commit_description=repo.commit_description, repo_type=repo.repo_type)
    console.info(f"committed {commit.oid[:12]}: {commit.commit_url}")
    return {"repo_url": str(url), "commit_url": commit.commit_url, "commit_oid": commit.oid}


@contextlib.contextmanager
def _hub_errors(token: HubToken, endpoint: str) -> Iterator[None]:
    with needs_extra("hub", purpose="Publishing to the Hugging Face Hub"):
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled as exc:
        raise ConfigError("HF_HUB_OFFLINE is set, so huggingface_hub refuses to reach the Hub.",
                          hint="Unset HF_HUB_OFFLINE to publish, or use --dry-run --out DIR to write the card "
                               "and file list offline.") from exc
    except HfHubHTTPError as exc:
        raise _service_error(exc, token) from exc
    except ValueError as exc:
        if "Invalid metadata in README.md" not in str(exc):
            raise
        raise ServiceError(f"The Hugging Face Hub rejected the model card: {redact(str(exc), token)}", status=400,
                           hint="This is a bug in amlft's card writer; `--dry-run --out DIR` shows the card.") from exc
    except OSError as exc:  # connection refused, DNS, TLS: httpx errors are not OSErrors, handled below
        raise ServiceError(f"Could not reach the Hugging Face Hub at {endpoint}: {redact(str(exc), token)}",
                           hint="Check your network and HF_ENDPOINT, then retry; the upload resumes from "
                                "files already on the Hub.") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise ServiceError(f"Could not reach the Hugging Face Hub at {endpoint}: {redact(str(exc), token)}",
                               hint="Check your network and HF_ENDPOINT, then retry.") from exc
        raise


def _service_error(exc: Any, token: HubToken) -> Exception:
    status = exc.response.status_code if getattr(exc, "response", None) is not None else None
    server = redact(str(getattr(exc, "server_message", None) or str(exc).strip().splitlines()[0]), token)
    where = ""
    with contextlib.suppress(Exception):
        where = f" ({exc.response.request.method} {exc.response.request.url.path})"
    if status == 401:
        return AuthError(f"The Hugging Face Hub rejected the token from {token.source}{where}: {server}",
                         hint="Create a token with write access at https://huggingface.co/settings/tokens "
                              "and set HF_TOKEN.")
    if status == 403:
        return AuthError(f"The token from {token.source} may not do this{where}: {server}",
                         hint="Use a token with write access to that namespace (https://huggingface.co/settings/tokens).")
    hint = {400: "The Hub refused the content (often the card's metadata); the message above says which field.",
            404: "Check --repo-id; a private repo is invisible to tokens of other users.",
            409: "Someone else is changing this repo; retry in a moment.",
            429: "The Hub is rate-limiting this account; wait a minute and retry."}.get(
        status or 0, "Retry in a moment; if it persists, check https://status.huggingface.co.")
    return ServiceError(f"The Hugging Face Hub refused the request{where}: {server}", status=status,
                        code=exc.response.headers.get("X-Error-Code") if status else None,
                        request_id=getattr(exc, "request_id", None), hint=hint)


def _human(n: int) -> str:
    from rich.filesize import decimal

    return decimal(n)
