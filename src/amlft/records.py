"""Run records: one atomic JSON journal per run, `.amlft/runs/<run-id>.json`.

Why a journal: a fine-tune outlives the process that started it (a Ctrl-C'd terminal,
a second GitHub Actions job). Every resource a step creates is written here *before*
the step waits on it, so any later process can resume, inspect or tear down exactly
what this run made - and nothing else.

A run has an *outcome* (pending, running, succeeded, failed, canceled) kept apart from its
last step (`status`, e.g. "teardown:succeeded"): tearing down a failed run does not make it
a success, and asking a torn-down endpoint a question does not make a trained run a failure.

A record that cannot be read (truncated, not UTF-8, not a run record) is reported by name,
never skipped when choosing "the latest run"; `RunRecord.salvage` recovers the resources it
still names so `amlft teardown --run ID` can stop them.

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
from typing import Any, TypeVar

from pydantic import ValidationError

from amlft.errors import JobCanceled, RecordError, WaitTimeout
from amlft.extras import needs_extra
from amlft.outputs import StepOutput, model_for

__all__ = ["OUTCOMES", "RunRecord", "UnreadableRecord", "atomic_write_json", "delete_secrets", "list_runs",
           "load_secret", "new_run_id", "read_record_file", "state_dir", "store_secret", "valid_run_id"]

_T = TypeVar("_T", bound=StepOutput)
SCHEMA_VERSION = 1
OUTCOMES = ("pending", "running", "succeeded", "failed", "canceled")
# Steps that ask about a run rather than move it forward: their failure is not the run's failure.
QUERY_STEPS = ("invoke", "teardown")
# What a step's success says about the run.
_OUTCOME_AFTER = {"auth": "pending", "check": "pending", "data": "pending", "submit": "running",
                  "wait": "succeeded", "register": "succeeded", "deploy": "succeeded"}
_REQUIRED: dict[str, type] = {"run_id": str, "backend": str, "steps": dict, "resources": list, "outputs": dict}
_SECRET_KEY = re.compile(r"(?i)^(.*_)?(key|primary_?key|secondary_?key|api_?key|token|access_?token|secret|password)$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
# Resources that hold nothing while they exist (data and model assets): they do not count as "started".
_PASSIVE_KINDS = ("azureml.data", "azureml.model", "local.model")


def now_iso(*, precise: bool = False) -> str:
    """UTC now; `precise` (microseconds) where it orders runs created within the same second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")


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


def valid_run_id(run_id: str) -> str:
    """A run id names a file in the runs folder: refuse anything that could point elsewhere (`../x`)."""
    if not _RUN_ID.match(run_id or "") or ".." in run_id:
        raise RecordError(f"{run_id!r} is not a run id.",
                          hint="Run ids look like local-demo-20260101-120000-ab12 (letters, digits, '.', '_', '-'); "
                               "`amlft runs` lists the runs here.")
    return run_id


def new_run_id(name: str = "run") -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24] or "run"
    return f"{slug}-{stamp}-{_secrets.token_hex(2)}"


class UnreadableRecord(RecordError):
    """A run record file exists but is not a readable run record; `why` says what is wrong with it."""

    def __init__(self, path: Path, why: str, *, hint: str | None = None) -> None:
        super().__init__(f"Run record {path} is unreadable: {why}.", hint=hint or (
            f"`amlft teardown --run {path.stem}` stops what can be salvaged from it; otherwise restore the "
            f"file from your CI artifacts, or move it out of {path.parent} once nothing of it is running."))
        self.path = path
        self.why = why


