"""Which run a command acts on, and with which profile.

- `--run ID` always names the run.
- Steps up to `submit` continue the latest run when it has started nothing billable and used
  the same profile file; otherwise they start a new run. `amlft run` always starts a new run.
- Later steps act on the latest run.

While a run has started nothing billable, continuing it re-reads the profile file and the
flags given now (a fixed typo takes effect; a dropped `--set` is dropped) and says what
changed. Once it has started billable work its recorded profile is what it runs with: a
changed profile is refused, with the two ways forward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from amlft.config import Profile, resolve_profile_path
from amlft.console import Console
from amlft.context import StepContext
from amlft.errors import ConfigError
from amlft.records import RunRecord, list_runs

__all__ = ["PRE_SUBMIT_STEPS", "open_dry_run", "open_run", "profile_changes"]

# Steps before training starts may begin a new run; later ones only act on an existing run.
PRE_SUBMIT_STEPS = ("auth", "check", "data", "submit", "run")
# Workspace coordinates given once (flags, env) stay with the run when its profile is re-read.
_WORKSPACE_KEYS = ("subscription_id", "resource_group", "workspace_name")


def profile_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'a.b: old -> new' for every leaf that differs."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(profile_changes(a, b, path + "."))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def _same_file(a: str | Path | None, b: str | Path | None) -> bool:
    return bool(a) and bool(b) and os.path.abspath(str(a)) == os.path.abspath(str(b))


def _latest_continuable(console: Console) -> RunRecord | None:
    """The latest run, if it is readable; an unreadable newest record is reported, not skipped."""
    runs = list_runs()
    if not runs:
        return None
    if runs[0].get("unreadable"):
        console.warn(f"the newest run record ({runs[0]['run_id']}) is unreadable: {runs[0].get('error')}; "
                     f"starting a new run. `amlft teardown --run {runs[0]['run_id']}` stops what it salvages from it.")
        return None
    return RunRecord.load(runs[0]["run_id"])


def _reread(record: RunRecord, *, profile: str | None, backend: str | None,
            overrides: list[str]) -> tuple[Profile, Path | None]:
    """The profile as the file and the flags say now (file: the flag, $AMLFT_PROFILE, else the run's)."""
    recorded_path = record.data.get("profile_path")
    if profile or os.environ.get("AMLFT_PROFILE") or not recorded_path:
        path: Path | None = resolve_profile_path(profile) if (profile or recorded_path or
                                                               os.environ.get("AMLFT_PROFILE")) else None
    else:
        path = Path(recorded_path)
    if path is None or not path.exists():  # a run created from a dict (library, tests): flags over the record
        prof = Profile.from_dict(record.profile, source=f"run {record.run_id}", overrides=overrides)
        return prof, None
    raw = Profile.from_yaml(path).to_dict()
    ws_recorded = (record.profile.get("workspace") or {})
    for k in _WORKSPACE_KEYS:
        if not raw["workspace"].get(k) and ws_recorded.get(k):
            raw["workspace"][k] = ws_recorded[k]
    prof = Profile.from_dict(raw, source=str(path), overrides=overrides)
    if backend:
        prof.backend = backend  # type: ignore[assignment]
    else:
        prof.backend = record.backend  # type: ignore[assignment]
    return prof, path


def _continue_unbilled(record: RunRecord, console: Console, *, profile: str | None, backend: str | None,
                       overrides: list[str]) -> Profile:
    prof, path = _reread(record, profile=profile, backend=backend, overrides=overrides)
    if prof.backend != record.backend:
        raise ConfigError(f"Run {record.run_id} uses the {record.backend} backend; --backend {prof.backend} "
                          "would change it.", hint="Start a new run (leave out --run), or drop --backend.")
    changes = profile_changes(record.profile, prof.to_dict())
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        console.info(f"continuing run {record.run_id}; profile changed: {shown}")
        record.data["profile"] = prof.to_dict()
        if path is not None:
            record.data["profile_path"] = str(path)
        # what was checked and prepared was for the old profile
        for step in ("check", "data"):
            record.data["steps"].pop(step, None)
        record.event("profile re-read before anything billable started", changes=changes)
    else:
        console.info(f"continuing run {record.run_id} (profile {path or 'as recorded'} unchanged)")
    return prof


def _keep_recorded(record: RunRecord, console: Console, step: str, why: str, *, profile: str | None,
                   backend: str | None, overrides: list[str]) -> Profile:
    """A run that started billable work keeps its profile; a request to change it is refused."""
    recorded = Profile.from_dict(record.profile, source=f"run {record.run_id}")
    if backend and backend != record.backend:
        raise ConfigError(f"Run {record.run_id} runs on the {record.backend} backend ({why}).",
                          hint="Drop --backend, or start a new run.")
    ws_only = all(o.split("=", 1)[0].strip().startswith("workspace.") for o in overrides)
    if profile or overrides:
        wanted = (Profile.from_yaml(profile, overrides=overrides) if profile
                  else Profile.from_dict(record.profile, source=f"run {record.run_id}", overrides=overrides))
        wanted.backend = recorded.backend
        changes = [c for c in profile_changes(record.profile, wanted.to_dict())
                   if not (ws_only and not profile and c.startswith("workspace.") and "None ->" in c)]
        if changes:
            raise ConfigError(
                f"Run {record.run_id} has already started billable work ({why}) with its recorded profile; "
                f"refusing to change it now: {'; '.join(changes[:8])}.",
                hint=f"Start a new run for the new profile (`amlft run --profile ...`, or `amlft check --profile ...` "
                     f"then the next steps), or act on this run as it is: `amlft {step} --run {record.run_id}` "
                     "without --set/--profile.")
        if ws_only and overrides:  # coordinates given now fill the ones the run did not record
            record.data["profile"] = wanted.to_dict()
            record.save()
            return wanted
    elif record.data.get("profile_path") and step in PRE_SUBMIT_STEPS:
        path = Path(str(record.data["profile_path"]))
        try:
            current = Profile.from_yaml(path).to_dict() if path.exists() else None
        except ConfigError:
            current = None
        if current is not None:
            current["backend"] = record.backend
            for k in _WORKSPACE_KEYS:
                current["workspace"][k] = current["workspace"].get(k) or record.profile.get("workspace", {}).get(k)
            if profile_changes(record.profile, current):
                console.warn(f"{path} changed since run {record.run_id} started billable work; the run keeps "
                             "its recorded profile (start a new run to use the new one)")
    return recorded


def open_run(step: str, *, run_id: str | None, profile: str | None, backend: str | None,
             overrides: list[str], rehearse: bool, faults: list[str], console: Console,
             options: dict[str, Any] | None = None) -> StepContext:
    """Find or start the run a command acts on and build its StepContext (see the module docstring)."""
    record: RunRecord | None = None
    if run_id:
        record = RunRecord.load(run_id)
    elif step not in PRE_SUBMIT_STEPS:
        record = RunRecord.load(None)  # the latest run; a clear error when there is none or it is unreadable
    elif step != "run":
        latest = _latest_continuable(console)
        if latest is not None and not latest.billable_started() and not (backend and backend != latest.backend) \
                and (rehearse == latest.rehearse or not rehearse):
            wanted = profile or os.environ.get("AMLFT_PROFILE")
            if not wanted or _same_file(wanted, latest.data.get("profile_path")):
                record = latest
    if faults and not (rehearse or (record is not None and record.rehearse)):
        raise ConfigError("--fault only works with --rehearse.", hint="Add --rehearse.")
    if record is None:
        path = resolve_profile_path(profile)
        prof = Profile.from_yaml(path, overrides=overrides)
        if backend:
            prof.backend = backend  # type: ignore[assignment]
        record = RunRecord.create(backend=prof.backend, profile=prof.to_dict(), profile_path=str(path),
                                  rehearse=rehearse)
        console.info(f"run {record.run_id} ({prof.backend} backend, profile {path})")
        record.data["faults"] = list(dict.fromkeys(faults))
    else:
        if rehearse and not record.rehearse:
            raise ConfigError(f"Run {record.run_id} was not started with --rehearse; it talks to real Azure.",
                              hint="Start a new rehearsal with --profile ... --rehearse.")
        why = record.billable_started()
        if why is None and step in PRE_SUBMIT_STEPS:
            prof = _continue_unbilled(record, console, profile=profile, backend=backend, overrides=overrides)
            record.data["faults"] = list(dict.fromkeys(faults))  # the flags given now, not old typos
        elif why is None:  # a later step on a run that never trained: flags apply as given
            prof = Profile.from_dict(record.profile, source=f"run {record.run_id}", overrides=overrides)
            record.data["profile"] = prof.to_dict()
        else:
            prof = _keep_recorded(record, console, step, why, profile=profile, backend=backend, overrides=overrides)
            record.data["faults"] = list(dict.fromkeys([*(record.data.get("faults") or []), *faults]))
    record.save()
    console.result(run_id=record.run_id, backend=record.backend)
    return StepContext(profile=prof, record=record, console=console, rehearse=record.rehearse,
                       faults=list(record.data.get("faults") or []), options=dict(options or {}))


def open_dry_run(*, run_id: str | None, profile: str | None, backend: str | None, overrides: list[str],
                 rehearse: bool, console: Console) -> StepContext:
    """A throwaway run for `submit --dry-run`, kept in `.amlft/dry-runs/`: it never becomes
    "the latest run". With --run, it checks that run's profile and reuses its prepared data."""
    from amlft.records import new_run_id

    source = RunRecord.load(run_id) if run_id else None
    if source is not None:
        prof = Profile.from_dict(source.profile, source=f"run {source.run_id}", overrides=overrides)
        path = source.data.get("profile_path")
        rehearse = rehearse or source.rehearse
    else:
        path = str(resolve_profile_path(profile))
        prof = Profile.from_yaml(path, overrides=overrides)
    if backend:
        prof.backend = backend  # type: ignore[assignment]
    record = RunRecord.create(backend=prof.backend, profile=prof.to_dict(), profile_path=path, rehearse=rehearse,
                              run_id=new_run_id(f"dry-{prof.name}"), folder="dry-runs")
    if source is not None and source.output("data").get("train_file"):
        record.data["outputs"]["data"] = source.output("data")
        record.save()
    console.info(f"dry run of {f'run {source.run_id}' if source else path} ({prof.backend} backend); "
                 "it starts nothing and creates no run")
    return StepContext(profile=prof, record=record, console=console, rehearse=rehearse)
