"""The typed Python API: the README's example runs as written, and the public modules say
what they export."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- python-api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its Python API example"
    return m.group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_on_the_local_backend(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from amlft.records import RunRecord, list_runs

    monkeypatch.chdir(ROOT)  # the example names jobs/local-demo.yml relative to the checkout
    scope: dict[str, object] = {}
    exec(compile(_readme_example(), "README.md#python-api", "exec"), scope)  # our own README
    out = capsys.readouterr().out
    run = scope["run"]
    assert run.outcome == "succeeded" and run.left_running() == []  # type: ignore[attr-defined]
    assert f"{run.run_id} succeeded []" in out  # type: ignore[attr-defined]
    rec = RunRecord.load(run.run_id)  # type: ignore[attr-defined]
    assert rec.output("invoke")["prompt"] == "Classify this item: pear"
    assert [r["run_id"] for r in list_runs()] == [rec.run_id], "the CLI sees the run the API made"


def test_the_client_returns_typed_outputs_and_shares_records_with_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from amlft import Client
    from amlft.cli.main import main
    from amlft.errors import PreflightError
    from amlft.outputs import CheckOutput, DataOutput

    run = Client(ROOT / "jobs" / "local-demo.yml", overrides=["local.max_steps=5"])
    check = run.check()
    assert isinstance(check, CheckOutput) and check.device == "cpu" and check.cost is not None
    data = run.data()
    assert isinstance(data, DataOutput) and Path(str(data.train_file)).exists() and data.data_hash
    assert run.record.get_output(DataOutput).train_file == data.train_file
    assert run.outcome == "pending"

    again = Client(run=run.run_id)
    assert again.run_id == run.run_id and again.record.get_output(DataOutput).data_hash == data.data_hash
    main(["runs", "--json"])
    assert run.run_id in capsys.readouterr().out

    bad = Client(ROOT / "jobs" / "local-demo.yml", overrides=["local.device=cuda"])
    with pytest.raises(PreflightError) as err:
        bad.check()
    assert any(p["check"] == "device" for p in err.value.problems) and bad.outcome == "failed"
    assert bad.teardown().stopped == [] and bad.outcome == "failed"


def test_set_output_validates_through_the_step_models_and_keeps_unknown_fields(tmp_path: Path) -> None:
    from amlft.errors import RecordError
    from amlft.outputs import SubmitOutput
    from amlft.records import RunRecord

    rec = RunRecord.create(backend="local", profile={}, profile_path=None, root=tmp_path, run_id="typed")
    rec.set_output("submit", pid="123", train_dir=tmp_path, engine="onnx")  # coerced; unknown fields kept
    assert rec.output("submit") == {"pid": 123, "train_dir": str(tmp_path), "engine": "onnx"}
    assert rec.get_output(SubmitOutput).pid == 123
    with pytest.raises(RecordError, match="invalid submit output"):
        rec.set_output("submit", pid="not a pid")
    rec.set_output("bench", anything={"goes": 1})  # steps without a model are stored as given
    assert RunRecord.load("typed", root=tmp_path).output("bench") == {"anything": {"goes": 1}}


@pytest.mark.parametrize("module", ["amlft", "amlft.client", "amlft.lifecycle", "amlft.records", "amlft.outputs",
                                    "amlft.context", "amlft.config", "amlft.errors", "amlft.console",
                                    "amlft.backends", "amlft.backends.base", "amlft.run_selection"])
def test_public_modules_declare_what_they_export(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
