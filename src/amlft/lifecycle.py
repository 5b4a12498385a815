"""The ordered lifecycle, backend-agnostic: one function per step.

    auth -> check -> data -> submit -> wait -> register -> deploy -> invoke -> teardown

Each step function journals itself in the run record (`record.step`), calls its backend
and returns the step's typed output (amlft.outputs). Steps are safe to re-run: backends
skip work the record says is done. The lifecycle - not the backend - decides which steps
a command needs: `submit` runs `check` and `data` first when the run has not passed them.

`run_all` guarantees teardown on failure or Ctrl-C unless the user asked to keep the
endpoint, and always ends by saying what is left running - even when the teardown itself
is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from amlft.backends import get_backend
from amlft.backends.base import Backend
from amlft.console import Console
from amlft.context import StepContext
from amlft.errors import (
    AmlftError,
    DataError,
    JobCanceled,
    JobFailed,
    PreflightError,
    RecordError,
    WaitTimeout,
)
from amlft.extras import needs_extra
from amlft.outputs import (
    AuthOutput,
    CheckOutput,
    DataOutput,
    DeployOutput,
    InvokeOutput,
    RegisterOutput,
    StepOutput,
    SubmitOutput,
    TeardownOutput,
    WaitOutput,
)
from amlft.serving import score

__all__ = [
    "STEPS", "auth", "backend_for", "check", "data", "deploy", "dry_run", "invoke", "left_running", "live_check",
    "pick_invoke_messages", "print_summary", "register", "run_all", "run_step", "submit", "teardown", "wait",
]

STEPS = ("auth", "check", "data", "submit", "wait", "register", "deploy", "invoke", "teardown")


def backend_for(ctx: StepContext) -> Backend:
    """The run's backend; a missing package of its extra (`local`, `azure`) says what to install."""
    name = ctx.record.backend
    with needs_extra(name, purpose=f"The {name} backend"):  # the local backend imports psutil at module level
        return get_backend(name)


@contextlib.contextmanager
def _journaled(ctx: StepContext, name: str, heading: str | None = None) -> Iterator[Backend]:
    """Print the step heading and mark the step in the record for the duration of the block."""
    ctx.console.step(heading or name)
    with ctx.record.step(name):
        yield backend_for(ctx)


# ------------------------------------------------------------------------- steps
def auth(ctx: StepContext) -> AuthOutput:
    """Resolve the credential and the clients; returns the non-secret facts (identity, workspace)."""
    note = " (rehearsal against the in-process Azure ML fake)" if ctx.rehearse else ""
    with _journaled(ctx, "auth", f"auth{note}") as backend:
        return AuthOutput.model_validate(backend.auth(ctx))


def check(ctx: StepContext) -> CheckOutput:
    """Run every preflight check, print all findings, then fail (PreflightError) if any is an error."""
    with _journaled(ctx, "check") as backend:
        problems = backend.check(ctx)
        ctx.record.set_output("check", findings=problems)
        rows = [{"severity": p.get("severity", "error"), "check": p.get("check"), "message": p["message"]}
                for p in problems]
        if rows:
            ctx.console.table(rows, title="Preflight findings")
        ctx.console.result(check=problems)
        if any(p.get("severity", "error") == "error" for p in problems):
            raise PreflightError(problems)
        ctx.console.info("preflight passed: nothing blocks this run")
    return ctx.record.get_output(CheckOutput)


def data(ctx: StepContext) -> DataOutput:
    """Prepare + validate the profile's data (and upload it on Azure)."""
    with _journaled(ctx, "data") as backend:
        return DataOutput.model_validate(backend.data(ctx))


def submit(ctx: StepContext) -> SubmitOutput:
    """Start fine-tuning, after running check and data if this run has not passed them yet
    (so `amlft submit` alone - e.g. the first job of a CI workflow - does what it depends on)."""
    rec = ctx.record
    if rec.step_status("submit") != "succeeded":
        if rec.step_status("check") != "succeeded":
            check(ctx)
        if rec.step_status("data") != "succeeded":
            data(ctx)
    with _journaled(ctx, "submit") as backend:
        return SubmitOutput.model_validate(backend.submit(ctx))


