"""Which endpoints to benchmark: a run's endpoint, one URL, or a file listing several.

A target is first a *spec* (what the user wrote) and is resolved into a `Target`
(URL + key) only when its turn comes, so a target that cannot be resolved - a run that
was torn down, an unset key variable - is reported as failed while the others still run.
Keys live only on the resolved `Target` (`repr=False`) and never reach a report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from amlft.console import Console
from amlft.errors import ConfigError
from amlft.extras import needs_extra


class TargetSpec(BaseModel):
    """One entry of a --targets file (or the equivalent flags)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    run: str | None = None
    base_url: str | None = None
    contract: Literal["azureml", "openai"] | None = None
    model: str | None = None
    api_key_env: str | None = None
    deployment: str | None = None

    def label(self) -> str:
        if self.name:
            return self.name
        if self.run is not None:
            return (f"run {self.run}" if self.run else "latest run") + (f" ({self.contract})" if self.contract else "")
        netloc = urlsplit(self.base_url or "").netloc or (self.base_url or "target")
        return f"{netloc}" + (f" {self.model}" if self.model else "")


@dataclass
class Target:
    """A resolved endpoint. `url` is the scoring URI (azureml) or the OpenAI base URL."""

    name: str
    url: str
    contract: str
    model: str = "default"
    key: str | None = field(default=None, repr=False)
    deployment: str | None = None
    run_id: str | None = None

    def describe(self) -> dict[str, Any]:
        """What reports may show: never the key, and the URL without query string or credentials."""
        return {"name": self.name, "contract": self.contract, "url": redact_url(self.url), "model": self.model,
                "deployment": self.deployment, "run_id": self.run_id, "auth": "key" if self.key else "none"}


def redact_url(url: str) -> str:
    """Drop user:password@ and ?query (some gateways take `?api-key=`) before a URL is shown."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def specs_from_flags(*, run_id: str | None, base_url: str | None, targets_file: str | None,
                     contract: str | None, model: str | None, api_key_env: str | None) -> list[TargetSpec]:
    """The targets the flags name; no flags at all means the latest run here."""
    given = [n for n, v in (("--run", run_id), ("--base-url", base_url), ("--targets", targets_file)) if v]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} cannot be combined.",
                          hint="Give one of --run ID, --base-url URL or --targets FILE (list several endpoints there).")
    if targets_file:
        if api_key_env or model:
            raise ConfigError("--api-key-env/--model apply to --base-url only.",
                              hint="Put api_key_env and model on each entry of the --targets file.")
        return load_targets_file(targets_file)
    if base_url:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url {base_url!r} is not an http(s) URL.",
                              hint="e.g. --base-url http://127.0.0.1:8000/v1 (OpenAI-compatible) "
                                   "or https://<endpoint>.<region>.inference.ml.azure.com/score --contract azureml")
        return [TargetSpec(base_url=base_url, contract=contract, model=model, api_key_env=api_key_env)]
    if api_key_env:
        raise ConfigError("--api-key-env applies to --base-url only.",
                          hint="With --run the key is fetched from the run's endpoint.")
    return [TargetSpec(run=run_id or "", contract=contract, model=model)]


def load_targets_file(path_str: str) -> list[TargetSpec]:
    """A JSON or YAML list of targets (or {"targets": [...]}); errors name the entry and field."""
    path = Path(path_str)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--targets {path}: cannot read it ({exc.strerror or exc}).",
                          hint="Give a JSON or YAML file listing targets.") from exc
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # json and yaml parse errors share no narrower base
        raise ConfigError(f"--targets {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}",
                          hint="See `amlft bench --help` for the format.") from exc
    if isinstance(raw, dict) and "targets" in raw:
        raw = raw["targets"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"--targets {path} must hold a non-empty list of targets.",
                          hint='e.g. [{"name": "tuned", "run": "<run-id>"}, '
                               '{"name": "vllm", "base_url": "http://127.0.0.1:8000/v1", "model": "phi3"}]')
    specs: list[TargetSpec] = []
    for i, item in enumerate(raw):
        where = f"--targets {path}, entry {i}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object, got {type(item).__name__}.",
                              hint="Each target is {name, run} or {name, base_url, contract, model, api_key_env}.")
        try:
            spec = TargetSpec.model_validate(item)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: "
                                f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}"
                                for e in exc.errors())
            raise ConfigError(f"{where}: {details}.",
                              hint="Allowed fields: name, run, base_url, contract, model, api_key_env, deployment.") from exc
        if bool(spec.run) == bool(spec.base_url):
            raise ConfigError(f"{where}: give exactly one of run or base_url.",
                              hint="run: a run id here (its endpoint and key come from the run record); "
                                   "base_url: any endpoint URL.")
        specs.append(spec)
    names = [s.label() for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--targets {path}: target name(s) {', '.join(dupes)} appear more than once.",
                          hint="Give each entry a distinct name.")
    return specs


def resolve(spec: TargetSpec, console: Console) -> tuple[Target, Any]:
    """Turn a spec into a Target (+ the run record for --run targets, else None)."""
    if spec.base_url:
        contract = spec.contract or infer_contract(spec.base_url)
        key = None
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise ConfigError(f"Environment variable {spec.api_key_env} is not set (or empty).",
                                  hint=f"export {spec.api_key_env}=<the endpoint key>, or drop api_key_env "
                                       "for an endpoint without auth.")
        return Target(name=spec.label(), url=spec.base_url, contract=contract, model=spec.model or "default",
                      key=key, deployment=spec.deployment), None
    return resolve_run(spec, console)


def infer_contract(url: str) -> str:
    """`.../score` is Azure ML's scoring route; anything else is taken as an OpenAI base URL."""
    return "azureml" if urlsplit(url).path.rstrip("/").endswith("/score") else "openai"


def resolve_run(spec: TargetSpec, console: Console) -> tuple[Target, Any]:
    """The run's endpoint and key, through the run's own backend (the Azure key via the SDK)."""
    from amlft.backends import get_backend
    from amlft.backends.base import StepContext
    from amlft.config import Profile
    from amlft.records import RunRecord

    record = RunRecord.load(spec.run or None)
    profile = Profile.from_dict(record.profile, source=f"run {record.run_id}")
    ctx = StepContext(profile=profile, record=record, console=console, rehearse=record.rehearse,
                      faults=list(record.data.get("faults") or []))
    with needs_extra(record.backend, purpose=f"The {record.backend} backend"):  # local imports psutil at module level
        backend = get_backend(record.backend)
    info = backend.endpoint(ctx)
    contract = spec.contract or info.contract
    if contract == "openai":
        if not info.openai_base_url:
            raise ConfigError(f"Run {record.run_id}'s endpoint has no OpenAI-compatible route.",
                              hint="Drop --contract openai to use its Azure ML scoring contract.")
        url = info.openai_base_url
    else:
        url = info.scoring_uri
    key = backend.endpoint_key(ctx) if info.auth == "key" else None
    deployment = spec.deployment or record.output("deploy").get("deployment_name")
    name = spec.name or f"{record.run_id}" + (f" ({contract})" if spec.contract else "")
    return Target(name=name, url=url, contract=contract, model=spec.model or "default", key=key,
                  deployment=deployment, run_id=record.run_id), record


def describe_spec(spec: TargetSpec) -> dict[str, Any]:
    """What a report shows for a target that could not be resolved."""
    return {"name": spec.label(), "contract": spec.contract, "url": redact_url(spec.base_url) if spec.base_url else None,
            "model": spec.model, "deployment": spec.deployment, "run_id": spec.run or None, "auth": None}

