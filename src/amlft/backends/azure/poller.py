"""Our own wait loop for the pipeline job (instead of `jobs.stream`).

`jobs.stream` has no timeout, swallows Ctrl-C and returns normally on Canceled. This
poller shows every leaf step's status with the time elapsed, honours `--timeout`,
stops on a job stuck in NotResponding/Paused (see job_status.py), explains a failure
(which leaf step, its error, the tail of its log) and maps the outcome to distinct exit
codes. Ctrl-C stops waiting, not the job.

Why recurse: `chat_completion_pipeline` is a pipeline component, so the job's only
child is a pipeline node and the real steps are that node's children. The SDK returns
run-history children as type "base" (azure-ai-ml 1.35.2,
azure/ai/ml/entities/_job/base_job.py::_BaseJob._load_from_rest), so the node is
recognised by its run property `StepType: SubGraphCloudStep`, not by its type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from amlft.backends.azure.job_status import is_stalled, is_terminal, state_of
from amlft.backends.azure.service import call, enum_text
from amlft.backends.azure.session import AzureSession
from amlft.console import Console
from amlft.errors import JobCanceled, JobFailed, WaitTimeout

LOG_TAIL_LINES = 40
SUBGRAPH_STEP = "SubGraphCloudStep"
MAX_DEPTH = 3


def _fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def is_pipeline_node(job: Any) -> bool:
    """A child that is itself a pipeline: its own children are the steps."""
    props = getattr(job, "properties", None) or {}
    return (enum_text(getattr(job, "type", "")).lower() == "pipeline"
            or str(props.get("StepType", "")) == SUBGRAPH_STEP)


def list_leaf_steps(sess: AzureSession, parent: str, *, depth: int = 0) -> list[Any]:
    """The leaf steps under `parent`, depth-first, in the order run history lists them."""
    kids = list(call(f"Listing the steps of job {parent}", sess.ws.jobs.list, parent_job_name=parent))
    out: list[Any] = []
    for k in kids:
        if depth < MAX_DEPTH and is_pipeline_node(k):
            out.extend(list_leaf_steps(sess, k.name, depth=depth + 1))
        else:
            out.append(k)
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


@dataclass
class WaitHints:
    run_id: str
    resume: str
    cancel: str


class _Watch:
    """What one wait has seen: statuses per step, and since when something has been stalled."""

    def __init__(self, console: Console, job_name: str) -> None:
        self.console = console
        self.job_name = job_name
        self.seen: dict[str, str] = {}
        self.stalled_since: float | None = None

    def report(self, key: str, label: str, status: str, elapsed: float) -> None:
        if self.seen.get(key) == status:
            return
        self.seen[key] = status
        self.console.info(f"  [{_fmt_elapsed(elapsed)}] {label}: {status}")
        state = state_of(status)
        if state.stalled:
            self.console.warn(f"  {label} {state.meaning}.")


def wait_for_job(sess: AzureSession, job_name: str, *, console: Console, timeout: float | None,
                 stalled_timeout: float, run_id: str, resume_hint: str, cancel_hint: str) -> dict[str, Any]:
    """Poll until the job ends. Returns {"status", "duration_s"} or raises JobFailed/JobCanceled/WaitTimeout."""
    hints = WaitHints(run_id, resume_hint, cancel_hint)
    started = time.monotonic()
    watch = _Watch(console, job_name)
    try:
        job, status = _poll_until_done(sess, job_name, watch, hints, started=started, timeout=timeout,
                                       stalled_timeout=stalled_timeout)
    except KeyboardInterrupt:
        console.warn(f"stopped waiting; job {job_name} continues in Azure (and bills).")
        console.warn(f"  resume: {resume_hint}")
        console.warn(f"  cancel: {cancel_hint}")
        raise
    duration = time.monotonic() - started
    if status == "Completed":
        console.info(f"job {job_name} completed in {_fmt_elapsed(duration)}")
        return {"status": status, "duration_s": round(duration, 1)}
    if status == "Canceled":
        raise JobCanceled(f"Job {job_name} was canceled.", hint=f"Submit again with `amlft submit --run {run_id}`.")
    raise _failure(sess, job, job_name, console)


def _poll_until_done(sess: AzureSession, job_name: str, watch: _Watch, hints: WaitHints, *, started: float,
                     timeout: float | None, stalled_timeout: float) -> tuple[Any, str]:
    with watch.console.progress(f"fine-tune {job_name}", total=None, unit="steps") as bar:
        while True:
            job = call(f"Reading job {job_name}", sess.ws.jobs.get, job_name)
            status = enum_text(job.status)
            elapsed = time.monotonic() - started
            steps = list_leaf_steps(sess, job_name)
            for s in steps:
                watch.report(s.name, f"step {_step_label(s)}", enum_text(s.status), elapsed)
            watch.report(job_name, f"pipeline {job_name}", status, elapsed)
            done = sum(1 for s in steps if is_terminal(enum_text(s.status)))
            active = [f"{_step_label(s)} {enum_text(s.status)}" for s in steps
                      if enum_text(s.status) not in ("NotStarted", "") and not is_terminal(enum_text(s.status))]
            bar.update(done, total=max(len(steps), 1),
                       status=f"{status} {_fmt_elapsed(elapsed)}" + (f" ({', '.join(active[:2])})" if active else ""))
            if is_terminal(status):
                return job, status
            _check_stalled(watch, job_name, status, steps, elapsed, stalled_timeout, hints)
            if timeout is not None and elapsed >= timeout:
                raise WaitTimeout(
                    f"Job {job_name} is still {status} after {_fmt_elapsed(elapsed)} (--timeout {timeout:g}s); "
                    "it keeps running in Azure.",
                    hint=f"Resume waiting: {hints.resume}; cancel it: {hints.cancel}")
            time.sleep(sess.poll_interval_s)


def _check_stalled(watch: _Watch, job_name: str, status: str, steps: list[Any], elapsed: float,
                   stalled_timeout: float, hints: WaitHints) -> None:
    """NotResponding/Paused may never end on their own: give them `stalled_timeout`, then stop waiting."""
    stuck = [(f"pipeline {job_name}", status)] if is_stalled(status) else []
    stuck += [(f"step {_step_label(s)}", enum_text(s.status)) for s in steps if is_stalled(enum_text(s.status))]
    if not stuck:
        watch.stalled_since = None
        return
    if watch.stalled_since is None:
        watch.stalled_since = elapsed
    if elapsed - watch.stalled_since < stalled_timeout:
        return
    what, st = stuck[0]
    raise WaitTimeout(
        f"Stopped waiting: {what} has been {st} for {_fmt_elapsed(elapsed - watch.stalled_since)} "
        f"(pipeline.stalled_timeout_s={stalled_timeout:g}); it {state_of(st).meaning}.",
        hint=f"It still holds its compute. Look at its logs in studio, then cancel it: {hints.cancel}; "
             f"or keep waiting: {hints.resume}")


def _failure(sess: AzureSession, job: Any, job_name: str, console: Console) -> JobFailed:
    """The failed leaf step by name, with its error and log tail."""
    failed = [s for s in list_leaf_steps(sess, job_name) if enum_text(s.status) == "Failed"]
    studio = getattr(job, "studio_url", "") or ""
    if not failed:
        return JobFailed(f"Job {job_name} ended {enum_text(job.status)}.",
                         hint=f"Open the job in Azure ML studio: {studio}")
    step = failed[0]
    err, log = step_error_and_log(sess, step.name)
    # cause and fix first, the log tail after them (printed by the CLI's error funnel)
    return JobFailed(f"Job {job_name} failed in step {_step_label(step)}" + (f": {err}" if err else "."),
                     hint=("Its log tail follows. " if log else "")
                     + f"Full logs: az ml job download --name {step.name} --all; studio: {studio}",
                     details=log or None)
