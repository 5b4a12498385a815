"""`amlft teardown --stale`: a safety net for leaks (a killed runner, a forgotten `--keep`).

Two sweeps, each deleting only what amlft made and only what is older than the limit:
- local: the runs recorded in this directory whose scoring server or training process still
  runs (checked live) - each is torn down like `amlft teardown --run ID`;
- azure: every endpoint in the workspace tagged `amlft-run-id` (amlft.backends.azure.sweep).

`--backend` picks one; by default the local sweep always runs and the Azure one runs when the
profile is an Azure profile or with --rehearse. The limit defaults to the profile's
`teardown.stale_ttl`.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from amlft.config import Profile, parse_age, resolve_profile_path
from amlft.console import Console
from amlft.context import StepContext
from amlft.errors import ConfigError
from amlft.records import RunRecord, list_runs

__all__ = ["sweep_stale"]


def _age_s(created_at: str | None, now: _dt.datetime) -> float | None:
    try:
        t = _dt.datetime.fromisoformat(str(created_at))
    except ValueError:
        return None
    return (now - (t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc))).total_seconds()


def _sweep_local(limit_s: float, *, dry_run: bool, console: Console) -> dict[str, Any]:
    from amlft.lifecycle import left_running, teardown

    now = _dt.datetime.now(_dt.timezone.utc)
    out: dict[str, Any] = {"stopped": [], "kept": [], "unreadable": []}
    for summary in list_runs():
        rid = summary["run_id"]
        if summary.get("unreadable"):
            console.warn(f"run record {rid} is unreadable ({summary.get('error')}): not swept; "
                         f"`amlft teardown --run {rid}` salvages it")
            out["unreadable"].append(rid)
            continue
        if summary.get("backend") != "local" or not summary.get("live_resources"):
            continue
        rec = RunRecord.load(rid)
        try:
            prof = Profile.from_dict(rec.profile, source=f"run {rid}")
        except ConfigError:
            prof = Profile()
        ctx = StepContext(profile=prof, record=rec, console=console)
        alive = left_running(ctx)  # a live check: the gone ones are marked in the record
        if not alive:
            continue
        ages = [a for a in (_age_s(r.get("created_at"), now) for r in rec.live_resources()) if a is not None]
        age = max(ages) if ages else None
        if age is None or age < limit_s:
            out["kept"].append(rid)
            continue
        what = f"run {rid} ({age / 3600:.1f} h old): {', '.join(alive)}"
        if dry_run:
            console.info(f"would stop {what}")
        else:
            teardown(ctx)
            console.info(f"stopped {what}")
        out["stopped"].append(rid)
    return out


def sweep_stale(*, profile: str | None, overrides: list[str], older_than: str | None, backend: str | None,
                dry_run: bool, rehearse: bool, faults: list[str], console: Console) -> dict[str, Any]:
    """Sweep leaks older than `older_than` (default: the profile's teardown.stale_ttl)."""
    if profile or os.environ.get("AMLFT_PROFILE"):
        prof = Profile.from_yaml(resolve_profile_path(profile), overrides=overrides)
    else:
        prof = Profile.from_dict({"backend": "azure" if rehearse else "local"}, source="defaults", overrides=overrides)
    age = older_than or prof.teardown.stale_ttl
    limit_s = parse_age(age)
    sweeps = [backend] if backend else ["local"] + (["azure"] if rehearse or prof.backend == "azure" else [])
    out: dict[str, Any] = {"older_than": age, "dry_run": dry_run, "backends": sweeps}
    if "local" in sweeps:
        out["local"] = _sweep_local(limit_s, dry_run=dry_run, console=console)
        verb = "would stop" if dry_run else "stopped"
        console.info(f"local sweep (older than {age}): {verb} {len(out['local']['stopped'])} run(s), "
                     f"kept {len(out['local']['kept'])} recent")
    if "azure" in sweeps:
        from amlft.backends.azure.sweep import sweep_stale_endpoints

        out.update(sweep_stale_endpoints(prof=prof, older_than=age, dry_run=dry_run, rehearse=rehearse,
                                         faults=faults, console=console))
    else:
        console.info("Azure endpoints not swept: pass --profile with an Azure profile (or --backend azure), "
                     "or --rehearse")
    return out


