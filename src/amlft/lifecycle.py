"""The ordered lifecycle, backend-agnostic. Each step is recorded in the run record and
is safe to re-run: backends skip work the record says is done.

    auth -> check -> data -> submit -> wait -> register -> deploy -> invoke -> teardown

`run_all` guarantees teardown on failure or Ctrl-C unless the user asked to keep the
endpoint, and always ends by saying what is left running.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

from amlft.backends import get_backend
from amlft.backends.base import Backend, StepContext
from amlft.errors import AmlftError, DataError, PreflightError, RecordError
from amlft.serving import score

STEPS = ("auth", "check", "data", "submit", "wait", "register", "deploy", "invoke", "teardown")


def backend_for(ctx: StepContext) -> Backend:
    return get_backend(ctx.record.backend)


def run_step(ctx: StepContext, name: str, **kwargs: Any) -> Any:
    """Run one step through the backend, journaled."""
    backend = backend_for(ctx)
    ctx.console.step(f"{name}" + (" (rehearsal against the in-process Azure ML fake)" if ctx.rehearse and name == "auth" else ""))
    with ctx.record.step(name):
        if name == "check":
            return check(ctx, backend)
        if name == "invoke":
            return invoke(ctx, backend, **kwargs)
        return getattr(backend, name)(ctx, **kwargs)


def check(ctx: StepContext, backend: Backend) -> list[dict[str, Any]]:
    """Run every preflight check, print all findings, then fail if any is an error."""
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
    return problems


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
    data = ctx.record.output("data")
    split_file = data.get("invoke_file") or data.get("test_file")
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


def invoke(ctx: StepContext, backend: Backend, *, file: str | None = None,
           parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one chat request to the run's endpoint; the same client code for every backend."""
    info = backend.endpoint(ctx)
    key = backend.endpoint_key(ctx)
    messages = pick_invoke_messages(ctx, file)
    params = dict(ctx.profile.invoke.model_dump(), **(parameters or {}))
    ctx.console.info(f"asking {info.name}: {messages[-1]['content'][:120]!r}")
    text = score(info.scoring_uri, key, messages, params, contract=info.contract,
                 timeout=ctx.profile.endpoint.request_timeout_ms / 1000 + 10,
                 deployment=ctx.record.output("deploy").get("deployment_name"))
    ctx.record.set_output("invoke", prompt=messages[-1]["content"][:500], response=text[:2000])
    ctx.console.info(f"answer: {text}")
    ctx.console.result(invoke={"prompt": messages[-1]["content"], "response": text})
    return {"response": text}


def run_all(ctx: StepContext, *, keep: bool = False, timeout: float | None = None,
            start_at: str | None = None) -> dict[str, Any]:
    """Every step in order; teardown on failure or Ctrl-C unless keep=True."""
    backend = backend_for(ctx)
    steps = [s for s in STEPS if s != "teardown"]
    if start_at:
        steps = steps[steps.index(start_at):]
    failed: BaseException | None = None
    teardown_error: AmlftError | None = None
    try:
        for name in steps:
            if name == "wait":
                run_step(ctx, name, timeout=timeout)
            else:
                run_step(ctx, name)
    except BaseException as exc:  # teardown must happen whatever went wrong
        failed = exc
    finally:
        if failed is not None or not keep:
            if isinstance(failed, KeyboardInterrupt):
                ctx.console.warn("interrupted: tearing down what this run created (use --keep to skip)")
            try:
                run_step(ctx, "teardown", delete_model=ctx.profile.teardown.delete_model)
            except AmlftError as exc:
                teardown_error = exc
                ctx.console.error(f"teardown failed: {exc}")
        print_summary(ctx, backend, kept=keep and failed is None)
    if failed is not None:
        raise failed
    if teardown_error is not None:  # a "successful" run that may leave something billing is a failure
        raise teardown_error
    return ctx.record.data["outputs"]


def print_summary(ctx: StepContext, backend: Backend, *, kept: bool) -> None:
    """The last thing a run prints: evaluation, cost, and what is still running."""
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
    ctx.console.info(f"run {rec.run_id}: {rec.data.get('status')}")
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
    ctx.console.result(run_id=rec.run_id, status=rec.data.get("status"), left_running=left)
