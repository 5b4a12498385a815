"""The Azure lifecycle through the real azure-ai-ml SDK against the in-process fake:
a full rehearsed run, every fault, submit/wait across processes, the stale sweep."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amlft.cli.main import main
from amlft.records import RunRecord
from amlft.testing import FakeAzureML, rehearsal

ROOT = Path(__file__).resolve().parents[1]
PROFILE = str(ROOT / "jobs" / "phi4-mini-ultrachat.yml")  # the flagship
NOTEBOOK = str(ROOT / "jobs" / "phi3-mini-ultrachat.yml")  # the reference notebook, verbatim


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMLFT_HOME", str(tmp_path / ".amlft"))
    yield tmp_path
    rehearsal.stop_all()


LAST_STDOUT: list[str] = []


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run `amlft ARGS` in-process; returns (exit code, stdout + stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    LAST_STDOUT[:] = [cap.out]
    return code, cap.out + cap.err


def fake_after(home: Path) -> FakeAzureML:
    """A view of the rehearsal's world once the command's fake has stopped."""
    rehearsal.stop_all()
    return FakeAzureML(rehearsal.fake_state_path(home / ".amlft"))


def test_rehearsed_run_completes_every_step_and_leaves_nothing(home, capsys):
    code, run_out = cli(capsys, "run", "--profile", PROFILE, "--rehearse")
    assert code == 0, run_out
    assert "REHEARSAL" in run_out and "SUBSTITUTED DATA" in run_out
    assert LAST_STDOUT[0].rstrip().splitlines()[-1] == "left running: none"
    rec = RunRecord.load()
    for step in ("auth", "check", "data", "submit", "wait", "register", "deploy", "invoke", "teardown"):
        assert rec.step_status(step) == "succeeded", step
    o = rec.data["outputs"]
    assert o["check"]["cost"]["endpoint_usd_per_day"] == pytest.approx(73.44)
    assert set(o["data"]["assets"]) == {"train", "test"}
    assert o["submit"]["display_name"].startswith("Phi-4-mini-instruct-ultrachat_200k-bs1-cosine-ds2-lora")
    assert o["wait"]["status"] == "Completed"
    assert o["register"]["name"] == "Phi-4-mini-instruct-HuggingFaceH4-ultrachat_200k"
    assert o["deploy"]["scoring_uri"].endswith("/score") and o["invoke"]["response"]
    kinds = {r["kind"]: r for r in rec.resources()}
    assert kinds["azureml.online_endpoint"]["state"] == "deleted"
    assert "key" not in json.dumps(o["deploy"]).lower()
    # Data assets are versioned by content: a re-run uploads nothing.
    code, out = cli(capsys, "data", "--run", rec.run_id, "--rehearse")
    assert code == 0 and out.count("already uploaded (same content)") == 2 and "uploaded train_sft" not in out
    fake = fake_after(home)
    assert fake.left_running() == []
    assert fake.state["jobs"], "the pipeline job went through the fake"
    # The endpoint key was used by invoke, yet its value appears nowhere amlft writes or prints.
    keys = [k for ep in fake.state["endpoints"].values() for k in ep["keys"].values()]
    assert keys
    written = [p for p in (home / ".amlft").rglob("*") if p.is_file() and "rehearsal" not in p.parts]
    for key in keys:
        assert key not in run_out and key not in out
        for path in written:
            assert key.encode() not in path.read_bytes(), path


FAULTS = {
    # fault: (exit code, what the output must say)
    # azure-core's retry policy retries, and every retry is on the console (issue 10.7)
    "throttle": (0, ["left running: none", "retry 2/5: GET", "answered 429; waiting 1.0s (Retry-After)"]),
    "server_error": (0, ["left running: none", "retry 2/5: GET", "answered 500; waiting"]),
    "model_retired": (1, ["is archived (fine-tuning retired on 2025-08-30)", "--set model.name=Phi-3.5-mini-instruct",
                          "nothing billable was started"]),
    "cluster_failed": (1, ["Cluster gpu-a100 is in provisioning state Failed", "nothing billable was started"]),
    "sku_not_allowed": (1, ["is not in the model's fine-tune allow-list", "Use a cluster of an allowed size"]),
    "finetune_step_fails": (3, ["failed in step chat_completion_finetune", "CUDA out of memory", "std_log.txt"]),
    "deployment_quota": (1, ["Not enough quota", "Additional needed: 8", "The endpoint was deleted"]),
    "container_crash": (1, ["User container has crashed", "Worker failed to boot", "The endpoint was deleted"]),
    "endpoint_name_taken": (1, ["already exists", "set endpoint.name to another name", "canceled job"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(fault, home, capsys):
    want_code, phrases = FAULTS[fault]
    code, out = cli(capsys, "run", "--profile", PROFILE, "--rehearse", "--fault", fault)
    assert code == want_code, out
    for phrase in phrases:
        assert phrase in out, (phrase, out[-3000:])
    assert "left running: none" in out
    fake = fake_after(home)
    assert fake.left_running() == []
    if want_code == 0:
        assert fake.state["fault_hits"][fault] > 0, "the transient fault was injected and retried through"


def test_the_notebook_mirror_fails_check_naming_the_successor(home, capsys):
    """Azure retired Phi-3-mini fine-tuning: the verbatim notebook profile must stop before anything bills."""
    code, out = cli(capsys, "check", "--profile", NOTEBOOK, "--rehearse")
    assert code == 1, out
    assert "Model Phi-3-mini-4k-instruct:15 is archived (fine-tuning retired on 2025-08-30)" in out
    assert "--set model.name=Phi-4-mini-instruct" in out and "nothing billable was started" in out
    assert fake_after(home).state["jobs"] == {}


def test_submit_then_wait_in_separate_processes(home, capsys):
    env = {**os.environ, "AMLFT_HOME": str(home / ".amlft"), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "amlft.cli.main"]
    sub = subprocess.run([*cmd, "submit", "--profile", PROFILE, "--rehearse"], cwd=home, env=env,
                         capture_output=True, text=True, timeout=240)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "follow it: amlft wait --run" in sub.stdout
    rec = RunRecord.load()
    job = rec.output("submit")["job_name"]
    # recorded before anyone waited: the job and the endpoint being created alongside it
    assert {r["kind"] for r in rec.resources(live_only=True)} >= {"azureml.job", "azureml.online_endpoint"}

    code, out = cli(capsys, "wait", "--rehearse", "--timeout", "0")
    assert code == 5 and "keeps running in Azure" in out and f"amlft wait --run {rec.run_id}" in out
    rehearsal.stop_all()

    wait = subprocess.run([*cmd, "wait", "--rehearse", "--json"], cwd=home, env=env, capture_output=True,
                          text=True, timeout=240)
    assert wait.returncode == 0, wait.stdout + wait.stderr
    result = json.loads(wait.stdout)  # --json: stdout is exactly one JSON document
    assert result["wait"]["status"] == "Completed" and result["ok"] is True
    assert "step chat_completion_finetune: Completed" in wait.stderr and job in wait.stderr

    code, out = cli(capsys, "teardown", "--rehearse")
    assert code == 0 and "left running: none" in out
    code, out = cli(capsys, "teardown", "--rehearse")  # idempotent
    assert code == 0 and "nothing of this run is left" in out
    assert fake_after(home).left_running() == []


def test_stale_sweep_deletes_only_old_amlft_endpoints(home, capsys):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    fake = rehearsal.ensure_fake((), root=home / ".amlft")
    ml = fake.ml_client()
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=10)).isoformat()
    fresh = dt.datetime.now(dt.timezone.utc).isoformat()
    for name, tags in (("amlft-old-ep", {"amlft-run-id": "r1", "amlft-created-at": old}),
                       ("amlft-new-ep", {"amlft-run-id": "r2", "amlft-created-at": fresh}),
                       ("someone-elses", {"team": "x"})):
        ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=name, auth_mode="key", tags=tags)).result()
    code, out = cli(capsys, "teardown", "--stale", "--older-than", "4h", "--rehearse", "--dry-run")
    assert code == 0 and "would delete endpoint amlft-old-ep" in out
    code, out = cli(capsys, "teardown", "--stale", "--older-than", "4h", "--rehearse", "--json")
    assert code == 0
    result = json.loads(LAST_STDOUT[0])
    assert result["stale"]["deleted"] == ["amlft-old-ep"]
    assert result["stale"]["kept"] == ["amlft-new-ep"] and result["stale"]["not_amlft"] == ["someone-elses"]
    left = fake_after(home).left_running()
    assert "endpoint:amlft-old-ep" not in left and "endpoint:amlft-new-ep" in left and "endpoint:someone-elses" in left


def _interrupt_first_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while `wait` sleeps between polls, as a user pressing it in a terminal would."""
    import time
    import types

    from amlft.backends.azure import poller

    def sleep(_s: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(poller, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))