def dry_run(ctx: StepContext, *, export_path: str | None = None) -> dict[str, Any]:
    """Validate and build the job without starting anything (ctx.record should be a dry-run record)."""
    ctx.console.step("submit --dry-run")
    return backend_for(ctx).dry_run(ctx, export_path=export_path)


def wait(ctx: StepContext, *, timeout: float | None = None, explain_left: bool = True) -> WaitOutput:
    """Follow the fine-tune until it ends. A failure, cancellation or timeout raises with exit
    code 3, 4 or 5; with explain_left, its hint also says what this run still has running and
    how to stop it (a job failing does not delete the endpoint created beside it)."""
    try:
        with _journaled(ctx, "wait") as backend:
            return WaitOutput.model_validate(backend.wait(ctx, timeout=timeout))
    except (JobFailed, JobCanceled, WaitTimeout) as exc:
        if explain_left:
            left = left_running(ctx)
            rid = ctx.record.run_id
            tail = (f"Still running for run {rid}: {', '.join(left)}; stop it: amlft teardown --run {rid}"
                    if left else f"Nothing of run {rid} is left running.")
            exc.hint = f"{exc.hint} {tail}" if exc.hint else tail
        raise


def register(ctx: StepContext) -> RegisterOutput:
    """Register the fine-tuned model with lineage tags."""
    with _journaled(ctx, "register") as backend:
        return RegisterOutput.model_validate(backend.register(ctx))


def deploy(ctx: StepContext, *, keep_on_failure: bool = False) -> DeployOutput:
    """Deploy the model: a managed online endpoint on Azure, a local scoring server locally."""
    ctx.options["keep_on_failure"] = keep_on_failure
    with _journaled(ctx, "deploy") as backend:
        return DeployOutput.model_validate(backend.deploy(ctx))


def pick_invoke_messages(ctx: StepContext, file: str | None = None) -> list[dict[str, Any]]:
    """The conversation to send: --file (JSON or JSONL row), else a random row of the invoke split.

    The trailing assistant turn is dropped so the model has something to answer.
    """
    if file:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8").strip()
            try:
                obj = json.loads(text)  # a JSON document, pretty-printed or not
            except json.JSONDecodeError:
                obj = json.loads(text.splitlines()[0])  # a JSONL file: its first row
        except (OSError, IndexError, json.JSONDecodeError) as exc:
            raise DataError(f"--file {path}: {exc}", hint="Give a JSON file with {\"messages\": [...]} or a list of messages.") from exc
        if isinstance(obj, dict) and "input_data" in obj:
            obj = obj["input_data"].get("input_string")
        msgs = obj.get("messages") if isinstance(obj, dict) else obj
        if isinstance(msgs, list) and len(msgs) == 1 and isinstance(msgs[0], list):
            msgs = msgs[0]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"--file {path} holds no messages.", hint='Expected {"messages": [{"role": "user", "content": "..."}]}.')
        return msgs
    prepared = ctx.record.get_output(DataOutput)
    split_file = prepared.invoke_file or prepared.test_file
    if not split_file or not Path(split_file).exists():
        raise RecordError("This run has no prepared invoke data.",
                          hint="Run `amlft data` first, or pass --file request.json.")
    lines = Path(split_file).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise DataError(f"{split_file} is empty.", hint="Pass --file request.json.")
    row = json.loads(random.Random().choice(lines))
    msgs = list(row["messages"])
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs or row["messages"][:1]


def invoke(ctx: StepContext, *, file: str | None = None, messages: list[dict[str, Any]] | None = None,
           parameters: dict[str, Any] | None = None) -> InvokeOutput:
    """Send one chat request to the run's endpoint; the same client code for every backend.

    `messages` (library callers) or `file` (the CLI's --file) say what to ask; neither picks a
    random held-out prompt. A failed invoke never marks the run failed: it asks, it does not build.
    """
    with _journaled(ctx, "invoke") as backend:
        info = backend.endpoint(ctx)
        key = backend.endpoint_key(ctx)
        msgs = messages or pick_invoke_messages(ctx, file)
        params = dict(ctx.profile.invoke.model_dump(), **(parameters or {}))
        ctx.console.info(f"asking {info.name}: {msgs[-1]['content'][:120]!r}")
        text = score(info.scoring_uri, key, msgs, params, contract=info.contract,
                     timeout=ctx.profile.endpoint.request_timeout_ms / 1000 + 10,
                     deployment=ctx.record.get_output(DeployOutput).deployment_name)
        ctx.record.set_output("invoke", prompt=msgs[-1]["content"][:500], response=text[:2000])
        ctx.console.info(f"answer: {text}")
        ctx.console.result(invoke={"prompt": msgs[-1]["content"], "response": text})
    return InvokeOutput(prompt=msgs[-1]["content"], response=text)


