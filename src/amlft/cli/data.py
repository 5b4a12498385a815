"""`amlft data`: with no subcommand, the lifecycle's data step for the run; `prepare`,
`validate` and `stats` work on any chat data, with no run involved."""

from __future__ import annotations

import click

from amlft.cli.common import open_context, run_options


@click.group("data", invoke_without_command=True)
@run_options
@click.pass_context
def data_group(click_ctx: click.Context, run_id: str | None, profile: str | None, backend: str | None,
               overrides: tuple[str, ...], rehearse: bool, faults: tuple[str, ...], json_mode: bool) -> None:
    """Chat data: alone, the run's data step; prepare/validate/stats for any data.

    Alone: prepare + validate the run's data (and upload it on Azure).

    Subcommands prepare/validate/stats work on any file, folder or hub dataset.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    from amlft.cli.common import finish
    from amlft.lifecycle import run_step

    ctx = open_context("data", run_id=run_id, profile=profile, backend=backend, overrides=overrides,
                       rehearse=rehearse, faults=faults, json_mode=json_mode)
    ctx.console.result(data=run_step(ctx, "data"))
    finish(ctx)