def test_ctrl_c_in_wait_leaves_the_job_running_and_says_how_to_resume_or_cancel(home, capsys, monkeypatch):
    code, out = cli(capsys, "submit", "--profile", PROFILE, "--rehearse")
    assert code == 0, out
    run_id = RunRecord.load().run_id
    _interrupt_first_poll(monkeypatch)
    code, out = cli(capsys, "wait", "--rehearse")
    assert code == 130
    assert "continues in Azure" in out
    assert f"resume: amlft wait --run {run_id}" in out
    assert f"cancel: amlft teardown --run {run_id}" in out  # rehearsal: `az ml job cancel` cannot reach the fake
    rec = RunRecord.load(run_id)
    assert rec.step_status("wait") == "interrupted"
    assert [r["state"] for r in rec.resources("azureml.job")] == ["submitted"], "Ctrl-C stops waiting, not the job"


def test_ctrl_c_during_run_tears_down_everything(home, capsys, monkeypatch):
    _interrupt_first_poll(monkeypatch)
    code, out = cli(capsys, "run", "--profile", PROFILE, "--rehearse")
    assert code == 130
    assert "interrupted: tearing down" in out and "canceled job" in out
    assert LAST_STDOUT[0].rstrip().splitlines()[-1] == "left running: none"
    rec = RunRecord.load()
    assert {r["kind"]: r["state"] for r in rec.resources()}["azureml.online_endpoint"] == "deleted"
    assert fake_after(home).left_running() == []


