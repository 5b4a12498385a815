"""The lifecycle verbs: run, auth, check, submit, wait, register, deploy, invoke, teardown."""

from __future__ import annotations

from typing import Any

import click

from amlft.cli.common import finish, lifecycle_command, make_console, workspace_options, workspace_overrides


@click.command("run")
@click.option("--keep", is_flag=True, help="Leave the endpoint up after a successful run (on Azure it keeps billing). "
                                          "A failed or interrupted run is always torn down.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up waiting for training after this long.")
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


def _simple(step: str, doc: str) -> click.Command:
    @lifecycle_command(step)
    def cmd(ctx: Any) -> None:
        from amlft.lifecycle import run_step

        out = run_step(ctx, step)
        if isinstance(out, dict):
            ctx.console.result(**{step: out})

    cmd.__doc__ = doc
    return click.command(step)(cmd)


auth_cmd = _simple("auth", "Resolve the credential and the workspace + `azureml` registry clients (Azure backend).")
register_cmd = _simple("register", "Register the fine-tuned model (MLflow) with lineage tags.")


@click.command("deploy")
@click.option("--keep-on-failure", is_flag=True,
              help="Azure: if the deployment fails, keep the endpoint for debugging (it keeps billing).")
@click.option("--engine", type=click.Choice(["transformers", "onnxruntime-genai"]),
              help="Local: serving engine for this deploy (default: the profile's local.engine). onnxruntime-genai "
                   "serves the run's int4 ONNX export, exporting it first if needed.")
@lifecycle_command("deploy")
def deploy_cmd(ctx: Any, keep_on_failure: bool = False, engine: str | None = None) -> None:
    """Deploy the registered model: managed online endpoint on Azure, a local scoring server locally."""
    from amlft.lifecycle import run_step

    ctx.options["keep_on_failure"] = keep_on_failure
    if engine:
        ctx.options["engine"] = engine
    ctx.console.result(deploy=run_step(ctx, "deploy"))


@click.command("check")
@lifecycle_command("check")
def check_cmd(ctx: Any) -> None:
    """Preflight before anything billable: model, SKUs, cluster, quota, names, cost - all problems at once."""
    from amlft.lifecycle import run_step

    run_step(ctx, "check")




@click.command("submit")
@click.option("--dry-run", is_flag=True, help="Validate offline and build the job without submitting (no credential needed).")
@click.option("--export", "export_path", metavar="FILE", help="With --dry-run: write the pipeline job as az-ml YAML.")
@lifecycle_command("submit")
def submit_cmd(ctx: Any, dry_run: bool, export_path: str | None) -> None:
    """Start fine-tuning: the registry pipeline `chat_completion_pipeline` on Azure, LoRA training locally."""
    from amlft.lifecycle import run_step

    if dry_run:
        from amlft.backends import get_backend

        backend = get_backend(ctx.record.backend)
        out = backend.dry_run(ctx, export_path=export_path)  # type: ignore[attr-defined]
        ctx.console.result(dry_run=out)
        return
    ctx.console.result(submit=run_step(ctx, "submit"))


@click.command("wait")
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop waiting after this long (exit 5; the job keeps running).")
@lifecycle_command("wait")
def wait_cmd(ctx: Any, timeout: float | None) -> None:
    """Follow the fine-tune until it ends, with live per-step status; explains failures.

    Exit codes: 0 completed, 3 failed, 4 canceled, 5 timed out.
    """
    from amlft.lifecycle import run_step

    ctx.console.result(wait=run_step(ctx, "wait", timeout=timeout))


@click.command("invoke")
@click.option("--file", "file", metavar="FILE", help="Request JSON ({'messages': [...]}) instead of a random test_gen row.")
@click.option("--max-new-tokens", type=int, help="Override invoke.max_new_tokens.")
@click.option("--temperature", type=float, help="Override invoke.temperature.")
@lifecycle_command("invoke")
def invoke_cmd(ctx: Any, file: str | None, max_new_tokens: int | None, temperature: float | None) -> None:
    """Send one chat request to the run's endpoint (Azure ML chat contract, key auth; the key is never shown)."""
    from amlft.lifecycle import run_step

    params: dict[str, Any] = {}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        params["temperature"] = temperature
    run_step(ctx, "invoke", file=file, parameters=params)


@click.command("teardown")
@click.option("--delete-model", is_flag=True, help="Also delete the model this run registered.")
@click.option("--stale", is_flag=True, help="Instead: delete every endpoint amlft created that is older than --older-than.")
@click.option("--older-than", default="4h", show_default=True, help="Age for --stale, e.g. 30m, 4h, 2d.")
@click.option("--dry-run", is_flag=True, help="With --stale: list what would be deleted.")
@click.option("--run", "run_id", metavar="ID", help="Act on this run (default: the most recent one here).")
@click.option("--profile", "profile", metavar="FILE", help="With --stale: the profile naming the workspace.")
@click.option("--backend", type=click.Choice(["local", "azure"]), help="With --stale: which backend to sweep.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a profile field.")
@click.option("--rehearse", is_flag=True, help="Against the in-process Azure ML fake.")
@click.option("--fault", "faults", multiple=True, metavar="NAME", help="With --rehearse: inject a fault.")
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON result on stdout.")
@workspace_options
def teardown_cmd(delete_model: bool, stale: bool, older_than: str, dry_run: bool, run_id: str | None,
                 profile: str | None, backend: str | None, overrides: tuple[str, ...], rehearse: bool,
                 faults: tuple[str, ...], json_mode: bool) -> None:
    """Stop everything the run created that bills: endpoint/deployment on Azure (and a still-running
    job), the scoring server locally. Safe to repeat. --stale sweeps leaked endpoints across runs."""
    from amlft.cli.common import open_context
    from amlft.lifecycle import backend_for, print_summary, run_step

    if stale:
        from amlft.backends.azure.sweep import sweep_stale_endpoints

        console = make_console(json_mode)
        out = sweep_stale_endpoints(profile=profile, overrides=[*overrides, *workspace_overrides()],
                                    older_than=older_than,
                                    dry_run=dry_run, rehearse=rehearse, faults=list(faults), console=console)
        console.result(stale=out)
        finish(console)
        return
    ctx = open_context("teardown", run_id=run_id, profile=profile, backend=backend, overrides=overrides,
                       rehearse=rehearse, faults=faults, json_mode=json_mode)
    out = run_step(ctx, "teardown", delete_model=delete_model or ctx.profile.teardown.delete_model)
    ctx.console.result(teardown=out)
    print_summary(ctx, backend_for(ctx), kept=False)
    finish(ctx)
