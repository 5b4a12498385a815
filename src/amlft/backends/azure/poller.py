"""Our own wait loop for the pipeline job (instead of `jobs.stream`).

`jobs.stream` has no timeout, swallows Ctrl-C and returns normally on Canceled. This
poller shows the pipeline's and each child step's status with elapsed time, honours
`--timeout`, explains a failure (which step, its error, the tail of its log) and maps
the outcome to distinct exit codes. Ctrl-C stops waiting, not the job.
"""

from __future__ import annotations

import time
from typing import Any

from amlft.backends.azure.service import call, enum_text
from amlft.backends.azure.session import AzureSession
from amlft.console import Console
from amlft.errors import JobCanceled, JobFailed, WaitTimeout

TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}
FAILED = {"Failed", "NotResponding"}
LOG_TAIL_LINES = 40


def _fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def list_steps(sess: AzureSession, parent: str, *, depth: int = 0) -> list[Any]:
    """Child jobs, depth-first: the registry pipeline component is itself a pipeline of steps."""
    kids = list(call(f"Listing the steps of job {parent}", sess.ws.jobs.list, parent_job_name=parent))
    out: list[Any] = []
    for k in kids:
        out.append(k)
        if depth < 2 and enum_text(getattr(k, "type", "")).lower() == "pipeline":
            out.extend(list_steps(sess, k.name, depth=depth + 1))
    return out


def _step_label(job: Any) -> str:
    return str(getattr(job, "display_name", None) or getattr(job, "name", "?"))


def step_error_and_log(sess: AzureSession, step_name: str, *, lines: int = LOG_TAIL_LINES) -> tuple[str | None, str]:
    """The step's error message and the tail of its main log (what jobs.stream would show)."""
    import requests

    details = call(f"Reading the details of step {step_name}", sess.ws.jobs._runs_operations.get_run_details,
                   step_name)
    err = None
    e = getattr(details, "error", None)
    inner = getattr(e, "error", None) if e is not None else None
    if inner is not None:
        err = getattr(inner, "message", None)
    logs: dict[str, str] = dict(getattr(details, "log_files", None) or {})
    if not logs:
        return err, ""
    preferred = [n for n in logs if n.endswith("std_log.txt")] or [n for n in logs if "user_logs" in n] or sorted(logs)
    name = preferred[-1]
    try:
        resp = requests.get(logs[name], timeout=60)
        text = resp.text if resp.ok else f"(could not fetch {name}: HTTP {resp.status_code})"
    except requests.RequestException as exc:
        text = f"(could not fetch {name}: {type(exc).__name__})"
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return err, f"--- {name} (last {lines} lines) ---\n{tail}"


def wait_for_job(sess: AzureSession, job_name: str, *, console: Console, timeout: float | None,
                 run_id: str, resume_hint: str, cancel_hint: str) -> dict[str, Any]:
    """Poll until the job ends. Returns {"status", "duration_s"} or raises JobFailed/JobCanceled/WaitTimeout."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    status = "?"
    poll = sess.poll_interval_s
    try:
        with console.progress(f"fine-tune {job_name}", total=None, unit="steps") as bar:
            while True:
                job = call(f"Reading job {job_name}", sess.ws.jobs.get, job_name)
                status = enum_text(job.status)
                elapsed = time.monotonic() - started
                steps = list_steps(sess, job_name)
                for s in steps:
                    st = enum_text(s.status)
                    if seen.get(s.name) != st:
                        seen[s.name] = st
                        console.info(f"  [{_fmt_elapsed(elapsed)}] step {_step_label(s)}: {st}")
                if seen.get(job_name) != status:
                    seen[job_name] = status
                    console.info(f"  [{_fmt_elapsed(elapsed)}] pipeline {job_name}: {status}")
                done = sum(1 for s in steps if enum_text(s.status) in TERMINAL)
                running = [_step_label(s) for s in steps if enum_text(s.status) not in TERMINAL]
                bar.update(done, total=max(len(steps), 1),
                           status=status + (f" ({', '.join(running[:2])})" if running else ""))
                if status in TERMINAL:
                    break
                if timeout is not None and elapsed >= timeout:
                    raise WaitTimeout(
                        f"Job {job_name} is still {status} after {_fmt_elapsed(elapsed)} (--timeout {timeout:g}s); "
                        "it keeps running in Azure.",
                        hint=f"Resume waiting: {resume_hint}; cancel it: {cancel_hint}")
                time.sleep(poll)
    except KeyboardInterrupt:
        console.warn(f"stopped waiting; job {job_name} continues in Azure (and bills).")
        console.warn(f"  resume: {resume_hint}")
        console.warn(f"  cancel: {cancel_hint}")
        raise
    duration = time.monotonic() - started
    result = {"status": "Failed" if status in FAILED else status, "duration_s": round(duration, 1)}
    if status == "Completed":
        console.info(f"job {job_name} completed in {_fmt_elapsed(duration)}")
        return result
    if status == "Canceled":
        raise JobCanceled(f"Job {job_name} was canceled.", hint=f"Submit again with `amlft submit --run {run_id}`.")
    failed = [s for s in list_steps(sess, job_name) if enum_text(s.status) in FAILED
              and enum_text(getattr(s, "type", "")).lower() != "pipeline"]
    if not failed:
        raise JobFailed(f"Job {job_name} ended {status}.", hint=f"Open the job in Azure ML studio: {job.studio_url}")
    step = failed[0]
    err, log = step_error_and_log(sess, step.name)
    if log:
        console.error(f"step {_step_label(step)} failed; its log:\n{log}")
    raise JobFailed(f"Job {job_name} failed in step {_step_label(step)}" + (f": {err}" if err else "."),
                    hint=f"The log tail is above. Full logs: az ml job download --name {step.name} --all; "
                         f"studio: {getattr(job, 'studio_url', '')}")
