"""`amlft submit --dry-run --export job.yml`: offline, no credential, YAML that load_job loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amlft.backends.azure import pipeline
from amlft.cli.main import main

PROFILE = str(Path(__file__).resolve().parents[1] / "jobs" / "phi3-mini-ultrachat.yml")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMLFT_HOME", str(tmp_path / ".amlft"))
    for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(var, raising=False)
    # Any network use would fail loudly instead of hanging.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    return tmp_path


def test_dry_run_export_writes_a_job_load_job_accepts(offline, capsys):
    main(["submit", "--profile", PROFILE, "--dry-run", "--export", "job.yml"])
    out = capsys.readouterr().out
    assert "wrote job.yml" in out and "$3.06/h" in out
    from azure.ai.ml import load_job

    job = load_job(source=offline / "job.yml")
    assert job.type == "pipeline"
    assert job.settings.force_rerun is True and job.settings.continue_on_step_failure is False
    assert job.display_name.startswith("Phi-3-mini-4k-instruct-ultrachat_200k-bs1-cosine-ds2-lora")

    doc = yaml.safe_load((offline / "job.yml").read_text())
    step = doc["jobs"]["chat_completion_pipeline"]
    assert step["component"] == "azureml://registries/azureml/components/chat_completion_pipeline/labels/latest"
    assert step["outputs"] == {"mlflow_model_folder": "${{parent.outputs.trained_model}}"}
    snap = pipeline.load_snapshot()["inputs"]
    assert set(step["inputs"]) <= set(snap)
    inputs = step["inputs"]
    for name, value in inputs.items():
        typ = snap[name]["type"]
        if typ in ("uri_file", "mlflow_model"):
            assert value["type"] == typ, name
        elif typ == "integer":
            assert type(value) is int, name
        elif typ == "number":
            assert isinstance(value, float), name
        else:
            assert isinstance(value, str), name
    assert inputs["apply_lora"] == "true" and inputs["deepspeed_stage"] == "2"
    assert inputs["compute_finetune"] == "gpu-a100" and inputs["number_of_gpu_to_use_finetuning"] == 1
    assert inputs["mlflow_model_path"]["path"].endswith("/models/Phi-3-mini-4k-instruct/labels/latest")
    assert inputs["learning_rate"] == 5e-6 and inputs["num_train_epochs"] == 3
    assert Path(inputs["train_file_path"]["path"]).name == "train_sft.jsonl"


def test_dry_run_rejects_unknown_finetune_inputs(offline, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["submit", "--profile", PROFILE, "--dry-run", "--set", "finetune.num_epochs=2",
              "--set", "endpoint.deployment_name=x"])
    assert ei.value.code == 1
    err = capsys.readouterr().err
    assert "finetune.num_epochs is not an input of chat_completion_pipeline" in err
    assert "Deployment name 'x'" in err
    assert not (offline / "job.yml").exists()
