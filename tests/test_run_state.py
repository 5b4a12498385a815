"""Run state you can trust (issue 11), from the CLI as a user runs it: re-running after a fix,
outcomes apart from the last step, live checks, damaged records, exit codes, dry runs, the
stale sweep."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from amlft.cli.main import main
from amlft.records import RunRecord

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "local-demo.yml"
AZURE = str(ROOT / "jobs" / "phi4-mini-ultrachat.yml")

OUT: list[str] = []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMLFT_HOME", str(tmp_path / ".amlft"))
    yield tmp_path
    from amlft.testing import rehearsal

    rehearsal.stop_all()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`amlft ARGS` in-process: (exit code, stdout + stderr); stdout alone is kept in OUT."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    OUT[:] = [cap.out]
    return code, cap.out + cap.err


def runs_json(capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    code, out = cli(capsys, "runs", "--json")
    assert code == 0, out
    return {r["run_id"]: r for r in json.loads(OUT[0])["runs"]}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------ 1. re-running after a fix
def test_a_fixed_profile_is_reread_by_the_continued_run(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prof = home / "mine.yml"
    prof.write_text(DEMO.read_text().replace("  learning_rate: 0.005", "  learning_rat: 0.005"))
    code, out = cli(capsys, "check", "--profile", str(prof))
    assert code == 1 and "learning_rat" in out
    first = RunRecord.load().run_id

    prof.write_text(DEMO.read_text())  # the fix
    code, out = cli(capsys, "check", "--profile", str(prof))
    assert code == 0, out
    assert f"continuing run {first}; profile changed: " in out and "finetune.learning_rat: 0.005 -> None" in out
    assert RunRecord.load().run_id == first and RunRecord.load().profile["finetune"]["learning_rate"] == 0.005

    code, out = cli(capsys, "check", "--profile", str(prof), "--set", "local.save_steps=7")
    assert code == 0 and "local.save_steps: 25 -> 7" in out
    code, out = cli(capsys, "data")  # the --set is dropped: the continued run drops it too
    assert code == 0 and f"continuing run {first}; profile changed: local.save_steps: 7 -> 25" in out
    assert RunRecord.load(first).profile["local"]["save_steps"] == 25

    other = home / "other.yml"
    other.write_text(DEMO.read_text().replace("name: local-demo", "name: other-demo"))
    os.environ["AMLFT_PROFILE"] = str(other)
    try:
        code, out = cli(capsys, "check")
    finally:
        del os.environ["AMLFT_PROFILE"]
    assert code == 0 and RunRecord.load().run_id != first and RunRecord.load().profile["name"] == "other-demo"


def test_a_mistyped_fault_is_replaced_by_the_next_flags(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "auth", "--profile", AZURE, "--rehearse", "--fault", "trottle")
    assert code == 2 and "Unknown fault(s): trottle" in out
    code, out = cli(capsys, "auth", "--profile", AZURE, "--rehearse", "--fault", "throttle")
    assert code == 0, out
    assert RunRecord.load().data["faults"] == ["throttle"]


def test_a_billable_run_refuses_a_changed_profile(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "submit", "--profile", AZURE, "--rehearse")
    assert code == 0, out
    rid = RunRecord.load().run_id
    code, out = cli(capsys, "data", "--run", rid, "--rehearse", "--set", "finetune.learning_rate=0.001")
    assert code == 2 and "already started billable work" in out and "finetune.learning_rate" in out
    assert "Start a new run" in out and f"--run {rid}" in out
    code, out = cli(capsys, "wait", "--rehearse", "--set", "finetune.learning_rate=0.001")
    assert code == 2 and "refusing to change it" in out
    assert RunRecord.load(rid).profile["finetune"]["learning_rate"] != 0.001
    code, out = cli(capsys, "teardown", "--run", rid)
    assert code == 0, out


# ------------------------------------------------------------------ 2. outcome apart from the last step
def test_a_failed_run_is_failed_after_its_teardown(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "run", "--set", "local.device=cuda", "--set", "local.max_steps=1")  # no GPU here
    assert code == 1
    assert "run " in out and ": failed (check: Preflight found" in out and "left running: none" in out
    (run,) = runs_json(capsys).values()
    assert run["outcome"] == "failed" and run["status"] == "teardown:succeeded"
    code, out = cli(capsys, "runs")
    assert "outcome" in out and "failed" in out and "last step" in out
    code, out = cli(capsys, "runs", "--show", run["run_id"])
    assert code == 0 and f"# run {run['run_id']}: failed" in out
    assert json.loads(OUT[0])["outcome"] == "failed"


# ------------------------------------------------------------------ 4. damaged records
DAMAGE = {
    "empty list": b"[]",
    "null": b"null",
    "invalid UTF-8": b'{"run_id": "\xff\xfe"}',
    "empty object": b"{}",
    "truncated": None,  # the first half of a real record
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_newest_record_is_named_never_skipped(home: Path, capsys: pytest.CaptureFixture[str],
                                                       kind: str) -> None:
    older = RunRecord.create(backend="local", profile={"name": "older"}, profile_path=None, run_id="older-run")
    older.data["created_at"] = "2020-01-01T00:00:00+00:00"
    older.save()
    newest = RunRecord.create(backend="local", profile={"name": "newest"}, profile_path=None, run_id="newest-run")
    text = newest.path.read_bytes()
    newest.path.write_bytes(DAMAGE[kind] if DAMAGE[kind] is not None else text[: len(text) // 2])

    code, out = cli(capsys, "runs")
    assert code == 0 and "newest-run" in out and "unreadable" in out and "Traceback" not in out
    code, out = cli(capsys, "teardown")
    assert code == 2 and str(newest.path) in out and "is unreadable" in out
    assert "--run" in out and "left running" not in out, "must not tear down another run instead"
    assert RunRecord.load("older-run").data["status"] == "created", "the older run was not touched"
    code, out = cli(capsys, "runs", "--show", "newest-run")
    assert code == 2 and "unreadable" in out


def test_a_run_id_that_is_a_path_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / ".amlft").mkdir()
    (home / ".amlft" / "x.json").write_text("{}")
    for args in (("runs", "--show", "../x"), ("teardown", "--run", "../x"), ("wait", "--run", "../x")):
        code, out = cli(capsys, *args)
        assert code == 2 and "'../x' is not a run id" in out, args


@pytest.mark.slow
def test_teardown_salvages_what_a_truncated_record_still_names(home: Path, capsys: pytest.CaptureFixture[str],
                                                               tiny_model_dir: Path) -> None:
    from amlft.backends.local.server import launch

    rec = RunRecord.create(backend="local", profile={"name": "s"}, profile_path=None, run_id="salvage-me")
    handles = []
    for i in range(2):  # two real scoring servers; the damage will cut the second one out of the record
        h = launch(tiny_model_dir, key="k", log_path=rec.run_dir / f"server{i}.log", ready_timeout_s=120)
        handles.append(h)
        rec.add_resource("local.server", f"server-{i}", pid=h.pid, port=h.port, host=h.host, billable=True)
    text = rec.path.read_text()
    cut = text.index('"name": "server-1"')
    rec.path.write_text(text[:cut])  # truncated inside the second resource

    code, out = cli(capsys, "teardown", "--run", "salvage-me")
    assert code == 0, out
    assert "salvaged 1 resource(s) recovered" in out and "found a live local.server" in out
    assert "left running: none" in out
    assert all(_port_free(h.port) for h in handles)
    assert (home / ".amlft" / "runs" / "salvage-me.json.corrupt").exists()
    assert RunRecord.load("salvage-me").data["status"] == "teardown:succeeded"


def test_teardown_of_a_record_with_nothing_to_salvage_says_what_to_do(home: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (home / ".amlft" / "runs").mkdir(parents=True)
    (home / ".amlft" / "runs" / "gone-run.json").write_bytes(b"\xff\xfe")
    code, out = cli(capsys, "teardown", "--run", "gone-run")
    assert code == 2 and "names nothing that is still running" in out and "teardown --stale" in out
    assert (home / ".amlft" / "runs" / "gone-run.json").exists(), "nothing salvaged: the file stays as it was"


# ------------------------------------------------------------------ 5./6./7. messages, ranges, dry run
def test_out_of_range_hyperparameters_fail_check(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "check", "--set", "finetune.num_train_epochs=-1", "--set", "finetune.lora_dropout=1.5")
    assert code == 2
    assert "finetune.num_train_epochs must be greater than 0 (got -1)" in out
    assert "finetune.lora_dropout must be less than 1 (got 1.5)" in out


def test_local_deploy_says_it_needs_the_trained_model(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "data")
    assert code == 0, out
    code, out = cli(capsys, "deploy")
    assert code == 2 and "no trained model to serve yet" in out and "amlft wait" in out


def test_local_dry_run_checks_everything_and_creates_no_run(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "submit", "--dry-run")
    assert code == 0, out
    assert "dry run OK" in out and "learning_rate=0.005" in out and "AttributeError" not in out
    assert runs_json(capsys) == {}, "a dry run creates no run"
    code, out = cli(capsys, "submit", "--dry-run", "--set", "data.source=/nonexistent/data.jsonl")
    assert code == 1 and "/nonexistent/data.jsonl" in out
    code, out = cli(capsys, "submit", "--dry-run", "--export", "job.yml")
    assert code == 2 and "the local backend has none to write" in out
    code, out = cli(capsys, "check")
    assert code == 0 and "continuing run" not in out, "the dry runs left no run to continue"


def test_ctrl_c_during_teardown_still_says_what_is_left(home: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from amlft.backends.local.backend import LocalBackend

    def interrupted(self: LocalBackend, ctx: object, *, delete_model: bool = False) -> dict:
        raise KeyboardInterrupt

    code, _ = cli(capsys, "check")
    monkeypatch.setattr(LocalBackend, "teardown", interrupted)
    code, out = cli(capsys, "teardown")
    assert code == 130 and "left running: none" in out
    code, out = cli(capsys, "run", "--set", "local.device=cuda")  # fails in check, then teardown is interrupted
    assert code == 130 and "teardown interrupted" in out and "left running: none" in out
    rid = out.split("run ", 1)[1].split(" ", 1)[0]
    assert RunRecord.load(rid).outcome == "canceled" and RunRecord.load().run_id == rid


# ------------------------------------------------------------------ 3./5. live resources and exit codes (local)
def _tiny(tiny_model_dir: Path, *more: str) -> list[str]:
    return ["--set", "model.build=null", "--set", f"model.path={tiny_model_dir}", "--set", "local.eval_prompts=0",
            *more]


@pytest.mark.slow
def test_local_liveness_outcome_and_exit_codes(home: Path, capsys: pytest.CaptureFixture[str],
                                               tiny_model_dir: Path) -> None:
    # a kept run: the server is live, and listed as live only while it really is
    code, out = cli(capsys, "run", "--keep", *_tiny(tiny_model_dir, "--set", "local.max_steps=2"))
    assert code == 0, out
    rid = RunRecord.load().run_id
    live = runs_json(capsys)[rid]["live_resources"]
    assert len(live) == 1 and "local scoring server" in live[0]
    pid = RunRecord.load().output("deploy")["pid"]
    os.kill(pid, signal.SIGKILL)
    code, out = cli(capsys, "endpoint", "show")
    assert code == 2 and "not serving" in out and "is gone" in out
    assert runs_json(capsys)[rid]["live_resources"] == []
    assert RunRecord.load(rid).resources("local.server")[0]["state"] == "deleted"
    code, out = cli(capsys, "invoke")
    assert code == 2 and RunRecord.load(rid).outcome == "succeeded", "asking a gone endpoint fails nothing"

    # a running training is live; teardown from "another terminal" makes `wait` exit 4
    code, out = cli(capsys, "submit", *_tiny(tiny_model_dir, "--set", "local.max_steps=5000"))
    assert code == 0, out
    rid2 = RunRecord.load().run_id
    assert any("local training pid" in x for x in runs_json(capsys)[rid2]["live_resources"])
    code, out = cli(capsys, "teardown")
    assert code == 0 and "stopped local.train_process" in out and "left running: none" in out
    code, out = cli(capsys, "wait")
    assert code == 4 and "stopped by `amlft teardown`" in out and f"amlft submit --run {rid2}" in out
    assert RunRecord.load(rid2).outcome == "canceled" and RunRecord.load(rid2).step_status("wait") == "failed"

    # a training that fails: exit 3, the cause and the hint first, the log tail after them
    broken = home / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    code, out = cli(capsys, "submit", *_tiny(broken, "--set", "local.max_steps=2"))
    assert code == 0, out
    code, out = cli(capsys, "wait")
    assert code == 3 and "Traceback" not in out.split("--- last lines of")[0]
    err = out[out.index("error: Local training failed"):]
    assert err.index("hint: ") < err.index("--- last lines of")
    assert f"Nothing of run {RunRecord.load().run_id} is left running" in err

    # --timeout: the run is torn down, and it says so (exit 5)
    code, out = cli(capsys, "run", "--timeout", "1", *_tiny(tiny_model_dir, "--set", "local.max_steps=5000"))
    assert code == 5 and "so this run was torn down: local.train_process:" in out and "left running: none" in out
    assert RunRecord.load().outcome == "canceled"


# ------------------------------------------------------------------ 8. teardown --stale
def test_stale_sweep_uses_the_profiles_ttl_and_says_what_it_sweeps(home: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prof = home / "ttl.yml"
    prof.write_text(DEMO.read_text().replace("  delete_model: false", "  delete_model: false\n  stale_ttl: 3h"))
    code, out = cli(capsys, "teardown", "--stale", "--profile", str(prof), "--dry-run", "--json")
    assert code == 0, out
    res = json.loads(OUT[0])["stale"]
    assert res["older_than"] == "3h" and res["backends"] == ["local"] and "Azure endpoints not swept" in out
    code, out = cli(capsys, "teardown", "--stale", "--backend", "local", "--older-than", "2d", "--json")
    assert code == 0 and json.loads(OUT[0])["stale"]["backends"] == ["local"]
    code, out = cli(capsys, "teardown", "--older-than", "2d")
    assert code == 2 and "only work with --stale" in out


@pytest.mark.slow
def test_stale_sweep_stops_old_local_servers_and_azure_endpoints_and_records_it(
        home: Path, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    from amlft.backends.local.server import launch

    rec = RunRecord.create(backend="local", profile={"name": "leak"}, profile_path=None, run_id="leaky-local")
    h = launch(tiny_model_dir, key="k", log_path=rec.run_dir / "server.log", ready_timeout_s=120)
    rec.add_resource("local.server", "leak", pid=h.pid, port=h.port, host=h.host, billable=True)
    code, out = cli(capsys, "teardown", "--stale", "--backend", "local", "--older-than", "1h")
    assert code == 0 and "kept 1 recent" in out and not _port_free(h.port)
    code, out = cli(capsys, "teardown", "--stale", "--backend", "local", "--older-than", "0s")
    assert code == 0 and "stopped run leaky-local" in out and _port_free(h.port)

    code, out = cli(capsys, "run", "--profile", AZURE, "--rehearse", "--keep")
    assert code == 0, out
    rid = RunRecord.load().run_id
    assert any("endpoint" in x for x in runs_json(capsys)[rid]["live_resources"])
    code, out = cli(capsys, "teardown", "--stale", "--older-than", "0s", "--rehearse", "--backend", "azure")
    assert code == 0 and "deleted endpoint" in out
    assert runs_json(capsys)[rid]["live_resources"] == []
    code, out = cli(capsys, "endpoint", "show", "--rehearse")
    assert code == 2 and "torn down" in out


def test_a_failed_azure_wait_says_what_is_still_running(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "submit", "--profile", AZURE, "--rehearse", "--fault", "finetune_step_fails")
    assert code == 0, out
    rid = RunRecord.load().run_id
    code, out = cli(capsys, "wait", "--rehearse")  # as a second CI job would: a separate command
    assert code == 3
    err = out[out.index("error: Job "):]
    assert err.index("hint: ") < err.index("std_log.txt"), "cause and hint first, the log tail after"
    assert f"Still running for run {rid}: endpoint " in err and f"stop it: amlft teardown --run {rid}" in err
    assert RunRecord.load(rid).outcome == "failed"
    code, out = cli(capsys, "teardown")
    assert code == 0 and "left running: none" in out
    assert RunRecord.load(rid).outcome == "failed", "tearing down a failed run does not make it a success"
