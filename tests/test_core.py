"""The contracts every step relies on: run records, profiles, run selection, CLI hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from amlft.config import Profile, apply_overrides
from amlft.errors import ConfigError, RecordError
from amlft.records import RunRecord, list_runs, load_secret, store_secret

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- run records
def test_record_round_trip_and_latest(tmp_path: Path) -> None:
    a = RunRecord.create(backend="local", profile={"name": "a"}, profile_path="a.yml", root=tmp_path, run_id="run-a")
    a.add_resource("local.server", "srv", pid=123)
    b = RunRecord.create(backend="azure", profile={"name": "b"}, profile_path="b.yml", root=tmp_path, run_id="run-b")
    assert list_runs(tmp_path)[0]["run_id"] == "run-b"
    latest = RunRecord.load(None, root=tmp_path)
    assert latest.run_id == b.run_id
    again = RunRecord.load("run-a", root=tmp_path)
    assert again.resources("local.server")[0]["pid"] == 123
    assert again.summary()["live_resources"] == ["local.server:srv"]
    again.mark_deleted("local.server", "srv")
    assert RunRecord.load("run-a", root=tmp_path).resources(live_only=True) == []


def test_record_is_written_atomically_and_resources_before_wait(tmp_path: Path) -> None:
    rec = RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="r1")
    rec.add_resource("azureml.job", "job-1", billable=True)
    # another process reading mid-run sees the resource already
    on_disk = json.loads(rec.path.read_text())
    assert on_disk["resources"][0]["name"] == "job-1"
    assert not list(rec.path.parent.glob(".*.tmp")), "temp files must not linger"


def test_record_refuses_secrets(tmp_path: Path) -> None:
    rec = RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="r2")
    with pytest.raises(RecordError, match="secrets"):
        rec.set_output("deploy", primary_key="s3cr3t")
    assert "s3cr3t" not in rec.path.read_text()


def test_secret_store_is_private_and_separate(tmp_path: Path) -> None:
    store_secret("r3", "endpoint_key", "k-123", root=tmp_path)
    path = tmp_path / "secrets" / "r3.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_secret("r3", "endpoint_key", root=tmp_path) == "k-123"


def test_missing_run_names_what_exists(tmp_path: Path) -> None:
    RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="only-run")
    with pytest.raises(RecordError) as exc:
        RunRecord.load("nope", root=tmp_path)
    assert "nope" in exc.value.message and "only-run" in (exc.value.hint or "")


def test_step_context_marks_failures(tmp_path: Path) -> None:
    rec = RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="r4")
    with pytest.raises(ValueError), rec.step("check"):
        raise ValueError("boom")
    data = json.loads(rec.path.read_text())
    assert data["steps"]["check"]["status"] == "failed"
    assert "boom" in data["steps"]["check"]["error"]


def test_concurrent_writers_never_corrupt(tmp_path: Path) -> None:
    rec = RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="r5")
    errors: list[Exception] = []

    def reader() -> None:
        for _ in range(200):
            try:
                json.loads(rec.path.read_text())
            except Exception as exc:  # pragma: no cover - the failure we test for
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(100):
        rec.set_output("x", n=i)
    t.join()
    assert errors == []


# ---------------------------------------------------------------- profiles
def test_profile_rejects_unknown_keys_by_path() -> None:
    with pytest.raises(ConfigError) as exc:
        Profile.from_dict({"endpoint": {"instnace_type": "x"}})
    assert "endpoint.instnace_type: unknown field" in exc.value.message


def test_profile_type_errors_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "bad.yml"
    p.write_text("compute:\n  num_nodes: zero\n")
    with pytest.raises(ConfigError) as exc:
        Profile.from_yaml(p)
    assert str(p) in exc.value.message and "compute.num_nodes" in exc.value.message


def test_overrides_parse_yaml_scalars() -> None:
    data = apply_overrides({"finetune": {"learning_rate": 1}}, ["finetune.learning_rate=1e-5", "endpoint.instance_count=2",
                                                                "invoke.do_sample=false"])
    prof = Profile.from_dict(data)
    assert prof.finetune["learning_rate"] == 1e-5
    assert prof.endpoint.instance_count == 2 and prof.invoke.do_sample is False
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        apply_overrides({}, ["nonsense"])


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yml")))
def test_every_shipped_profile_validates(path: Path) -> None:
    Profile.from_yaml(path)


# ---------------------------------------------------------------- CLI hygiene
HEAVY = ("azure.ai.ml", "torch", "transformers", "peft", "mlflow", "datasets", "matplotlib", "huggingface_hub")


def test_cli_help_imports_no_heavy_sdk() -> None:
    code = ("import sys; from amlft.cli.main import cli, COMMANDS; import click; "
            "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "[cli.get_command(None, n) for n in COMMANDS]; "
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]; print(bad); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_command_has_help() -> None:
    from click.testing import CliRunner

    from amlft.cli.main import COMMANDS, cli

    for name in COMMANDS:
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
        assert "Usage: " in r.output


def test_runs_command_lists_runs_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMLFT_HOME", str(tmp_path))
    RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="listed-run")
    out = subprocess.run([sys.executable, "-m", "amlft.cli.main", "runs", "--json"], capture_output=True, text=True,
                         env={**os.environ, "AMLFT_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runs"][0]["run_id"] == "listed-run"


def test_error_funnel_exit_code_and_hint(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "amlft.cli.main", "wait"], capture_output=True, text=True,
                         env={**os.environ, "AMLFT_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 2
    assert "error: No runs" in out.stderr and "hint:" in out.stderr
    out = subprocess.run([sys.executable, "-m", "amlft.cli.main", "wait", "--json"], capture_output=True, text=True,
                         env={**os.environ, "AMLFT_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"] == "RecordError"


def test_unknown_profile_key_fails_before_a_run_is_created(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("backend: local\nfinetune:\n  num_train_epochs: 1\nendpont: {}\n")
    out = subprocess.run([sys.executable, "-m", "amlft.cli.main", "check", "--profile", str(bad)],
                         capture_output=True, text=True, env={**os.environ, "AMLFT_HOME": str(tmp_path / "h")}, timeout=60)
    assert out.returncode == 2
    assert "endpont: unknown field" in out.stderr
    assert not (tmp_path / "h" / "runs").exists() or not list((tmp_path / "h" / "runs").iterdir())


def test_exponent_numbers_are_numbers_but_quoted_strings_stay(tmp_path: Path) -> None:
    p = tmp_path / "p.yml"
    p.write_text('finetune:\n  learning_rate: 5e-6\n  precision: "16"\n  apply_lora: "true"\n')
    prof = Profile.from_yaml(p)
    assert prof.finetune == {"learning_rate": 5e-6, "precision": "16", "apply_lora": "true"}


@pytest.mark.parametrize("total", [None, 10])
def test_progress_renders_on_a_terminal_with_unknown_total(total: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits start before they know how many steps there are; that must not crash a TTY."""
    import io

    from amlft.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    with Console().progress("job", total=total, unit="steps") as bar:
        bar.update(1, status="Running")
        bar.update(2, total=4, status="Running")
    assert "job" in buf.getvalue()


def test_invoke_file_may_be_pretty_printed_json_or_jsonl(tmp_path: Path) -> None:
    """`amlft invoke --file request.json`: people write these files by hand, indented."""
    from types import SimpleNamespace

    from amlft.lifecycle import pick_invoke_messages

    pretty = tmp_path / "request.json"
    pretty.write_text('{\n  "messages": [\n    {"role": "user", "content": "hi"}\n  ]\n}\n')
    assert pick_invoke_messages(SimpleNamespace(), str(pretty)) == [{"role": "user", "content": "hi"}]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "first"}]}\n{"messages": []}\n')
    assert pick_invoke_messages(SimpleNamespace(), str(rows))[0]["content"] == "first"
