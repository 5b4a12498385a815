"""Who we are and which workspace we talk to.

Workspace coordinates come from (highest first) CLI flags / `--set workspace.*`, the
profile, environment variables, then a config.json found the way the SDK's
`MLClient.from_config` searches (the given path, else this folder and its parents, also
inside `.azureml/`). A missing subscription id is an error naming every source tried:
the SDK would otherwise carry the string 'None' into every URL and fail much later.

The credential: in GitHub Actions with OIDC, the long-job credential from
`github_oidc` (a federated token re-requested as it expires); otherwise
DefaultAzureCredential, with the interactive browser fallback only on a TTY and never
in CI. Credentials are created here and passed in to the clients (Azure SDK convention).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlft.config import WorkspaceConfig
from amlft.errors import AuthError

ENV_SUBSCRIPTION = "AZURE_SUBSCRIPTION_ID"
ENV_RESOURCE_GROUP = "AZURE_RESOURCE_GROUP"
ENV_WORKSPACE = "AZUREML_WORKSPACE_NAME"
ARM_SCOPE = "https://management.azure.com/.default"


@dataclass
class WorkspaceCoordinates:
    subscription_id: str
    resource_group: str
    workspace_name: str
    sources: dict[str, str] = field(default_factory=dict)  # field -> where it came from


def find_config_json(start: str | None = None) -> Path | None:
    """config.json the way the SDK's from_config looks for it."""
    if start:
        p = Path(start).expanduser()
        if p.is_file():
            return p
        candidates = [p / "config.json", p / ".azureml" / "config.json"]
        return next((c for c in candidates if c.is_file()), None)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        for c in (d / "config.json", d / ".azureml" / "config.json"):
            if c.is_file():
                return c
    return None


def _read_config_json(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AuthError(f"{path} is not a readable workspace config.json: {exc}",
                        hint="Download it again from the workspace page in Azure ML studio.") from exc
    out: dict[str, str] = {}
    scope = raw.get("Scope") or raw.get("scope")
    if isinstance(scope, str) and "/subscriptions/" in scope:
        parts = scope.strip("/").split("/")
        kv = dict(zip(parts[::2], parts[1::2], strict=False))
        out = {"subscription_id": kv.get("subscriptions", ""), "resource_group": kv.get("resourceGroups", ""),
               "workspace_name": kv.get("workspaces", "")}
    for key, names in (("subscription_id", ("subscription_id", "subscriptionId")),
                       ("resource_group", ("resource_group", "resourceGroup", "resource_group_name")),
                       ("workspace_name", ("workspace_name", "workspaceName"))):
        for n in names:
            if raw.get(n):
                out[key] = str(raw[n])
    return {k: v for k, v in out.items() if v and v != "None"}


def resolve_workspace(ws: WorkspaceConfig, *, env: dict[str, str] | None = None) -> WorkspaceCoordinates:
    """Pick each coordinate from the first source that has it; fail naming every source tried."""
    env = dict(os.environ if env is None else env)
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    tried: list[str] = []
    fields = ("subscription_id", "resource_group", "workspace_name")
    env_names = {"subscription_id": ENV_SUBSCRIPTION, "resource_group": ENV_RESOURCE_GROUP,
                 "workspace_name": ENV_WORKSPACE}

    tried.append("profile workspace.* (or --set workspace.*)")
    for f in fields:
        v = getattr(ws, f)
        if v and v != "None":
            values[f], sources[f] = str(v), "profile"
    tried.append("environment " + ", ".join(env_names.values()))
    for f in fields:
        v = env.get(env_names[f])
        if f not in values and v and v != "None":
            values[f], sources[f] = v, f"${env_names[f]}"
    cfg = find_config_json(ws.config_path)
    tried.append(f"config.json ({cfg})" if cfg else
                 f"config.json (searched {ws.config_path or str(Path.cwd()) + ' and its parents'})")
    if cfg and any(f not in values for f in fields):
        for f, v in _read_config_json(cfg).items():
            if f not in values:
                values[f], sources[f] = v, str(cfg)
    missing = [f for f in fields if not values.get(f)]
    if missing:
        raise AuthError(
            f"No Azure ML workspace {', '.join(missing)} found. Tried: " + "; ".join(tried) + ".",
            hint=f"Set workspace.subscription_id/resource_group/workspace_name in the profile, export "
                 f"{ENV_SUBSCRIPTION}, {ENV_RESOURCE_GROUP} and {ENV_WORKSPACE}, or put the workspace's "
                 "config.json (Azure ML studio > workspace > Download config file) in this folder.")
    return WorkspaceCoordinates(values["subscription_id"], values["resource_group"], values["workspace_name"], sources)


def in_ci(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ if env is None else env)
    return any(env.get(k, "").strip().lower() not in ("", "0", "false") for k in ("CI", "GITHUB_ACTIONS", "TF_BUILD"))


def interactive_allowed(env: dict[str, str] | None = None) -> bool:
    """A browser login only makes sense for a person at a terminal, never in CI."""
    return sys.stdin.isatty() and sys.stdout.isatty() and not in_ci(env)


def build_credential() -> tuple[Any, str]:
    """(credential, description). GitHub OIDC long-job credential first, then DefaultAzureCredential."""
    from amlft.backends.azure import github_oidc

    cred = github_oidc.credential_from_environment()
    if cred is not None:
        return cred, "GitHub Actions OIDC (federated, refreshed for long jobs)"
    from amlft.extras import require

    identity = require("azure.identity", extra="azure", purpose="Azure authentication")
    interactive = interactive_allowed()
    cred = identity.DefaultAzureCredential(exclude_interactive_browser_credential=not interactive)
    return cred, "DefaultAzureCredential" + (" (browser login allowed: TTY)" if interactive else "")


def identity_of(credential: Any) -> str:
    """Who the token belongs to (from its unverified claims); the token itself is never shown.

    Not verifying the signature is fine here: the claims only label the console line, and the
    token came straight from the credential, not from a caller.
    """
    import jwt

    from amlft.backends.azure.service import call

    token = call("Getting an Azure access token", credential.get_token, ARM_SCOPE).token
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "unknown identity"
    who = claims.get("upn") or claims.get("unique_name") or claims.get("appid") or claims.get("oid")
    return str(who or "unknown identity")
