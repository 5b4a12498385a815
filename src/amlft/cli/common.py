"""Options shared by the lifecycle verbs, and how a verb finds its run."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

from amlft.console import Console

_CONSOLE: Console | None = None

# Steps before training starts may begin a new run; later ones only act on an existing run.
PRE_SUBMIT_STEPS = ("auth", "check", "data", "submit", "run")


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
    opts = [
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
    """Find or start the run this verb acts on and build its StepContext.

    - `--run ID` always wins.
    - Steps up to `submit` continue the latest run if it used the same profile and has not
      submitted yet; otherwise they start a new run. `amlft run` always starts a new run.
    - Later steps act on the latest run.
    """
    from amlft.backends.base import StepContext
    from amlft.config import Profile, resolve_profile_path
    from amlft.errors import ConfigError
    from amlft.records import RunRecord, list_runs

    console = make_console(json_mode)
    record = None
    if run_id:
        record = RunRecord.load(run_id)
    elif step not in PRE_SUBMIT_STEPS:
        record = RunRecord.load(None)  # the latest run; a clear error when there is none
    elif step != "run":
        runs = list_runs()
        if runs:
            latest = RunRecord.load(runs[0]["run_id"])
            same_profile = profile is None or (
                os.path.abspath(str(latest.data.get("profile_path") or "")) == os.path.abspath(profile))
            if (same_profile and latest.step_status("submit") is None and not overrides and not backend
                    and (rehearse == latest.rehearse or not rehearse)):
                record = latest
    ws = workspace_overrides()
    overrides = (*overrides, *ws)
    if faults and not (rehearse or (record is not None and record.rehearse)):
        raise ConfigError("--fault only works with --rehearse.", hint="Add --rehearse.")
    if record is None:
        path = resolve_profile_path(profile)
        prof = Profile.from_yaml(path, overrides=list(overrides))
        if backend:
            prof.backend = backend  # type: ignore[assignment]
        record = RunRecord.create(backend=prof.backend, profile=prof.to_dict(), profile_path=str(path),
                                  rehearse=rehearse)
        console.info(f"run {record.run_id} ({prof.backend} backend, profile {path})")
    else:
        prof = Profile.from_dict(record.profile, source=f"run {record.run_id}", overrides=list(overrides))
        if overrides:
            record.data["profile"] = prof.to_dict()
            record.save()
    if rehearse and not record.rehearse:
        raise ConfigError(f"Run {record.run_id} was not started with --rehearse; it talks to real Azure.",
                          hint="Start a new rehearsal with --profile ... --rehearse.")
    recorded_faults = list(record.data.get("faults") or [])
    for f in faults:
        if f not in recorded_faults:
            recorded_faults.append(f)
    if recorded_faults != list(record.data.get("faults") or []):
        record.data["faults"] = recorded_faults
        record.save()
    console.result(run_id=record.run_id, backend=record.backend)
    return StepContext(profile=prof, record=record, console=console, rehearse=record.rehearse,
                       faults=recorded_faults, options=options)


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