def read_record_file(path: Path) -> dict[str, Any]:
    """Parse and shape-check one record; raises UnreadableRecord saying exactly what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnreadableRecord(path, f"cannot read it ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableRecord(path, f"not UTF-8 text (bad byte at offset {exc.start})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "empty" if not text.strip() else (
            "truncated JSON" if exc.pos >= len(text.rstrip()) - 1 else "not valid JSON")
        raise UnreadableRecord(path, f"{what} ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(data, dict):
        kind = "null" if data is None else type(data).__name__
        raise UnreadableRecord(path, f"it holds a JSON {kind}, not a run record")
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise UnreadableRecord(path, f"field {key!r} is missing or not a {typ.__name__}")
    return data


def _created_at_hint(path: Path) -> str:
    """When an unreadable record's run started: its created_at if the head survived, else the file's mtime."""
    with contextlib.suppress(OSError):
        m = re.search(rb'"created_at"\s*:\s*"([^"]{10,40})"', path.read_bytes()[:4096])
        if m:
            return m.group(1).decode("ascii", "replace")
    with contextlib.suppress(OSError):
        return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    return ""


class RunRecord:
    """A run's journal. Mutators save immediately, so a crash right after them loses nothing."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    # ----------------------------------------------------------------- create/load
    @classmethod
    def create(cls, *, backend: str, profile: dict[str, Any], profile_path: str | None,
               rehearse: bool = False, root: Path | None = None, run_id: str | None = None,
               folder: str = "runs") -> RunRecord:
        """A new record in `<root>/<folder>/` (folder "dry-runs" keeps a dry run out of `amlft runs`)."""
        root = root or state_dir()
        rid = run_id or new_run_id(str(profile.get("name") or backend))
        if not _RUN_ID.match(rid):
            raise RecordError(f"Invalid run id {rid!r}.", hint="Use letters, digits, '.', '_' and '-'.")
        path = root / folder / f"{rid}.json"
        if path.exists():
            raise RecordError(f"Run {rid} already exists at {path}.", hint="Pick another --run-id.")
        rec = cls(path, {
            "schema": SCHEMA_VERSION,
            "run_id": rid,
            "created_at": now_iso(precise=True),
            "updated_at": now_iso(),
            "backend": backend,
            "rehearse": rehearse,
            "profile_path": profile_path,
            "profile": profile,
            "status": "created",
            "outcome": "pending",
            "steps": {},
            "resources": [],
            "outputs": {},
            "events": [],
        })
        rec.save()
        return rec

    @classmethod
    def load(cls, run_id: str | None = None, *, root: Path | None = None) -> RunRecord:
        """The named run, or the most recently created one in this directory.

        An unreadable newest record is an error naming it, never skipped: acting on the
        run before it would tear down (or resume) the wrong run.
        """
        root = root or state_dir()
        if run_id:
            path = root / "runs" / f"{valid_run_id(run_id)}.json"
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
            newest = runs[0]
            path = root / "runs" / f"{newest['run_id']}.json"
            if newest.get("unreadable"):
                others = [r["run_id"] for r in runs[1:4] if not r.get("unreadable")]
                raise UnreadableRecord(path, newest.get("error") or "unreadable", hint=(
                    "It is the newest run here, so amlft will not guess which run you mean. "
                    f"`amlft teardown --run {newest['run_id']}` stops what can be salvaged from it; "
                    "name another run with --run ID" + (f" (e.g. {', '.join(others)})" if others else "") + "."))
        return cls(path, read_record_file(path))

    @classmethod
    def salvage(cls, run_id: str, *, root: Path | None = None) -> tuple[RunRecord, list[str]]:
        """Rebuild a usable record from an unreadable one, for teardown.

        Recovers every resource object that still parses, the backend, profile and deploy
        output where they survived, and (locally) any live amlft process working in this
        run's folder. Nothing is written: `keep_salvaged()` replaces the damaged file (kept beside
        it as `<id>.json.corrupt`). Returns the record and lines saying what was recovered.
        """
        root = root or state_dir()
        path = root / "runs" / f"{valid_run_id(run_id)}.json"
        text = path.read_bytes().decode("utf-8", errors="replace")
        resources = _salvage_resources(text)
        backend = _salvage_value(text, "backend")
        if backend not in ("local", "azure"):
            backend = "azure" if any(r["kind"].startswith("azureml.") for r in resources) else "local"
        notes = [f"{len(resources)} resource(s) recovered from the damaged record"]
        if backend == "local":
            notes += _salvage_local_processes(root, run_id, resources)
        profile = _salvage_value(text, "profile")
        deploy = _salvage_value(text, "deploy")
        data = {
            "schema": SCHEMA_VERSION, "run_id": run_id, "created_at": _created_at_hint(path), "updated_at": now_iso(),
            "backend": backend, "rehearse": _salvage_value(text, "rehearse") is True,
            "profile_path": _salvage_value(text, "profile_path"),
            "profile": profile if isinstance(profile, dict) else {"backend": backend},
            "faults": [f for f in (_salvage_value(text, "faults") or []) if isinstance(f, str)],
            "status": "salvaged", "outcome": "failed", "outcome_reason": "its record was damaged",
            "steps": {}, "resources": resources,
            "outputs": {"deploy": deploy} if isinstance(deploy, dict) and deploy.get("scoring_uri") else {},
            "events": [],
        }
        return cls(path, data), notes

    def keep_salvaged(self) -> Path:
        """Replace the damaged file with this salvaged record, keeping the damaged one as `<id>.json.corrupt`."""
        backup = self.path.with_name(self.path.name + ".corrupt")
        n = 1
        while backup.exists():
            n += 1
            backup = self.path.with_name(f"{self.path.name}.corrupt{n}")
        os.replace(self.path, backup)
        self.data["salvaged_from"] = str(backup)
        self.event("record salvaged from an unreadable file", backup=str(backup))
        return backup

    def reload(self) -> None:
        self.data = read_record_file(self.path)

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
    def data_dir(self) -> Path:
        """Where the data step writes the run's prepared splits."""
        d = self.run_dir / "data"
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

    def mark_deleted(self, kind: str, name: str, **attrs: Any) -> None:
        with contextlib.suppress(RecordError):
            self.update_resource(kind, name, state="deleted", deleted_at=now_iso(), **attrs)

    def resources(self, kind: str | None = None, *, live_only: bool = False) -> list[dict[str, Any]]:
        return [r for r in self.data["resources"]
                if (kind is None or r["kind"] == kind) and (not live_only or r.get("state") != "deleted")]

    def live_resources(self) -> list[dict[str, Any]]:
        """Resources the record believes alive and holding something: billable ones, and processes
        still running (a local training process bills nothing but holds the machine)."""
        return [r for r in self.resources(live_only=True) if r.get("billable", True) or r.get("state") == "running"]

    def billable_started(self) -> str | None:
        """What says this run has started work that bills or trains (None when nothing has)."""
        if self.step_status("submit") is not None:
            return "it was submitted"
        for r in self.data["resources"]:
            if r["kind"] not in _PASSIVE_KINDS:
                return f"it created {r['kind']} {r['name']}"
        return None

    # ----------------------------------------------------------------- steps & outputs
    def output(self, step: str) -> dict[str, Any]:
        """The step's recorded output as a plain dict ({} when the step has not recorded one)."""
        return dict(self.data["outputs"].get(step) or {})

    def get_output(self, model: type[_T]) -> _T:
        """The step's recorded output, typed: `record.get_output(DataOutput).train_file`."""
        return model.model_validate(self.output(model.step))

    def set_output(self, step: str, **values: Any) -> None:
        """Merge fields into the step's output, validated and coerced by its model (amlft.outputs)."""
        merged = {**self.output(step), **values}
        try:
            typed = model_for(step).model_validate(merged)
        except ValidationError as exc:
            raise RecordError(f"Refusing to record an invalid {step} output: {exc}",
                              hint="This is a bug in amlft: a step recorded a field of the wrong type.") from exc
        self.data["outputs"][step] = typed.to_dict()
        self.save()

    def step_status(self, step: str) -> str | None:
        s = self.data["steps"].get(step)
        return s.get("status") if s else None

    @property
    def outcome(self) -> str:
        """pending | running | succeeded | failed | canceled (derived for records written before it existed)."""
        if self.data.get("outcome") in OUTCOMES:
            return str(self.data["outcome"])
        step, _, state = str(self.data.get("status") or "").partition(":")
        if state == "failed" and step not in QUERY_STEPS:
            return "failed"
        if any(self.step_status(s) == "succeeded" for s in ("wait", "register", "deploy")):
            return "succeeded"
        return "running" if self.step_status("submit") == "succeeded" else "pending"

    def set_outcome(self, outcome: str, reason: str | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
        self.data["outcome"] = outcome
        self.data["outcome_reason"] = reason
        self.save()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Mark a step running/succeeded/failed with timestamps and keep the run's outcome honest.

        Re-raises failures. A query step (invoke, teardown) never turns a run into a failure;
        a canceled job makes it canceled; a `wait --timeout` or a Ctrl-C leaves it as it was
        (the job keeps running).
        """
        entry = self.data["steps"].setdefault(name, {})
        entry.update(status="running", started_at=now_iso(), ended_at=None, error=None)
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        before = self.outcome
        self.data["status"] = f"{name}:running"
        if name not in QUERY_STEPS:
            self.data["outcome"] = "running"
        self.save()
        try:
            yield entry
        except KeyboardInterrupt:
            entry = self.data["steps"].setdefault(name, entry)  # the step may have reloaded the record
            entry.update(status="interrupted", ended_at=now_iso())
            self.data["status"] = f"{name}:interrupted"
            self.data["outcome"] = "running" if name in ("submit", "wait") and self.billable_started() else before
            self.save()
            raise
        except BaseException as exc:
            message = str(getattr(exc, "message", exc))[:2000]
            entry = self.data["steps"].setdefault(name, entry)
            entry.update(status="failed", ended_at=now_iso(), error=message)
            self.data["status"] = f"{name}:failed"
            if name in QUERY_STEPS or isinstance(exc, WaitTimeout):
                self.data["outcome"] = before
            else:
                self.data["outcome"] = "canceled" if isinstance(exc, JobCanceled) else "failed"
                first = message.splitlines()[0] if message else type(exc).__name__
                self.data["outcome_reason"] = f"{name}: {first}"
            self.save()
            raise
        entry = self.data["steps"].setdefault(name, entry)
        entry.update(status="succeeded", ended_at=now_iso())
        self.data["status"] = f"{name}:succeeded"
        if name in _OUTCOME_AFTER:
            self.data["outcome"] = _OUTCOME_AFTER[name]
            self.data["outcome_reason"] = None
        elif name == "teardown" and before == "running":
            self.data["outcome"] = "canceled"
            self.data["outcome_reason"] = "teardown stopped the run before it finished"
        else:
            self.data["outcome"] = before
        self.save()

    def event(self, message: str, **fields: Any) -> None:
        self.data["events"].append({"at": now_iso(), "message": message, **fields})
        self.save()

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "backend": self.backend,
            "rehearse": self.rehearse,
            "outcome": self.outcome,
            "outcome_reason": self.data.get("outcome_reason"),
            "status": self.data.get("status"),
            "created_at": self.data.get("created_at"),
            "profile": self.data.get("profile_path"),
            "live_resources": [f"{r['kind']}:{r['name']}" for r in self.live_resources()],
        }


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Summaries of every run here, newest first. An unreadable record is listed, flagged
    `unreadable` with the reason, at the time it was created (or last written)."""
    root = root or state_dir()
    out: list[dict[str, Any]] = []
    for p in (root / "runs").glob("*.json"):
        try:
            out.append(RunRecord(p, read_record_file(p)).summary())
        except UnreadableRecord as exc:
            out.append({"run_id": p.stem, "status": "unreadable", "outcome": "unreadable", "unreadable": True,
                        "error": exc.why, "created_at": _created_at_hint(p), "live_resources": []})
    out.sort(key=lambda r: (r.get("created_at") or "", r["run_id"]), reverse=True)
    return out


# --------------------------------------------------------------------- salvage
def _salvage_value(text: str, key: str) -> Any:
    """The first value of `"key": ...` in a damaged JSON text that still parses on its own."""
    dec = json.JSONDecoder()
    for m in re.finditer('"' + re.escape(key) + r'"\s*:\s*', text):
        with contextlib.suppress(ValueError):
            return dec.raw_decode(text, m.end())[0]
    return None


def _salvage_resources(text: str) -> list[dict[str, Any]]:
    """Every complete `{"kind": ..., "name": ...}` object left in a damaged record."""
    dec = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for m in re.finditer(r'\{\s*"kind"\s*:', text):
        with contextlib.suppress(ValueError):
            obj = dec.raw_decode(text, m.start())[0]
            if isinstance(obj, dict) and isinstance(obj.get("kind"), str) and isinstance(obj.get("name"), str):
                found.append(obj)
    return found


def _salvage_local_processes(root: Path, run_id: str, resources: list[dict[str, Any]]) -> list[str]:
    """Add live local processes working in this run's folder that the damaged record lost."""
    with needs_extra("local", purpose="Finding a damaged run's local processes"):
        import psutil

    marker = f"{os.sep}artifacts{os.sep}{run_id}{os.sep}"  # train dir / server ready file live there
    known = {r.get("pid") for r in resources}
    notes: list[str] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if proc.info["pid"] in known or marker not in cmd or "amlft.backends.local." not in cmd:
            continue
        server = "amlft.backends.local.server" in cmd
        kind = "local.server" if server else "local.train_process"
        resources.append({"kind": kind, "name": f"salvaged-pid-{proc.info['pid']}", "pid": proc.info["pid"],
                          "port": None, "state": "running", "billable": server, "created_at": now_iso()})
        notes.append(f"found a live {kind} (pid {proc.info['pid']}) working in this run's folder")
    return notes


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
