"""`amlft endpoint show|credentials`: where the run's endpoint answers, and (only on request) its key."""

from __future__ import annotations

from typing import Any

import click

from amlft.cli.common import lifecycle_command


@click.group("endpoint")
def endpoint_group() -> None:
    """Inspect the run's deployed endpoint."""


@endpoint_group.command("show")
@lifecycle_command("endpoint")
def endpoint_show(ctx: Any) -> None:
    """Print scoring_uri and openai_base_url of the run's endpoint (never the key)."""
    from amlft.lifecycle import backend_for

    info = backend_for(ctx).endpoint(ctx)
    ctx.console.result(name=info.name, scoring_uri=info.scoring_uri, openai_base_url=info.openai_base_url,
                       contract=info.contract, auth=info.auth)
    if not ctx.console.json_mode:
        ctx.console.info(f"name:            {info.name}")
        ctx.console.info(f"scoring_uri:     {info.scoring_uri}")
        ctx.console.info(f"openai_base_url: {info.openai_base_url or '-'}")
        ctx.console.info(f"auth:            {info.auth} (key: `amlft endpoint credentials --json`)")


@endpoint_group.command("credentials")
@lifecycle_command("endpoint")
def endpoint_credentials(ctx: Any) -> None:
    """Print the endpoint key as JSON - the only command that ever shows a key. Requires --json."""
    from amlft.errors import ConfigError
    from amlft.lifecycle import backend_for

    if not ctx.console.json_mode:
        raise ConfigError("Refusing to print a key to a terminal log.",
                          hint="Use `amlft endpoint credentials --json` and capture it, e.g. KEY=$(... | jq -r .key).")
    ctx.console.result(key=backend_for(ctx).endpoint_key(ctx))
