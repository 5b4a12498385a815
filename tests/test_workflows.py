"""The GitHub Actions workflows: actionlint + zizmor clean, least privilege, pinned, and
calling amlft verbs and options that exist, in the lifecycle's order."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = ROOT / "tools" / "actionlint.cjs"
ACTIONLINT_PKG = ROOT / "tools" / "node_modules" / "@tktco" / "node-actionlint"
PINNED = re.compile(r"uses:\s*[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d")


def _zizmor() -> str | None:
    found = shutil.which("zizmor") or str(Path(sys.executable).with_name("zizmor"))
    return found if Path(found).exists() or shutil.which(found) else None


needs_actionlint = pytest.mark.skipif(
    shutil.which("node") is None or not ACTIONLINT_PKG.is_dir(),
    reason="actionlint not installed: needs Node.js and `npm ci --prefix tools` (.ci/run does both)")
needs_zizmor = pytest.mark.skipif(_zizmor() is None, reason="zizmor not installed: pip install -e '.[dev]'")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))


def _on(workflow: dict[str, Any]) -> dict[str, Any]:
    return workflow.get("on", workflow.get(True))  # PyYAML reads the bare key `on` as True


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


BAD_WORKFLOW = """\
on: pull_request
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.title }}"
"""


# ------------------------------------------------------------------ linters
@needs_actionlint
def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(BAD_WORKFLOW)
    result = _run(["node", str(ACTIONLINT), str(bad)])
    assert result.returncode == 1
    assert f"{bad}:7:" in result.stdout and "potentially untrusted" in result.stdout


@needs_zizmor
def test_zizmor_pedantic_passes() -> None:
    result = _run([str(_zizmor()), "--offline", "--persona=pedantic", "--no-progress", str(WORKFLOWS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings" in result.stdout + result.stderr


@needs_zizmor
def test_zizmor_reports_an_insecure_workflow(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_WORKFLOW)
    result = _run([str(_zizmor()), "--offline", "--no-progress", str(bad)])
    assert result.returncode != 0
    for audit in ("unpinned-uses", "template-injection", "artipacked"):
        assert audit in result.stdout


@needs_actionlint
@needs_zizmor
def test_workflows_pass_actionlint_and_zizmor() -> None:
    """scripts/lint_workflows.sh is what CI and developers run; it must pass on our workflows."""
    result = _run(["bash", "scripts/lint_workflows.sh"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 file(s), 0 problem(s)" in result.stderr and "No findings" in result.stdout + result.stderr


# ------------------------------------------------------------------ policy
@pytest.mark.parametrize("name", ["ci.yml", "finetune.yml", "sweep.yml"])
def test_every_action_is_pinned_to_a_commit(name: str) -> None:
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    uses = [line.strip() for line in text.splitlines() if "uses:" in line]
    assert uses and all(PINNED.search(line) for line in uses), uses
    assert "persist-credentials: false" in text


def test_only_the_azure_jobs_get_an_oidc_token() -> None:
    assert _load("ci.yml")["permissions"] == {"contents": "read"}
    for name in ("finetune.yml", "sweep.yml"):
        wf = _load(name)
        assert wf["permissions"] == {}
        (job,) = wf["jobs"].values()
        assert job["permissions"] == {"id-token": "write", "contents": "read"}
        # the environment is what infra/main.bicep's federated credential trusts
        assert job["environment"] == "azureml"


def test_the_long_job_credential_is_selected_in_the_finetune_job() -> None:
    from amlft.backends.azure import github_oidc

    (job,) = _load("finetune.yml")["jobs"].values()
    for var in (github_oidc.CLIENT_ID_VAR, github_oidc.TENANT_ID_VAR):
        assert job["env"][var] == "${{ vars." + var + " }}"
    for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"):
        assert var in job["env"]


def _amlft_calls(workflow: dict[str, Any]) -> list[tuple[str, list[str], dict[str, Any]]]:
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                if not line.lstrip().startswith("amlft "):
                    continue
                words = shlex.split(line.split("|")[0].split(">")[0])
                calls.append((words[1], [w for w in words[2:] if w.startswith("--")], step))
    return calls


def test_finetune_runs_the_lifecycle_in_order_and_always_tears_down() -> None:
    wf = _load("finetune.yml")
    inputs = _on(wf)["workflow_dispatch"]["inputs"]
    assert inputs["profile"]["type"] == "string" and inputs["keep"]["type"] == "boolean"
    calls = _amlft_calls(wf)
    verbs = [verb for verb, _, _ in calls]
    assert verbs == ["check", "data", "submit", "wait", "register", "deploy", "invoke", "bench", "teardown"]
    teardown_step = calls[-1][2]
    assert "always()" in teardown_step["if"] and "inputs.keep != true" in teardown_step["if"]
    (job,) = wf["jobs"].values()
    steps = job["steps"]
    summary = next(s for s in steps if "GITHUB_STEP_SUMMARY" in str(s.get("run", "")))
    upload = next(s for s in steps if "upload-artifact" in str(s.get("uses", "")))
    assert summary["if"] == "always()" and upload["if"] == "always()"
    paths = upload["with"]["path"]
    assert ".amlft/runs/*.json" in paths and ".amlft/artifacts/*/data/report.json" in paths
    assert "!.amlft/secrets/" in paths
    assert upload["with"]["include-hidden-files"] is True  # .amlft is a hidden folder
    assert not re.search(r"^\s*\.amlft/?\s*$", paths, re.M)  # never the whole state folder (secrets)


def test_sweep_deletes_stale_endpoints_on_a_schedule() -> None:
    wf = _load("sweep.yml")
    assert _on(wf)["schedule"][0]["cron"]
    ((verb, flags, _),) = _amlft_calls(wf)
    assert verb == "teardown" and {"--stale", "--older-than"} <= set(flags)


@pytest.mark.parametrize("name", ["finetune.yml", "sweep.yml"])
def test_workflows_call_amlft_verbs_and_options_that_exist(name: str) -> None:
    import click

    from amlft.cli.main import cli

    ctx = click.Context(cli)
    for verb, flags, _ in _amlft_calls(_load(name)):
        command = cli.get_command(ctx, verb)
        assert command is not None, f"amlft {verb} does not exist"
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        assert set(flags) <= known, f"amlft {verb}: unknown option(s) {set(flags) - known}"


def test_ci_installs_cpu_torch_before_the_project() -> None:
    runs = [str(s.get("run", "")) for s in _load("ci.yml")["jobs"]["test"]["steps"]]
    torch_at = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    assert "download.pytorch.org/whl/cpu" in runs[torch_at]
    project_at = next(i for i, r in enumerate(runs) if '-e ".[all,dev]"' in r)
    assert torch_at < project_at
    assert any("pytest" in r for r in runs) and any("ruff check" in r for r in runs)
    assert any("npm ci --prefix tools" in r for r in runs)


# ------------------------------------------------------------------ job summary
def _summary(args: list[str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gha_summary.py"), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_job_summary_shows_steps_outputs_and_what_is_left_running(tmp_path: Path) -> None:
    record = {
        "run_id": "phi3-20250101-abcd", "backend": "azure", "rehearse": False, "status": "deploy:failed",
        "profile_path": "jobs/phi3-mini-ultrachat.yml",
        "steps": {"check": {"status": "succeeded", "started_at": "2025-01-01T00:00:00+00:00",
                            "ended_at": "2025-01-01T00:00:42+00:00"},
                  "wait": {"status": "succeeded", "started_at": "2025-01-01T00:01:00+00:00",
                           "ended_at": "2025-01-01T03:11:00+00:00"},
                  "deploy": {"status": "failed", "error": "Not enough quota | Additional needed: 8"}},
        "outputs": {"submit": {"job_name": "job-1", "studio_url": "https://ml.azure.com/runs/job-1"},
                    "register": {"name": "Phi-3-mini-4k-instruct-ultrachat_200k", "version": "3"},
                    "check": {"cost": {"summary": "cluster $3.67/h; endpoint $3.06/h"}, "findings": [
                        {"severity": "warning", "check": "cluster", "message": "min nodes 1", "fix": "set 0"}]}},
        "resources": [{"kind": "azureml.online_endpoint", "name": "ep-1", "state": "created"},
                      {"kind": "azureml.model", "name": "m", "state": "created", "billable": False},
                      {"kind": "azureml.job", "name": "job-1", "state": "deleted"}],
    }
    runs = tmp_path / ".amlft" / "runs"
    runs.mkdir(parents=True)
    (runs / "phi3-20250101-abcd.json").write_text(json.dumps(record))
    out = _summary(["--state", str(tmp_path / ".amlft")], tmp_path)
    assert "## amlft run `phi3-20250101-abcd`" in out
    assert "| check | ✅ succeeded | 0m42s |" in out and "| wait | ✅ succeeded | 3h10m |" in out
    assert "| deploy | ❌ failed |  | Not enough quota \\| Additional needed: 8 |" in out
    assert "[`job-1`](https://ml.azure.com/runs/job-1)" in out and "`Phi-3-mini-4k-instruct-ultrachat_200k:3`" in out
    assert "**warning** (cluster): min nodes 1" in out
    assert "**Left running:** `azureml.online_endpoint:ep-1`" in out  # not the model, not the deleted job
    assert "amlft teardown --run phi3-20250101-abcd" in out


def test_job_summary_without_a_run_record_explains_and_succeeds(tmp_path: Path) -> None:
    assert "No run record" in _summary(["--run", "missing", "--state", str(tmp_path)], tmp_path)


# ------------------------------------------------------------------ the workflow, rehearsed
def test_finetune_workflow_commands_complete_a_rehearsed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The exact `amlft ...` lines of finetune.yml, in order, against the in-process Azure ML fake."""
    pytest.importorskip("azure.ai.ml")
    import os

    from amlft.cli.main import cli

    monkeypatch.chdir(tmp_path)
    for key, value in {"PROFILE": str(ROOT / "jobs" / "phi4-mini-ultrachat.yml"), "BENCH_OUT": str(tmp_path / "bench-out"),
           "RUNNER_TEMP": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    run_id = ""
    for verb, _, step in _amlft_calls(_load("finetune.yml")):
        line = next(x for x in str(step["run"]).splitlines() if x.lstrip().startswith(f"amlft {verb}"))
        line = line.split(">")[0].replace('$(python -c \'import sys; print(int(float(sys.argv[1]) * 3600))\' "$WAIT_HOURS")', "18000")
        args = [os.path.expandvars(w) for w in shlex.split(line.replace("$RUN_ID", run_id))][1:]
        if verb == "check":
            args.append("--rehearse")
        if verb == "bench":
            args += ["--requests", "3", "--concurrency", "1"]
        cli.main(args=args, prog_name="amlft", standalone_mode=False)
        if verb == "check":
            run_id = json.loads(capsys.readouterr().out)["run_id"]
    from amlft.records import RunRecord

    record = RunRecord.load(run_id)
    assert record.step_status("teardown") == "succeeded"
    assert record.resources("azureml.online_endpoint", live_only=True) == []
    assert (tmp_path / "bench-out" / "report.md").is_file()
    out = _summary(["--run", run_id, "--bench", os.environ["BENCH_OUT"], "--state", os.environ["AMLFT_HOME"]], tmp_path)
    assert "| teardown | ✅ succeeded |" in out and "**Left running:** none" in out
