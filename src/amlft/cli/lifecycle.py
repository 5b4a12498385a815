"""The lifecycle verbs: run, auth, check, submit, wait, register, deploy, invoke, teardown."""

from __future__ import annotations

from typing import Any

import click

from amlft.cli.common import finish, lifecycle_command, make_console, run_options, workspace_options


@click.command("run")
@click.option("--keep", is_flag=True, help="Leave the endpoint up after a successful run (on Azure it keeps billing). "
                                          "A failed or interrupted run is always torn down.")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Stop the run if training has not finished after this long: it is torn down (training "
                   "stopped, endpoint deleted) and amlft exits 5.")
@click.option("--from-step", "start_at", type=click.Choice(["check", "data", "submit", "wait", "register", "deploy", "invoke"]),
              help="With --run: resume the run from this step.")
@lifecycle_command("run")
def run_cmd(ctx: Any, keep: bool, timeout: float | None, start_at: str | None) -> None:
    """Every step in order: auth, check, data, submit, wait, register, deploy, invoke, teardown.

    Teardown runs on failure or Ctrl-C, and at the end unless --keep. With no profile this
    runs the offline local demo (jobs/local-demo.yml) on this machine.
    """
    from amlft.lifecycle import run_all

    run_all(ctx, keep=keep, timeout=timeout, start_at=start_at)


@click.command("auth")
@lifecycle_command("auth")
def auth_cmd(ctx: Any) -> None:
    """Resolve the credential and the workspace + `azureml` registry clients (Azure backend)."""
    from amlft.lifecycle import auth

    ctx.console.result(auth=auth(ctx).to_dict())


@click.command("register")
@lifecycle_command("register")
def register_cmd(ctx: Any) -> None:
    """Register the fine-tuned model (MLflow) with lineage tags."""
    from amlft.lifecycle import register

    ctx.console.result(register=register(ctx).to_dict())


@click.command("deploy")
@click.option("--keep-on-failure", is_flag=True,
              help="Azure: if the deployment fails, keep the endpoint for debugging (it keeps billing).")
@click.option("--engine", type=click.Choice(["transformers", "onnxruntime-genai"]),
              help="Local: serving engine for this deploy (default: the profile's local.engine). onnxruntime-genai "
                   "serves the run's int4 ONNX export, exporting it first if needed.")
@lifecycle_command("deploy")
def deploy_cmd(ctx: Any, keep_on_failure: bool = False, engine: str | None = None) -> None:
    """Serve the fine-tuned model: a managed online endpoint on Azure (needs `register`), a local
    scoring server locally (needs the trained model from `wait`; `--engine` picks its engine)."""
    from amlft.lifecycle import deploy

    if engine:
        ctx.options["engine"] = engine
    ctx.console.result(deploy=deploy(ctx, keep_on_failure=keep_on_failure).to_dict())


@click.command("check")
@lifecycle_command("check")
def check_cmd(ctx: Any) -> None:
    """Preflight before anything billable: model, SKUs, cluster, quota, names, cost - all problems at once."""
    from amlft.lifecycle import check

    check(ctx)


@click.command("submit")
@click.option("--dry-run", is_flag=True,
              help="Prepare and validate the data, check the settings and build the job without starting it "
                   "(no credential needed; creates no run).")
@click.option("--export", "export_path", metavar="FILE", help="With --dry-run (Azure): write the pipeline job as az-ml YAML.")
@run_options
def submit_cmd(dry_run: bool, export_path: str | None, run_id: str | None, profile: str | None,
               backend: str | None, overrides: tuple[str, ...], rehearse: bool, faults: tuple[str, ...],
               json_mode: bool) -> None:
    """Start fine-tuning: the registry pipeline `chat_completion_pipeline` on Azure, LoRA training locally.

    Runs check and data first when this run has not passed them yet.
    """
    from amlft.cli.common import open_context, workspace_overrides

    if dry_run:
        from amlft.lifecycle import dry_run as do_dry_run
        from amlft.run_selection import open_dry_run

        console = make_console(json_mode)
        ctx = open_dry_run(run_id=run_id, profile=profile, backend=backend,
                           overrides=[*overrides, *workspace_overrides()], rehearse=rehearse, console=console)
        console.result(dry_run=do_dry_run(ctx, export_path=export_path))
        finish(console)
        return
    if export_path:
        from amlft.errors import ConfigError

        raise ConfigError("--export only works with --dry-run.", hint="Add --dry-run.")
    from amlft.lifecycle import submit

    ctx = open_context("submit", run_id=run_id, profile=profile, backend=backend, overrides=overrides,
                       rehearse=rehearse, faults=faults, json_mode=json_mode)
    ctx.console.result(submit=submit(ctx).to_dict())
    finish(ctx)


@click.command("wait")
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop waiting after this long (exit 5; the job keeps running).")
@lifecycle_command("wait")
def wait_cmd(ctx: Any, timeout: float | None) -> None:
    """Follow the fine-tune until it ends, with live per-step status; explains failures.

    Exit codes: 0 completed, 3 failed, 4 canceled, 5 timed out. On 3-5 it also says what the
    run still has running and how to tear it down.
    """
    from amlft.lifecycle import wait

    ctx.console.result(wait=wait(ctx, timeout=timeout).to_dict())


