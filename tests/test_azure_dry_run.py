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
    # the profile's data must be preparable offline: the shipped sample, chosen explicitly
    main(["submit", "--profile", PROFILE, "--dry-run", "--export", "job.yml", "--set", "data.source=amlft:sample_chat"])
    out = capsys.readouterr().out
    assert "wrote job.yml" in out and "$3.06/h" in out
    from azure.ai.ml import load_job

    job = load_job(source=offline / "job.yml")
    assert job.type == "pipeline"
    assert job.settings.force_rerun is True and job.settings.continue_on_step_failure is False
    assert job.display_name.startswith("Phi-3-mini-4k-instruct-amlft-sample_chat-bs1-cosine-ds2-lora")

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


def test_dry_run_prepares_the_profiles_data_or_refuses_and_creates_no_run(offline, capsys):
    """Before `amlft data`, a dry run prepares and validates the profile's own data; data it cannot
    reach is a clear refusal, never the shipped sample in its place; and no run becomes "the latest"."""
    with pytest.raises(SystemExit) as ei:
        main(["submit", "--profile", PROFILE, "--dry-run", "--export", "job.yml"])
    assert ei.value.code == 1
    err = capsys.readouterr().err
    assert "Cannot reach the Hugging Face Hub to download HuggingFaceH4/ultrachat_200k" in err
    assert not (offline / "job.yml").exists()

    mine = offline / "mine.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(30)]
    mine.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    main(["submit", "--profile", PROFILE, "--dry-run", "--export", "job.yml", "--set", f"data.source={mine}",
          "--set", "data.train_split=train", "--set", "data.split_pc=null"])
    capsys.readouterr()
    doc = yaml.safe_load((offline / "job.yml").read_text())
    train = Path(doc["jobs"]["chat_completion_pipeline"]["inputs"]["train_file_path"]["path"])
    assert train.exists() and len(train.read_text().splitlines()) == 27  # 10% held out as the test split
    assert "q" in train.read_text() and "sample" not in str(train)
    assert not list((offline / ".amlft" / "runs").glob("*.json")), "a dry run creates no run"
    main(["runs", "--json"])
    assert __import__("json").loads(capsys.readouterr().out)["runs"] == []