def teardown(ctx: StepContext, *, delete_model: bool | None = None) -> TeardownOutput:
    """Stop/delete everything of this run that bills or holds resources. Safe to repeat."""
    if delete_model is None:
        delete_model = ctx.profile.teardown.delete_model
    with _journaled(ctx, "teardown") as backend:
        return TeardownOutput.model_validate(backend.teardown(ctx, delete_model=delete_model))


def left_running(ctx: StepContext) -> list[str]:
    """This run's resources still alive, checked live; an unanswerable check is listed as unknown."""
    try:
        return backend_for(ctx).left_running(ctx)
    except AmlftError as exc:
        return [f"unknown ({exc.message})"]


def live_check(run_id: str, *, console: Console | None = None) -> list[str]:
    """What run `run_id` has alive right now (checked live, the record updated), for `amlft runs`."""
    from amlft.config import Profile
    from amlft.records import RunRecord

    rec = RunRecord.load(run_id)
    try:
        prof = Profile.from_dict(rec.profile, source=f"run {run_id}")
    except AmlftError as exc:
        return [f"unknown ({exc.message.splitlines()[0]})"]
    ctx = StepContext(profile=prof, record=rec, console=Console(quiet=True, json_mode=bool(console and console.json_mode)),
                      rehearse=rec.rehearse, faults=list(rec.data.get("faults") or []))
    return left_running(ctx)


# Name -> step function, for callers that hold a step's name (`amlft run --from-step`, tests).
# Library code calls the functions above directly.
STEP_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "auth": auth, "check": check, "data": data, "submit": submit, "wait": wait, "register": register,
    "deploy": deploy, "invoke": invoke, "teardown": teardown,
}


def run_step(ctx: StepContext, name: str, **kwargs: Any) -> Any:
    """Run one step by name and return its output as a dict (check: its findings)."""
    if name not in STEP_FUNCTIONS:
        raise RecordError(f"Unknown step {name!r}.", hint=f"Steps: {', '.join(STEPS)}.")
    out = STEP_FUNCTIONS[name](ctx, **kwargs)
    if isinstance(out, CheckOutput):
        return out.findings
    return out.to_dict() if isinstance(out, StepOutput) else out


# ------------------------------------------------------------------------- the whole run
def _stopped_text(out: TeardownOutput | None) -> str:
    if out is None:
        return "nothing could be confirmed stopped"
    items = list(out.stopped) + [f"job {k} {v}" for k, v in out.jobs.items()] + \
        [f"endpoint {k} {v}" for k, v in out.endpoints.items()]
    return ", ".join(items) or "nothing was still running"


