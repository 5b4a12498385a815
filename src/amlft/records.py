"""Run records: one atomic JSON journal per run, `.amlft/runs/<run-id>.json`.

Why a journal: a fine-tune outlives the process that started it (a Ctrl-C'd terminal,
a second GitHub Actions job). Every resource a step creates is written here *before*
the step waits on it, so any later process can resume, inspect or tear down exactly
what this run made - and nothing else.

Secrets (endpoint keys, tokens) never go into a record: `save()` refuses a record that
carries a secret-looking key with a value. The local scoring server's key lives in
`.amlft/secrets/<run-id>.json` (mode 0600); the record holds only a reference to it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import secrets as _secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amlft.errors import RecordError

SCHEMA_VERSION = 1
_SECRET_KEY = re.compile(r"(?i)^(.*_)?(key|primary_?key|secondary_?key|api_?key|token|access_?token|secret|password)$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def state_dir(cwd: Path | None = None) -> Path:
    """Where records live: $AMLFT_HOME, else ./.amlft (per project directory, like .git)."""
    env = os.environ.get("AMLFT_HOME")
    return Path(env) if env else (cwd or Path.cwd()) / ".amlft"


def atomic_write_json(path: Path, data: Any, *, mode: int | None = None) -> None:
    """Write JSON so readers never see a half-written file (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def find_secrets(obj: Any, path: str = "") -> list[str]:
    """Paths of secret-looking keys that carry a non-empty string value."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_KEY.match(k) and isinstance(v, str) and v:
                found.append(p)
            else:
                found.extend(find_secrets(v, p))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.extend(find_secrets(v, f"{path}[{i}]"))
    return found


def new_run_id(name: str = "run") -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24] or "run"
    return f"{slug}-{stamp}-{_secrets.token_hex(2)}"


class RunRecord:
    """A run's journal. Mutators save immediately, so a crash right after them loses nothing."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    # ----------------------------------------------------------------- create/load
    @classmethod
    def create(cls, *, backend: str, profile: dict[str, Any], profile_path: str | None,
               rehearse: bool = False, root: Path | None = None, run_id: str | None = None) -> RunRecord:
        root = root or state_dir()
        rid = run_id or new_run_id(str(profile.get("name") or backend))
        if not _RUN_ID.match(rid):
            raise RecordError(f"Invalid run id {rid!r}.", hint="Use letters, digits, '.', '_' and '-'.")
        path = root / "runs" / f"{rid}.json"
        if path.exists():
            raise RecordError(f"Run {rid} already exists at {path}.", hint="Pick another --run-id.")
        rec = cls(path, {
            "schema": SCHEMA_VERSION,
            "run_id": rid,
            "created_at": now_iso(),
            "updated_at": now_iso(),
            "backend": backend,
            "rehearse": rehearse,
            "profile_path": profile_path,
            "profile": profile,
            "status": "created",
            "steps": {},
            "resources": [],
            "outputs": {},
            "events": [],
        })
        rec.save()
        return rec

    @classmethod
    def load(cls, run_id: str | None = None, *, root: Path | None = None) -> RunRecord:
        """The named run, or the most recently created one in this directory."""
        root = root or state_dir()
        if run_id:
            path = root / "runs" / f"{run_id}.json"
            if not path.exists():
                known = ", ".join(r["run_id"] for r in list_runs(root)[:5]) or "none"
                raise RecordError(f"No run record {path}.",
                                  hint=f"`amlft runs` lists the runs here (recent: {known}).")
        else:
            runs = list_runs(root)
            if not runs:
                raise RecordError(f"No runs in {root / 'runs'}.",
                                  hint="Start one with `amlft run` (or `amlft check --profile ...`), "
                                       "or cd to the directory where you started it.")
            path = root / "runs" / f"{runs[0]['run_id']}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RecordError(f"Run record {path} is unreadable: {exc}",
                              hint="Restore it from your CI artifacts or start a new run.") from exc
        return cls(path, data)

    def reload(self) -> None:
        self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def save(self) -> None:
        leaked = find_secrets(self.data)
        if leaked:
            raise RecordError(f"Refusing to write secrets into the run record ({', '.join(leaked)}).",
                              hint="This is a bug in amlft: secrets belong in amlft.records.store_secret().")
        self.data["updated_at"] = now_iso()
        atomic_write_json(self.path, self.data)

    # ----------------------------------------------------------------- accessors
    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def backend(self) -> str:
        return str(self.data["backend"])

    @property
    def rehearse(self) -> bool:
        return bool(self.data.get("rehearse"))

    @property
    def root(self) -> Path:
        return self.path.parent.parent

    @property
    def run_dir(self) -> Path:
        """Per-run scratch space for artefacts (data, checkpoints, reports)."""
        d = self.root / "artifacts" / self.run_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def profile(self) -> dict[str, Any]:
        return dict(self.data.get("profile") or {})

    # ----------------------------------------------------------------- resources
    def add_resource(self, kind: str, name: str, **attrs: Any) -> dict[str, Any]:
        """Record a resource *before* waiting on it. Idempotent on (kind, name)."""
        for res in self.data["resources"]:
            if res["kind"] == kind and res["name"] == name:
                res.update(attrs)
                res["state"] = attrs.get("state", "created" if res.get("state") == "deleted" else res["state"])
                self.save()
                return res
        res = {"kind": kind, "name": name, "state": "created", "created_at": now_iso(), **attrs}
        self.data["resources"].append(res)
        self.save()
        return res

    def update_resource(self, kind: str, name: str, **attrs: Any) -> None:
        for res in self.data["resources"]:
            if res["kind"] == kind and res["name"] == name:
                res.update(attrs)
                self.save()
                return
        raise RecordError(f"Run {self.run_id} has no {kind} named {name!r}.")

    def mark_deleted(self, kind: str, name: str) -> None:
        with contextlib.suppress(RecordError):
            self.update_resource(kind, name, state="deleted", deleted_at=now_iso())

    def resources(self, kind: str | None = None, *, live_only: bool = False) -> list[dict[str, Any]]:
        return [r for r in self.data["resources"]
                if (kind is None or r["kind"] == kind) and (not live_only or r.get("state") != "deleted")]

    # ----------------------------------------------------------------- steps & outputs
    def output(self, step: str) -> dict[str, Any]:
        return dict(self.data["outputs"].get(step) or {})

    def set_output(self, step: str, **values: Any) -> None:
        self.data["outputs"].setdefault(step, {}).update(values)
        self.save()

    def step_status(self, step: str) -> str | None:
        s = self.data["steps"].get(step)
        return s.get("status") if s else None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Mark a step running/succeeded/failed with timestamps; re-raises failures."""
        entry = self.data["steps"].setdefault(name, {})
        entry.update(status="running", started_at=now_iso(), ended_at=None, error=None)
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        self.data["status"] = f"{name}:running"
        self.save()
        try:
            yield entry
        except KeyboardInterrupt:
            entry.update(status="interrupted", ended_at=now_iso())
            self.data["status"] = f"{name}:interrupted"
            self.save()
            raise
        except BaseException as exc:
            entry.update(status="failed", ended_at=now_iso(), error=str(getattr(exc, "message", exc))[:2000])
            self.data["status"] = f"{name}:failed"
            self.save()
            raise
        entry.update(status="succeeded", ended_at=now_iso())
        self.data["status"] = f"{name}:succeeded"
        self.save()

    def event(self, message: str, **fields: Any) -> None:
        self.data["events"].append({"at": now_iso(), "message": message, **fields})
        self.save()

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "backend": self.backend,
            "rehearse": self.rehearse,
            "status": self.data.get("status"),
            "created_at": self.data.get("created_at"),
            "profile": self.data.get("profile_path"),
            "live_resources": [f"{r['kind']}:{r['name']}" for r in self.resources(live_only=True)
                               if r.get("billable", True)],
        }


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Summaries of every run here, newest first."""
    root = root or state_dir()
    out: list[dict[str, Any]] = []
    for p in (root / "runs").glob("*.json"):
        try:
            out.append(RunRecord(p, json.loads(p.read_text(encoding="utf-8"))).summary())
        except (OSError, json.JSONDecodeError, KeyError):
            out.append({"run_id": p.stem, "status": "unreadable", "created_at": ""})
    out.sort(key=lambda r: (r.get("created_at") or "", r["run_id"]), reverse=True)
    return out


# --------------------------------------------------------------------- secrets
def _secret_path(root: Path, run_id: str) -> Path:
    return root / "secrets" / f"{run_id}.json"


def store_secret(run_id: str, name: str, value: str, *, root: Path | None = None) -> None:
    """Keep a secret beside (never inside) the run record, readable only by this user."""
    path = _secret_path(root or state_dir(), run_id)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = value
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(path, data, mode=0o600)


def load_secret(run_id: str, name: str, *, root: Path | None = None) -> str | None:
    path = _secret_path(root or state_dir(), run_id)
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(name)


def delete_secrets(run_id: str, *, root: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        _secret_path(root or state_dir(), run_id).unlink()
