"""Options shared by the lifecycle verbs, and how a verb finds its run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from amlft.console import Console

_CONSOLE: Console | None = None


def current_console() -> Console | None:
    return _CONSOLE


def reset_console() -> None:
    """Forget the previous command's console (main() may be called many times in one process)."""
    global _CONSOLE
    _CONSOLE = None


def make_console(json_mode: bool, quiet: bool = False) -> Console:
    global _CONSOLE
    _CONSOLE = Console(json_mode=json_mode, quiet=quiet)
    return _CONSOLE


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "json_mode", is_flag=True, help="Print one JSON result on stdout (for CI).")(f)


def _remember_workspace(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta.setdefault("amlft_workspace", {})[param.name] = value


def workspace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--subscription-id/--resource-group/--workspace-name: explicit workspace coordinates.

    They land in the run's profile (workspace.*), so later steps of the run reuse them, and
    unlike other --set overrides they do not start a new run.
    """
    for name, env in (("workspace-name", "AZUREML_WORKSPACE_NAME"), ("resource-group", "AZURE_RESOURCE_GROUP"),
                      ("subscription-id", "AZURE_SUBSCRIPTION_ID")):
        f = click.option(f"--{name}", name.replace("-", "_"), expose_value=False, callback=_remember_workspace,
                         metavar="NAME", help=f"Azure ML workspace coordinate (else profile, ${env}, config.json).")(f)
    return f


def workspace_overrides() -> list[str]:
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get("amlft_workspace", {}) if ctx is not None else {}
    return [f"workspace.{k}={v}" for k, v in given.items()]


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--run/--profile/--backend/--set/--rehearse/--fault/--json, shared by every lifecycle verb."""
    opts: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--run", "run_id", metavar="ID", help="Act on this run (default: the most recent one here)."),
        click.option("--profile", "profile", metavar="FILE", help="Run profile (default: jobs/local-demo.yml)."),
        click.option("--backend", type=click.Choice(["local", "azure"]), help="Override the profile's backend."),
        click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
                     help="Override a profile field, e.g. --set finetune.learning_rate=1e-5 (repeatable)."),
        click.option("--rehearse", is_flag=True,
                     help="Azure backend: run against the in-process Azure ML fake (no subscription, no cost)."),
        click.option("--fault", "faults", multiple=True, metavar="NAME",
                     help="With --rehearse: inject a fault (throttle, server_error, model_retired, cluster_failed, "
                          "sku_not_allowed, finetune_step_fails, job_not_responding, quota_exceeded, deployment_quota, "
                          "container_crash, endpoint_name_taken, scoring_timeout, scoring_throttled, model_error)."),
        json_option,
        workspace_options,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def open_context(step: str, *, run_id: str | None, profile: str | None, backend: str | None,
                 overrides: tuple[str, ...], rehearse: bool, faults: tuple[str, ...], json_mode: bool,
                 **options: Any) -> Any:
    """Find or start the run this verb acts on (amlft.run_selection) and build its StepContext."""
    from amlft.run_selection import open_run

    console = make_console(json_mode)
    return open_run(step, run_id=run_id, profile=profile, backend=backend,
                    overrides=[*overrides, *workspace_overrides()], rehearse=rehearse, faults=list(faults),
                    console=console, options=options)


def finish(ctx_or_console: Any) -> None:
    console = getattr(ctx_or_console, "console", ctx_or_console)
    console.result(ok=True)
    console.emit_result()


def lifecycle_command(step: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: builds the StepContext from run_options and passes it as `ctx`."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(run_id: str | None, profile: str | None, backend: str | None, overrides: tuple[str, ...],
                    rehearse: bool, faults: tuple[str, ...], json_mode: bool, **kwargs: Any) -> Any:
            ctx = open_context(step, run_id=run_id, profile=profile, backend=backend, overrides=overrides,
                               rehearse=rehearse, faults=faults, json_mode=json_mode)
            out = f(ctx, **kwargs)
            finish(ctx)
            return out

        return run_options(wrapper)

    return deco