def run_all(ctx: StepContext, *, keep: bool = False, timeout: float | None = None,
            start_at: str | None = None) -> dict[str, Any]:
    """Every step in order; teardown on failure or Ctrl-C unless keep=True (keep applies to success only).

    With `timeout`, a training that has not finished in time is stopped by the teardown and the
    run ends with exit code 5, saying what was stopped.
    """
    rec = ctx.record
    order: list[tuple[str, Callable[[], Any]]] = [
        ("auth", lambda: auth(ctx)), ("check", lambda: check(ctx)), ("data", lambda: data(ctx)),
        ("submit", lambda: submit(ctx)), ("wait", lambda: wait(ctx, timeout=timeout, explain_left=False)),
        ("register", lambda: register(ctx)), ("deploy", lambda: deploy(ctx)), ("invoke", lambda: invoke(ctx)),
    ]
    if start_at:
        order = order[[name for name, _ in order].index(start_at):]
    failed: BaseException | None = None
    teardown_error: AmlftError | None = None
    torn: TeardownOutput | None = None
    interrupted_teardown = False
    try:
        for _, step_fn in order:
            step_fn()
    except BaseException as exc:  # teardown must happen whatever went wrong
        failed = exc
    finally:
        if failed is not None or not keep:
            if isinstance(failed, KeyboardInterrupt):
                ctx.console.warn("interrupted: tearing down what this run created (use --keep to skip)")
            try:
                torn = teardown(ctx)
            except AmlftError as exc:
                teardown_error = exc
                ctx.console.error(f"teardown failed: {exc}")
            except KeyboardInterrupt:
                interrupted_teardown = True
                ctx.console.warn("teardown interrupted: what is listed below may still be running")
        _settle_outcome(ctx, failed, teardown_error, interrupted_teardown)
        print_summary(ctx, backend_for(ctx), kept=keep and failed is None)
    if interrupted_teardown:
        raise KeyboardInterrupt
    if isinstance(failed, WaitTimeout):
        why = (f"Training had not finished after --timeout {timeout:g}s" if timeout is not None
               else failed.message.rstrip("."))  # e.g. a job that stopped responding
        raise WaitTimeout(f"{why}, so this run was torn down: {_stopped_text(torn)}.",
                          hint=f"Give it longer (--timeout), or start a new run; `amlft runs --show {rec.run_id}` "
                               "shows what was done.") from failed
    if failed is not None:
        raise failed
    if teardown_error is not None:  # a "successful" run that may leave something billing is a failure
        raise teardown_error
    return dict(rec.data["outputs"])


def _settle_outcome(ctx: StepContext, failed: BaseException | None, teardown_error: AmlftError | None,
                    interrupted_teardown: bool) -> None:
    """The run's outcome once `run_all` is over: the steps' failure wins over a teardown that worked."""
    rec = ctx.record
    if isinstance(failed, KeyboardInterrupt) or interrupted_teardown:
        rec.set_outcome("canceled", "interrupted (Ctrl-C)")
    elif isinstance(failed, WaitTimeout):
        rec.set_outcome("canceled", "stopped by --timeout before training finished")
    elif failed is None and teardown_error is not None:
        rec.set_outcome("failed", f"teardown: {teardown_error.message.splitlines()[0]}")
    elif failed is None:
        rec.set_outcome("succeeded")


def print_summary(ctx: StepContext, backend: Backend, *, kept: bool) -> None:
    """The last thing a run prints: evaluation, cost, outcome and what is still running."""
    rec = ctx.record
    ev = rec.output("eval")
    if ev.get("rows"):
        ctx.console.table(ev["rows"], title="Evaluation on held-out prompts (before vs after fine-tuning)")
    cost = rec.output("check").get("cost") or rec.output("cost")
    if cost:
        ctx.console.info(f"cost: {cost.get('summary', cost)}")
    try:
        left = backend.left_running(ctx)
    except AmlftError as exc:
        left = [f"unknown ({exc.message})"]
    except KeyboardInterrupt:
        left = [f"unknown (interrupted; check with `amlft runs` or `amlft teardown --run {rec.run_id}`)"]
    reason = rec.data.get("outcome_reason")
    ctx.console.info(f"run {rec.run_id}: {rec.outcome}" + (f" ({reason})" if reason else "")
                     + f"; last step {rec.data.get('status')}")
    if kept and left:
        info = None
        with contextlib.suppress(AmlftError):
            info = backend.endpoint(ctx)
        if info:
            ctx.console.info(f"endpoint kept: {info.scoring_uri}")
            ctx.console.info(f"  call it:      amlft invoke --run {rec.run_id}")
            ctx.console.info(f"  its key:      amlft endpoint credentials --run {rec.run_id} --json")
            ctx.console.info(f"  tear it down: amlft teardown --run {rec.run_id}")
    ctx.console.info(f"left running: {', '.join(left) if left else 'none'}")
    ctx.console.result(run_id=rec.run_id, status=rec.data.get("status"), outcome=rec.outcome, left_running=left)
