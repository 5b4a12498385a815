"""The user's Hugging Face token: where it comes from, whether it can write, and never showing it.

Why check before uploading: a read-only or expired token fails only after the repo is
created and gigabytes are hashed, with an error that names neither the token's source
nor the fix. One `whoami` call up front turns that into a clear instruction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from amlft.errors import AuthError, ServiceError
from amlft.extras import needs_extra, require

TOKENS_PAGE = "https://huggingface.co/settings/tokens"


@dataclass(frozen=True)
class HubToken:
    value: str = ""
    source: str = ""

    def __repr__(self) -> str:  # the value must never reach a log, a traceback or a --json result
        return f"HubToken(source={self.source!r})"

    __str__ = __repr__


def find_token() -> HubToken:
    """HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the huggingface_hub login cache."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (os.environ.get(var) or "").strip()
        if value:
            return HubToken(value, f"the {var} environment variable")
    hub = require("huggingface_hub", extra="hub", purpose="Publishing to the Hugging Face Hub")
    cached = hub.get_token()
    if cached:
        return HubToken(cached, "the huggingface_hub login cache (`hf auth login`)")
    raise AuthError(
        "No Hugging Face token found: HF_TOKEN is not set and you are not logged in with huggingface_hub.",
        hint=f"Create a token with write access at {TOKENS_PAGE}, then `export HF_TOKEN=...` "
             "(or run `hf auth login`). `--dry-run --out DIR` needs no token.")


def redact(text: str, token: HubToken | str | None) -> str:
    value = token.value if isinstance(token, HubToken) else token
    return text.replace(value, "***") if value else text


def check_write_access(api: Any, token: HubToken, namespaces: list[str]) -> str:
    """Prove the token is valid and may write to every namespace; return the user name."""
    with needs_extra("hub", purpose="Publishing to the Hugging Face Hub"):
        from huggingface_hub.errors import HfHubHTTPError

    try:
        info = api.whoami(token=token.value)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise AuthError(f"The Hugging Face Hub rejected the token from {token.source} (invalid or expired).",
                            hint=f"Create a new token with write access at {TOKENS_PAGE} and set HF_TOKEN.") from exc
        raise ServiceError(f"Could not check the Hugging Face token: {redact(str(exc).splitlines()[0], token)}",
                           status=status, request_id=getattr(exc, "request_id", None),
                           hint="Check HF_ENDPOINT and your network, then retry.") from exc
    user = str(info.get("name") or "")
    orgs = {str(o.get("name")) for o in info.get("orgs") or [] if isinstance(o, dict)}
    access = ((info.get("auth") or {}).get("accessToken") or {})
    role = access.get("role")
    if role == "read":
        raise AuthError(f"The token from {token.source} (user {user}) is read-only; publishing needs write access.",
                        hint=f"Create a token with the 'Write' role at {TOKENS_PAGE} and set HF_TOKEN to it.")
    for ns in namespaces:
        if ns != user and ns not in orgs:
            raise AuthError(f"User {user} (token from {token.source}) cannot create repos under '{ns}': "
                            "it is neither that user nor one of their organisations.",
                            hint=f"Use --repo-id {user}/<name>, or join the '{ns}' organisation on the Hub.")
        if role == "fineGrained" and not _fine_grained_can_write(access.get("fineGrained") or {}, ns):
            raise AuthError(f"The fine-grained token from {token.source} has no write permission on '{ns}'.",
                            hint=f"Edit the token at {TOKENS_PAGE}: allow 'Write access to contents/settings of "
                                 f"all repos' under '{ns}'.")
    return user


def _fine_grained_can_write(fine: dict[str, Any], namespace: str) -> bool:
    scoped = fine.get("scoped")
    if not isinstance(scoped, list):
        return True  # a shape we do not know: let the Hub decide on create/commit (a 403 there is mapped too)
    return any((scope.get("entity") or {}).get("name") == namespace and "repo.write" in (scope.get("permissions") or [])
               for scope in scoped if isinstance(scope, dict))
