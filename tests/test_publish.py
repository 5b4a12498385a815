"""`amlft publish`: a tiny fine-tuned model goes to a local fake Hub through the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from amlft.cli.main import main
from amlft.config import Profile
from amlft.records import RunRecord
from amlft.resources import sample_chat_dir
from amlft.testing.fake_hub import FakeHub

WRITE, READ = "hf_writeTOKENabc123", "hf_readONLYxyz789"
MERGED_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja"}
ADAPTER_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "generation_config.json"}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_run_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """A tiny base model, a LoRA adapter on it, and the merged model - what a local run leaves behind."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny-run")
    base = tiny_model_dir
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                      init_lora_weights=False))  # non-zero update: merged != base
    model.save_pretrained(root / "adapter")
    model.merge_and_unload().save_pretrained(root / "merged", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(base / name, root / "merged" / name)
    (root / "merged" / "amlft_tiny.json").write_text("{}")  # a local marker that must not be uploaded
    data = root / "data"
    data.mkdir()
    for split in ("train_sft", "test_sft"):
        shutil.copy(sample_chat_dir() / f"{split}.jsonl", data / f"{split}.jsonl")
    return {"root": root, "base": base, "adapter": root / "adapter", "merged": root / "merged", "data": data}


def make_record(dirs: dict[str, Path], *, backend: str = "local", run_id: str = "tiny-run-1",
                with_eval: bool = True, hub_id: str | None = None) -> RunRecord:
    profile = Profile.from_dict({"name": "tiny-demo", "backend": backend,
                                 "model": {"name": "tiny", "build": "tiny", "hub_id": hub_id},
                                 "data": {"source": "amlft:sample_chat", "format": "ultrachat"},
                                 "finetune": {"num_train_epochs": 1, "learning_rate": 2e-4}}).to_dict()
    rec = RunRecord.create(backend=backend, profile=profile, profile_path="jobs/local-demo.yml", run_id=run_id)
    data = dirs["data"]
    n_train = len((data / "train_sft.jsonl").read_text().splitlines())
    n_test = len((data / "test_sft.jsonl").read_text().splitlines())
    report = {"source": "amlft:sample_chat", "format": "ultrachat",
              "splits": {"train_sft": {"in": n_train + 2, "kept": n_train, "rejected": 2, "duplicates": 1,
                                       "reasons": {"empty_assistant": 2}, "tokens": {"p50": 61, "p90": 140, "p99": 201}},
                         "test_sft": {"in": n_test, "kept": n_test, "rejected": 0, "reasons": {}}},
              "totals": {"in": n_train + n_test + 2, "kept": n_train + n_test, "rejected": 2},
              "reasons": {"empty_assistant": 2},
              "reason_help": {"empty_assistant": "an assistant turn has no text"}}
    (rec.run_dir / "report.json").write_text(json.dumps(report))
    rec.set_output("data", source="amlft:sample_chat", format="ultrachat", substituted=False,
                   train_file=str(data / "train_sft.jsonl"), test_file=str(data / "test_sft.jsonl"),
                   validation_file=None, report_path=str(rec.run_dir / "report.json"), data_hash="ab" * 32,
                   counts={"train_sft": {"in": n_train + 2, "kept": n_train, "rejected": 2}})
    if backend == "azure":
        rec.set_output("submit", job_name="keen_tomato_x1", experiment="amlft-chat-completion",
                       studio_url="https://ml.azure.com/runs/keen_tomato_x1")
        rec.set_output("register", name="tiny-ft", version="3", model_uri="azureml:tiny-ft:3")
    else:
        rec.set_output("train", adapter_dir=str(dirs["adapter"]), base_model=str(dirs["base"]),
                       base_model_dir=str(dirs["base"]),
                       hyperparameters={"learning_rate": 2e-4, "num_train_epochs": 1, "lora_r": 4, "lora_alpha": 8},
                       metrics={"steps": 12, "train_loss": 3.9, "final_loss": 3.1, "train_runtime_s": 8.2,
                                "tokens_per_s": 1500.0, "device": "cpu"})
        rec.set_output("register", name="tiny-ft", version="1", model_uri="models:/tiny-ft/1",
                       model_dir=str(dirs["merged"]))
    if with_eval:
        rec.set_output("eval", metric="exact_match", n=8, before=0.0, after=0.25,
                       rows=[{"metric": "exact_match", "before": 0.0, "after": 0.25},
                             {"metric": "test_loss", "before": 4.61, "after": 3.02}])
    return rec


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # no real login cache
    with FakeHub() as fake:
        fake.add_token(WRITE, user="alice", orgs=("acme",))
        fake.add_token(READ, user="alice", role="read")
        with fake.client_settings():
            yield fake


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ publishing
def test_publish_merged_private_by_default_and_read_back(hub: FakeHub, tiny_run_dirs: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    rec = make_record(tiny_run_dirs)
    code, _, err = run_cli(["publish", "--repo-id", "alice/tiny-chat", "--dry-run", "--out", str(tmp_path / "dry")],
                           capsys)
    assert code == 0, err
    planned = {line.split("\t")[0] for line in (tmp_path / "dry" / "files.txt").read_text().splitlines()
               if not line.startswith("#")}

    monkeypatch.setenv("HF_TOKEN", WRITE)
    code, out, err = run_cli(["publish", "--repo-id", "alice/tiny-chat", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] and result["private"] is True and result["mode"] == "merged"
    assert WRITE not in out + err

    repo = hub.repo("alice/tiny-chat")
    assert repo.private is True
    assert len(repo.commits) == 1, "everything goes up in one commit"
    assert rec.run_id in repo.commits[0].title and "fine-tuned" in repo.commits[0].title
    assert set(repo.files) == MERGED_FILES == planned, "the dry run lists exactly what is uploaded"
    assert repo.files["model.safetensors"].lfs_sha256, "weights go through LFS"

    api = HfApi(endpoint=hub.endpoint, token=WRITE)
    assert set(api.list_repo_files("alice/tiny-chat")) == MERGED_FILES
    info = api.model_info("alice/tiny-chat")
    assert info.private is True
    card = info.card_data
    assert card.library_name == "transformers" and card.pipeline_tag == "text-generation"
    assert {"amlft", "lora"} <= set(card.tags)
    assert card.language == ["en"] and card.license == "other"
    assert [(r.metric_type, r.metric_value) for r in card.eval_results] == [("exact_match", 0.25), ("loss", 3.02)]
    with pytest.raises(RepositoryNotFoundError):  # a private repo is invisible without the token
        HfApi(endpoint=hub.endpoint, token=False).model_info("alice/tiny-chat")

    weights = hf_hub_download("alice/tiny-chat", "model.safetensors", token=WRITE, endpoint=hub.endpoint,
                              cache_dir=tmp_path / "cache")
    assert Path(weights).read_bytes() == (tiny_run_dirs["merged"] / "model.safetensors").read_bytes()
    readme = ModelCard.load(hf_hub_download("alice/tiny-chat", "README.md", token=WRITE, endpoint=hub.endpoint,
                                            cache_dir=tmp_path / "cache"), ignore_metadata_errors=False)
    for section in ("## What it does", "## Training data", "## Training procedure", "## Evaluation",
                    "## How to use it", "## Limitations and risks", "## Where it came from"):
        assert section in readme.text
    assert "apply_chat_template" in readme.text and rec.run_id in readme.text
    readme.validate()  # huggingface_hub's own validation, answered by the fake's /api/validate-yaml

    # the published folder is a model transformers can load and chat with
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = snapshot_download("alice/tiny-chat", token=WRITE, endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    tok = AutoTokenizer.from_pretrained(local)
    model = AutoModelForCausalLM.from_pretrained(local)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    saved = RunRecord.load(rec.run_id)
    assert saved.output("publish")["commit_url"] == result["commit_url"]
    assert saved.step_status("publish") == "succeeded"
    assert WRITE not in saved.path.read_text()


def test_adapter_only_with_dataset_from_login_cache(hub: FakeHub, tiny_run_dirs: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import HfApi, constants

    make_record(tiny_run_dirs)
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True)
    Path(constants.HF_TOKEN_PATH).write_text(WRITE)  # what `hf auth login` leaves behind
    code, out, err = run_cli(["publish", "--repo-id", "acme/tiny-chat-lora", "--adapter-only", "--public",
                              "--dataset-repo-id", "acme/tiny-chat-data"], capsys)
    assert code == 0, err
    assert "login cache" in out and WRITE not in out + err
    assert "not on the Hub" in err, "a local base model makes the adapter unusable for others: say so"

    repo = hub.repo("acme/tiny-chat-lora")
    assert repo.private is False
    assert set(repo.files) == ADAPTER_FILES
    api = HfApi(endpoint=hub.endpoint, token=WRITE)
    card = api.model_info("acme/tiny-chat-lora").card_data
    assert card.library_name == "peft" and "peft" in card.tags
    assert card.datasets == ["acme/tiny-chat-data"]
    assert "AutoPeftModelForCausalLM" in repo.files["README.md"].content.decode()

    data = hub.repo("acme/tiny-chat-data", "dataset")
    assert set(data.files) == {"README.md", "data/train.jsonl", "data/test.jsonl", "validation_report.json"}
    assert data.files["data/train.jsonl"].content == (tiny_run_dirs["data"] / "train_sft.jsonl").read_bytes()
    ds_card = api.dataset_info("acme/tiny-chat-data").card_data
    assert ds_card.task_categories == ["text-generation"]
    assert ds_card.configs[0]["data_files"][0] == {"split": "train", "path": "data/train.jsonl"}


def test_republishing_into_a_public_repo_needs_public(hub: FakeHub, tiny_run_dirs: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import HfApi

    make_record(tiny_run_dirs)
    HfApi(endpoint=hub.endpoint, token=WRITE).create_repo("alice/already-public", private=False)
    monkeypatch.setenv("HF_TOKEN", WRITE)
    code, _, err = run_cli(["publish", "--repo-id", "alice/already-public"], capsys)
    assert code == 2 and "already exists and is public" in err and "--public" in err
    assert hub.repo("alice/already-public").files == {}, "nothing uploaded"


# ------------------------------------------------------------------ tokens
def test_missing_token_is_a_clear_error(hub: FakeHub, tiny_run_dirs: dict[str, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    make_record(tiny_run_dirs)
    code, out, _ = run_cli(["publish", "--repo-id", "alice/tiny-chat", "--json"], capsys)
    assert code == 2
    doc = json.loads(out)
    assert doc["error"] == "AuthError" and "No Hugging Face token" in doc["message"]
    assert "HF_TOKEN" in doc["hint"] and "--dry-run" in doc["hint"]
    assert not hub.requests, "nothing was sent without a token"


@pytest.mark.parametrize(("token", "expected"), [(READ, "read-only"), ("hf_revokedTOKEN000", "rejected")])
def test_bad_token_is_a_clear_error_and_never_printed(hub: FakeHub, tiny_run_dirs: dict[str, Path], token: str,
                                                      expected: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    make_record(tiny_run_dirs)
    monkeypatch.setenv("HF_TOKEN", token)
    code, out, err = run_cli(["publish", "--repo-id", "alice/tiny-chat"], capsys)
    assert code == 2
    assert expected in err and "HF_TOKEN" in err and "hint:" in err
    assert token not in out + err
    assert not hub.repos, "no repo was created"


def test_fake_hub_enforces_read_only_tokens_on_writes(hub: FakeHub) -> None:
    """The fake itself answers 403 to a read token, so the publish check is not the only guard."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=hub.endpoint, token=READ).create_repo("alice/x")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=hub.endpoint, token=False).create_repo("alice/x")
    assert info.value.response.status_code == 401


# ------------------------------------------------------------------ dry run and the card
def test_dry_run_writes_card_and_file_list_without_network(tiny_run_dirs: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"dry run opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    rec = make_record(tiny_run_dirs, with_eval=False)
    out_dir = tmp_path / "preview"
    code, out, err = run_cli(["publish", "--repo-id", "alice/tiny-chat", "--adapter-only", "--dataset-repo-id",
                              "alice/tiny-data", "--dry-run", "--out", str(out_dir), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["dry_run"] is True and set(doc["files"]) == ADAPTER_FILES
    plan = json.loads((out_dir / "upload-plan.json").read_text())
    assert plan["private"] is True and plan["mode"] == "adapter"
    assert {f["path_in_repo"] for f in plan["model"]["files"]} == ADAPTER_FILES
    assert any(s["path"] == "README.md" for s in plan["model"]["skipped"]), "peft's stub card is replaced, and said so"
    assert rec.run_id in plan["model"]["commit_message"]
    card = (out_dir / "README.md").read_text()
    assert "model-index" not in card, "no evaluation, no claimed results"
    assert "recorded no evaluation" in card
    assert (out_dir / "dataset" / "README.md").exists()
    assert "datasets/alice/tiny-data" in (out_dir / "files.txt").read_text()
    assert RunRecord.load(rec.run_id).output("publish") == {}, "a dry run publishes nothing"


def test_adapter_config_points_at_the_hub_base_model(tiny_run_dirs: dict[str, Path]) -> None:
    from amlft.hub.plan import plan_publish

    rec = make_record(tiny_run_dirs, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    plan = plan_publish(rec, repo_id="alice/x", mode="adapter")
    cfg = next(f for f in plan.model.files if f.path_in_repo == "adapter_config.json")
    assert json.loads(cfg.content)["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in plan.model.card_text
    assert not plan.warnings


def test_azure_run_needs_a_downloaded_model_dir(tiny_run_dirs: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_record(tiny_run_dirs, backend="azure", run_id="azure-run-1")
    code, _, err = run_cli(["publish", "--repo-id", "alice/x", "--dry-run", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "az ml model download --name tiny-ft --version 3" in err and "--model-dir" in err

    downloaded = tmp_path / "model-tiny-ft"  # the MLflow layout az ml model download produces
    shutil.copytree(tiny_run_dirs["merged"], downloaded / "mlflow_model_folder" / "data" / "model")
    (downloaded / "mlflow_model_folder" / "MLmodel").write_text("flavors: {}\n")
    code, _, err = run_cli(["publish", "--repo-id", "alice/x", "--model-dir", str(downloaded), "--dry-run",
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    card = (tmp_path / "o" / "README.md").read_text()
    assert "keen_tomato_x1" in card and "Azure ML" in card and "azureml" in card
    assert "chat_completion_pipeline" in card, "Azure hyper-parameters are the component inputs"


def test_bad_repo_id_and_missing_model_are_named(tiny_run_dirs: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rec = make_record(tiny_run_dirs)
    code, _, err = run_cli(["publish", "--repo-id", "no-owner", "--dry-run", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--repo-id 'no-owner' is not a Hub repo id" in err
    code, _, err = run_cli(["publish", "--repo-id", "a/b", "--merged", "--adapter-only"], capsys)
    assert code == 2 and "exclude each other" in err
    rec.set_output("register", model_dir=str(tmp_path / "gone"))
    code, _, err = run_cli(["publish", "--repo-id", "a/b", "--merged", "--dry-run", "--out", str(tmp_path)], capsys)
    assert code == 2 and str(tmp_path / "gone") in err and "amlft register" in err


def test_fake_hub_card_validation_rejects_what_the_hub_rejects(hub: FakeHub) -> None:
    """So `ModelCard.validate()` passing above means something."""
    from huggingface_hub import ModelCard

    with pytest.raises(ValueError, match="license"):
        ModelCard("---\nlicense: mitt\n---\n# x\n").validate()
    bad_index = "---\nmodel-index:\n- name: x\n  results:\n  - task: {type: text-generation}\n    metrics: []\n---\n"
    with pytest.raises(ValueError, match="dataset"):
        ModelCard(bad_index).validate()
    ModelCard("---\nlicense: mit\nbase_model: org/base\n---\n# fine\n").validate()