def test_kept_endpoint_show_credentials_then_teardown(home, capsys):
    code, out = cli(capsys, "run", "--profile", PROFILE, "--rehearse", "--keep")
    assert code == 0, out
    assert "tear it down: amlft teardown --run" in out
    code, _ = cli(capsys, "endpoint", "show", "--json")
    shown = json.loads(LAST_STDOUT[0])
    assert code == 0 and shown["scoring_uri"].endswith("/score") and "key" not in shown
    code, out = cli(capsys, "endpoint", "credentials")
    assert code == 2 and "Refusing to print a key" in out
    code, _ = cli(capsys, "endpoint", "credentials", "--json")
    key = json.loads(LAST_STDOUT[0])["key"]
    fake = fake_after(home)
    name = shown["name"]
    assert code == 0 and key == fake.state["endpoints"][name]["keys"]["primaryKey"]
    assert fake.left_running(), "--keep leaves the endpoint up"
    code, out = cli(capsys, "teardown")
    assert code == 0 and "left running: none" in out
    assert fake_after(home).left_running() == []


def test_a_failed_teardown_fails_the_run(home, capsys, monkeypatch):
    """If teardown cannot delete the endpoint, something may still bill: `run` must not exit 0."""
    from amlft.backends.azure.backend import AzureBackend
    from amlft.errors import ServiceError

    def broken_teardown(self, ctx, *, delete_model=False):
        raise ServiceError("Deleting endpoint failed", status=500, hint="Run `amlft teardown` again.")

    monkeypatch.setattr(AzureBackend, "teardown", broken_teardown)
    code, out = cli(capsys, "run", "--profile", PROFILE, "--rehearse")
    assert code == 1
    assert "teardown failed: Deleting endpoint failed" in out
    assert "left running: " in out and "left running: none" not in out
