"""Azure ML assets: the environment and the validate-chat-data component load with the
SDK's own loaders, fit together, call amlft verbs that exist, and really validate data."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("azure.ai.ml")
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
ENV_YAML = ROOT / "environments" / "amlft-data" / "environment.yml"
COMPONENT_DIR = ROOT / "components" / "validate-chat-data"
COMPONENT_YAML = COMPONENT_DIR / "component.yml"
SCRIPT = COMPONENT_DIR / "validate_chat_data.py"
SAMPLE = ROOT / "src" / "amlft" / "resources" / "sample_chat"


def _wrapper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_chat_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pip_names(conda: dict) -> set[str]:
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    return {re.split(r"[<>=\[ ;]", p, maxsplit=1)[0].lower() for p in pip}


def test_environment_loads_and_carries_amlfts_data_dependencies() -> None:
    from azure.ai.ml import load_environment

    env = load_environment(ENV_YAML)
    assert env.name == "amlft-data" and env.version == "1"
    assert env.image.startswith("mcr.microsoft.com/azureml/")
    assert "python=3.11" in env.conda_file["dependencies"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower()
              for d in project["dependencies"] + project["optional-dependencies"]["data"]}
    assert needed <= _pip_names(env.conda_file), f"missing from conda.yml: {needed - _pip_names(env.conda_file)}"


def test_component_loads_validates_and_uses_the_shared_environment() -> None:
    from azure.ai.ml import load_component, load_environment

    component = load_component(COMPONENT_YAML)
    assert type(component).__name__ == "CommandComponent"
    result = component._validate()
    assert result.passed, result.error_messages
    assert {k: v.type for k, v in component.inputs.items()} == {
        "train_file_path": "uri_file", "test_file_path": "uri_file", "mode": "string", "data_format": "string",
        "on_error": "string"}
    assert {k: v.type for k, v in component.outputs.items()} == {
        "train_file": "uri_file", "test_file": "uri_file", "report": "uri_folder"}
    # every placeholder in the command is a declared input/output
    for kind, name in re.findall(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", component.command):
        assert name in getattr(component, kind), f"{kind}.{name} is not declared"
    env = load_environment(ENV_YAML)
    assert component.environment.image == env.image and component.environment.conda_file == env.conda_file
    # the code snapshot (repo root) holds the script the command runs and amlft's source
    code = (COMPONENT_DIR / component.code).resolve()
    assert code == ROOT
    assert (code / component.command.split()[1]).resolve() == SCRIPT
    assert (code / component.environment_variables["PYTHONPATH"] / "amlft" / "cli" / "main.py").is_file()


def test_component_runs_amlft_data_verbs_that_exist() -> None:
    import click

    from amlft.cli.main import cli

    wrapper = _wrapper()
    assert wrapper.AMLFT[1:] == ["-m", "amlft.cli.main"]
    data_group = cli.get_command(click.Context(cli), "data")
    for mode in ("validate", "prepare"):
        cmd = wrapper.amlft_command(mode, Path("in.jsonl"), fmt="auto", on_error="skip", work=Path("out"))
        verb = cmd[len(wrapper.AMLFT):]
        sub = data_group.get_command(click.Context(data_group), verb[1])
        assert verb[0] == "data" and sub is not None, f"amlft data {verb[1]} does not exist"
        known = {o for p in sub.params for o in p.opts}
        assert {w for w in verb if w.startswith("--")} <= known
    from azure.ai.ml import load_component

    fmt_enum = load_component(COMPONENT_YAML).inputs["data_format"].enum
    assert list(fmt_enum) == wrapper.FORMATS


def _run_component(tmp_path: Path, train: Path, test: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "outputs"
    args = [sys.executable, str(SCRIPT), "--train", str(train), "--test", str(test),
            "--train-out", str(out / "train_file"), "--test-out", str(out / "test_file"),
            "--report-dir", str(out / "report"), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path), out


def test_valid_data_passes_through_unchanged(tmp_path: Path) -> None:
    result, out = _run_component(tmp_path, SAMPLE / "train_sft.jsonl", SAMPLE / "test_sft.jsonl")
    assert result.returncode == 0, result.stderr
    assert filecmp.cmp(out / "train_file", SAMPLE / "train_sft.jsonl", shallow=False)
    assert filecmp.cmp(out / "test_file", SAMPLE / "test_sft.jsonl", shallow=False)
    assert json.loads((out / "report" / "train.validate.json").read_text())["ok"] is True


def test_an_invalid_row_fails_the_step_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "train.jsonl"
    good_row = (SAMPLE / "train_sft.jsonl").read_text(encoding="utf-8").splitlines()[0]
    bad.write_text(good_row + "\n{not json\n", encoding="utf-8")
    result, out = _run_component(tmp_path, bad, SAMPLE / "test_sft.jsonl")
    assert result.returncode == 1
    assert "train.jsonl:2" in result.stderr and "invalid_json" in result.stderr
    assert not (out / "train_file").exists()  # nothing for the fine-tune to read


def test_prepare_mode_sets_bad_rows_aside(tmp_path: Path) -> None:
    rows = (SAMPLE / "train_sft.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    mixed = tmp_path / "train.jsonl"
    mixed.write_text("\n".join([*rows, '{"messages": []}']) + "\n", encoding="utf-8")
    result, out = _run_component(tmp_path, mixed, SAMPLE / "test_sft.jsonl", "--mode", "prepare",
                                 "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line) for line in (out / "train_file").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt_id"] for r in kept] == [json.loads(r)["prompt_id"] for r in rows]
    rejected = (out / "report" / "train.rejected.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rejected) == 1


def test_component_wires_into_a_dsl_pipeline() -> None:
    from azure.ai.ml import Input, dsl, load_component

    validate = load_component(COMPONENT_YAML)

    @dsl.pipeline(default_compute="cpu-cluster")
    def validated(train, test):  # no annotations: the DSL reads them, and they are strings here
        step = validate(train_file_path=train, test_file_path=test)
        return {"train_file": step.outputs.train_file, "test_file": step.outputs.test_file}

    job = validated(train=Input(type="uri_file", path="azureml:chat-train:1"),
                    test=Input(type="uri_file", path="azureml:chat-test:1"))
    assert list(job.jobs) == ["step"]
    assert set(job.outputs) == {"train_file", "test_file"}
