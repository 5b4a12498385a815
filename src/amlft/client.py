"""The typed Python API: one run of the lifecycle, a method per step.

    from amlft import Client

    run = Client("jobs/local-demo.yml", overrides=["local.max_steps=30"])
    run.check(); run.data(); run.submit(); run.wait()
    print(run.deploy().scoring_uri, run.invoke([{"role": "user", "content": "Hi"}]).response)
    run.teardown()

Each method is the CLI verb of the same name, on the same run record (`.amlft/runs/<id>.json`,
or $AMLFT_HOME), so a run started here can be followed with `amlft runs` or finished with
`amlft teardown --run ID`, and the other way round. Methods return the step's typed output
(amlft.outputs) and raise amlft.errors.AmlftError subclasses, each with a `hint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amlft import lifecycle
from amlft.backends.base import EndpointInfo
from amlft.config import Profile
from amlft.console import Console
from amlft.context import StepContext
from amlft.outputs import (
    AuthOutput,
    CheckOutput,
    DataOutput,
    DeployOutput,
    InvokeOutput,
    RegisterOutput,
    SubmitOutput,
    TeardownOutput,
    WaitOutput,
)
from amlft.records import RunRecord
from amlft.run_selection import open_dry_run, open_run

__all__ = ["Client"]


class Client:
    """A run of the lifecycle: a new one from a profile, or an existing one with `run="ID"`.

    - `profile`: a profile file (jobs/*.yml) or a `Profile`; default: the offline local demo.
    - `backend`: "local" or "azure", overriding the profile's.
    - `overrides`: `section.field=value` strings, as `--set` on the CLI.
    - `run`: act on this existing run (its recorded profile) instead of starting one.
    - `rehearse` / `faults`: Azure against the in-process fake, with injected faults.
    - `quiet`: print nothing but warnings (default); False shows the CLI's progress output.
    """

    def __init__(self, profile: str | Path | Profile | None = None, *, backend: str | None = None,
                 overrides: Sequence[str] = (), run: str | None = None, rehearse: bool = False,
                 faults: Sequence[str] = (), quiet: bool = True) -> None:
        console = Console(quiet=quiet)
        if isinstance(profile, Profile):
            prof = Profile.from_dict(profile.to_dict(), source="Profile object", overrides=list(overrides))
            if backend:
                prof.backend = backend  # type: ignore[assignment]
            record = RunRecord.create(backend=prof.backend, profile=prof.to_dict(), profile_path=None,
                                      rehearse=rehearse)
            record.data["faults"] = list(faults)
            record.save()
            self._ctx = StepContext(profile=prof, record=record, console=console, rehearse=rehearse,
                                    faults=list(faults))
        else:
            self._ctx = open_run("run" if run is None else "client", run_id=run,
                                 profile=str(profile) if profile else None, backend=backend,
                                 overrides=list(overrides), rehearse=rehearse, faults=list(faults), console=console)

    # ------------------------------------------------------------------ the run
    @property
    def run_id(self) -> str:
        return self._ctx.record.run_id

    @property
    def record(self) -> RunRecord:
        """The run's journal (resources, step statuses, outputs)."""
        return self._ctx.record

    @property
    def profile(self) -> Profile:
        return self._ctx.profile

    @property
    def outcome(self) -> str:
        """pending | running | succeeded | failed | canceled."""
        return self._ctx.record.outcome

    # ------------------------------------------------------------------ steps
    def auth(self) -> AuthOutput:
        return lifecycle.auth(self._ctx)

    def check(self) -> CheckOutput:
        """Preflight; raises PreflightError (carrying every finding) when something blocks the run."""
        return lifecycle.check(self._ctx)

    def data(self) -> DataOutput:
        return lifecycle.data(self._ctx)

    def submit(self) -> SubmitOutput:
        """Start fine-tuning (check and data first if this run has not passed them)."""
        return lifecycle.submit(self._ctx)

    def dry_run(self, *, export_path: str | None = None) -> dict[str, Any]:
        """Validate and build the job without starting anything; creates no run."""
        ctx = open_dry_run(run_id=self.run_id, profile=None, backend=None, overrides=[],
                           rehearse=self._ctx.rehearse, console=self._ctx.console)
        return lifecycle.dry_run(ctx, export_path=export_path)

    def wait(self, *, timeout: float | None = None) -> WaitOutput:
        """Block until training ends; JobFailed / JobCanceled / WaitTimeout otherwise."""
        return lifecycle.wait(self._ctx, timeout=timeout)

    def register(self) -> RegisterOutput:
        return lifecycle.register(self._ctx)

    def deploy(self, *, keep_on_failure: bool = False) -> DeployOutput:
        return lifecycle.deploy(self._ctx, keep_on_failure=keep_on_failure)

    def invoke(self, messages: list[dict[str, Any]] | None = None, *,
               parameters: dict[str, Any] | None = None) -> InvokeOutput:
        """Ask the endpoint; without messages, a random held-out prompt of the run's data."""
        return lifecycle.invoke(self._ctx, messages=messages, parameters=parameters)

    def endpoint(self) -> EndpointInfo:
        """Where the run's endpoint answers (checked live); its key: `endpoint_key()`."""
        return lifecycle.backend_for(self._ctx).endpoint(self._ctx)

    def endpoint_key(self) -> str:
        return lifecycle.backend_for(self._ctx).endpoint_key(self._ctx)

    def teardown(self, *, delete_model: bool | None = None) -> TeardownOutput:
        return lifecycle.teardown(self._ctx, delete_model=delete_model)

    def left_running(self) -> list[str]:
        """What this run still has running, checked live."""
        return lifecycle.left_running(self._ctx)

    def run(self, *, keep: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Every step in order, as `amlft run` (teardown on failure, and at the end unless keep)."""
        return lifecycle.run_all(self._ctx, keep=keep, timeout=timeout)
