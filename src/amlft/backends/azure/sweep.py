"""`amlft teardown --stale`: delete endpoints amlft created that outlived their time.

A safety net for leaks (a runner killed mid-run, a `--keep` forgotten): it lists the
workspace's endpoints and deletes only those tagged `amlft-run-id` whose
`amlft-created-at` is older than the limit. Endpoints without our tag are never touched.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from typing import Any

from amlft.config import Profile, parse_age
from amlft.console import Console
from amlft.errors import ConfigError, RecordError

__all__ = ["sweep_stale_endpoints"]


def _created_at(ep: Any) -> _dt.datetime | None:
    from amlft.backends.azure.endpoints import TAG_CREATED

    raw = (getattr(ep, "tags", None) or {}).get(TAG_CREATED)
    if not raw:
        return None
    try:
        t = _dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _forget_in_record(run_id: str, endpoint: str) -> None:
    """If the swept endpoint's run has a record here, mark the endpoint gone there too."""
    from amlft.backends.azure.endpoints import _mark_gone
    from amlft.records import RunRecord

    with contextlib.suppress(RecordError):
        rec = RunRecord.load(run_id)
        _mark_gone(rec, endpoint)
        rec.event(f"endpoint {endpoint} deleted by `amlft teardown --stale`")


def sweep_stale_endpoints(*, prof: Profile, older_than: str, dry_run: bool, rehearse: bool, faults: list[str],
                          console: Console, now: _dt.datetime | None = None) -> dict[str, Any]:
    """Delete (or with dry_run, list) the workspace's amlft-tagged endpoints older than `older_than`."""
    from amlft.backends.azure.endpoints import TAG_RUN
    from amlft.backends.azure.service import call
    from amlft.backends.azure.session import connect

    limit_s = parse_age(older_than)
    if faults and not rehearse:
        raise ConfigError("--fault only works with --rehearse.", hint="Add --rehearse.")
    sess = connect(prof, rehearse=rehearse, faults=faults, console=console)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    deleted: list[str] = []
    kept: list[str] = []
    skipped: list[str] = []
    for ep in call("Listing online endpoints", lambda: list(sess.ws.online_endpoints.list())):
        tags = getattr(ep, "tags", None) or {}
        if not tags.get(TAG_RUN):
            skipped.append(ep.name)
            continue
        created = _created_at(ep)
        age = (now - created).total_seconds() if created else None
        if age is None or age < limit_s:
            kept.append(ep.name)
            continue
        what = f"{ep.name} (run {tags[TAG_RUN]}, {age / 3600:.1f} h old)"
        if dry_run:
            console.info(f"would delete endpoint {what}")
        else:
            call(f"Deleting endpoint {ep.name}", lambda n=ep.name: sess.ws.online_endpoints.begin_delete(name=n).result())
            console.info(f"deleted endpoint {what}")
            _forget_in_record(str(tags[TAG_RUN]), ep.name)
        deleted.append(ep.name)
    verb = "would delete" if dry_run else "deleted"
    console.info(f"stale sweep (older than {older_than}): {verb} {len(deleted)}, kept {len(kept)} recent, "
                 f"ignored {len(skipped)} not created by amlft")
    return {"older_than": older_than, "dry_run": dry_run, "deleted": deleted, "kept": kept, "not_amlft": skipped}