@click.command("invoke")
@click.option("--file", "file", metavar="FILE", help="Request JSON ({'messages': [...]}) instead of a random test_gen row.")
@click.option("--max-new-tokens", type=int, help="Override invoke.max_new_tokens.")
@click.option("--temperature", type=float, help="Override invoke.temperature.")
@lifecycle_command("invoke")
def invoke_cmd(ctx: Any, file: str | None, max_new_tokens: int | None, temperature: float | None) -> None:
    """Send one chat request to the run's endpoint (Azure ML chat contract, key auth; the key is never shown)."""
    from amlft.lifecycle import invoke

    params: dict[str, Any] = {}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        params["temperature"] = temperature
    invoke(ctx, file=file, parameters=params)


@click.command("teardown")
@click.option("--delete-model", is_flag=True, help="Also delete the model this run registered.")
@click.option("--stale", is_flag=True,
              help="Instead: sweep leaks older than --older-than - this directory's local runs (servers, training) "
                   "and, for an Azure profile or --rehearse, every endpoint amlft created in the workspace.")
@click.option("--older-than", default=None, metavar="AGE",
              help="Age for --stale, e.g. 30m, 4h, 2d (default: the profile's teardown.stale_ttl, 4h).")
@click.option("--dry-run", is_flag=True, help="With --stale: list what would be deleted.")
@click.option("--run", "run_id", metavar="ID", help="Act on this run (default: the most recent one here).")
@click.option("--profile", "profile", metavar="FILE", help="With --stale: the profile naming the workspace.")
@click.option("--backend", type=click.Choice(["local", "azure"]),
              help="With --stale: sweep only this backend (local: this directory's runs; azure: the workspace's "
                   "endpoints).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a profile field.")
@click.option("--rehearse", is_flag=True, help="Against the in-process Azure ML fake.")
@click.option("--fault", "faults", multiple=True, metavar="NAME", help="With --rehearse: inject a fault.")
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON result on stdout.")
@workspace_options
def teardown_cmd(delete_model: bool, stale: bool, older_than: str | None, dry_run: bool, run_id: str | None,
                 profile: str | None, backend: str | None, overrides: tuple[str, ...], rehearse: bool,
                 faults: tuple[str, ...], json_mode: bool) -> None:
    """Stop everything the run created that bills: endpoint/deployment on Azure (and a still-running
    job), the scoring server and training locally. Safe to repeat. --stale sweeps leaks across runs.

    An unreadable run record named with --run is salvaged: what it still names is stopped."""
    from amlft.cli.common import open_context, workspace_overrides

    if stale:
        from amlft.stale import sweep_stale

        console = make_console(json_mode)
        out = sweep_stale(profile=profile, overrides=[*overrides, *workspace_overrides()], older_than=older_than,
                          backend=backend, dry_run=dry_run, rehearse=rehearse, faults=list(faults), console=console)
        console.result(stale=out)
        finish(console)
        return
    from amlft.errors import ConfigError
    from amlft.lifecycle import backend_for, print_summary, teardown
    from amlft.records import UnreadableRecord

    if older_than or dry_run:
        raise ConfigError("--older-than and --dry-run only work with --stale.", hint="Add --stale.")
    try:
        ctx = open_context("teardown", run_id=run_id, profile=profile, backend=backend, overrides=overrides,
                           rehearse=rehearse, faults=faults, json_mode=json_mode)
    except UnreadableRecord:
        if not run_id:
            raise
        ctx = _salvaged_context(run_id, json_mode=json_mode, rehearse=rehearse, faults=list(faults))
    try:
        ctx.console.result(teardown=teardown(ctx, delete_model=delete_model or None).to_dict())
    finally:  # also after Ctrl-C: say what is still running
        print_summary(ctx, backend_for(ctx), kept=False)
    finish(ctx)


def _salvaged_context(run_id: str, *, json_mode: bool, rehearse: bool, faults: list[str]) -> Any:
    """A StepContext over what could be recovered from an unreadable record (or a clear error)."""
    from amlft.config import Profile
    from amlft.context import StepContext
    from amlft.errors import ConfigError, RecordError
    from amlft.records import RunRecord

    console = make_console(json_mode)
    record, notes = RunRecord.salvage(run_id)
    if not record.live_resources():
        raise RecordError(
            f"Run record {record.path} is unreadable and names nothing that is still running ("
            + "; ".join(notes) + ").",
            hint=("If this run deployed on Azure, `amlft teardown --stale --older-than 0s --backend azure --profile "
                  "<your profile> --dry-run` lists every endpoint amlft created (drop --dry-run to delete them). "
                  "Locally, no amlft process works in this run's folder. Once checked, move the file out of "
                  f"{record.path.parent}."))
    backup = record.keep_salvaged()
    console.warn(f"run record {run_id} was unreadable; salvaged " + "; ".join(notes) + f" (damaged file kept as {backup})")
    try:
        prof = Profile.from_dict(record.profile, source=f"salvaged run {run_id}")
    except ConfigError:  # a partly recovered profile: the defaults for its backend
        prof = Profile.from_dict({"backend": record.backend}, source=f"salvaged run {run_id}")
    return StepContext(profile=prof, record=record, console=console, rehearse=record.rehearse or rehearse,
                       faults=faults or list(record.data.get("faults") or []))
