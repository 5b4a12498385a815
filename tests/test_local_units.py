"""Local training pieces that need no trained model: chat masking, batching, hyper-parameters,
the demo profile, the shipped dataset and the preflight's memory check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amlft.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    from amlft.backends.local.chat import read_conversations, texts_of
    from amlft.backends.local.tiny import train_tokenizer
    from amlft.resources import sample_chat_dir

    corpus = [t for f in sorted(sample_chat_dir().glob("*.jsonl")) for t in texts_of(read_conversations(f))]
    return train_tokenizer(corpus, vocab_size=512)


def test_loss_only_on_assistant_tokens_in_every_turn(tokenizer) -> None:
    from amlft.backends.local.chat import IGNORE_INDEX, encode_conversation

    conv = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Classify this item: banana"},
            {"role": "assistant", "content": "Category: fruit"},
            {"role": "user", "content": "Classify this item: truck"},
            {"role": "assistant", "content": "Category: vehicle"}]
    ids, labels = encode_conversation(tokenizer, conv, max_seq_length=512)
    learned = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    # exactly the two answers, each with its end-of-turn marker (so the model learns to stop)
    assert learned.replace("\n", "") == "Category: fruit<|im_end|>Category: vehicle<|im_end|>"
    ignored = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
    assert "banana" in ignored and "Be brief." in ignored and "assistant" in ignored
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels, strict=True))


def test_truncation_keeps_labels_aligned(tokenizer) -> None:
    from amlft.backends.local.chat import encode_conversation

    conv = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "Category: tool"}]
    ids, labels = encode_conversation(tokenizer, conv, max_seq_length=20)
    assert len(ids) == len(labels) == 20
    assert set(labels) == {-100}  # the answer fell past max_seq_length: nothing to learn from this row


def test_length_grouped_plan_is_deterministic_covers_every_row_and_pads_less() -> None:
    import random

    from amlft.backends.local.trainer import plan_batches

    rng = random.Random(0)
    lengths = [rng.choice([20, 25, 30, 200, 400]) for _ in range(500)]
    grouped = plan_batches(lengths, batch_size=16, epochs=2, seed=1)
    assert grouped == plan_batches(lengths, batch_size=16, epochs=2, seed=1)  # a resume replays the same plan
    flat = sorted(i for b in grouped for i in b)
    assert flat == sorted(list(range(500)) * 2)
    padded = plan_batches(lengths, batch_size=16, epochs=2, seed=1, strategy="padded")

    def waste(plan: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)

    assert waste(grouped) < waste(padded) / 5
    half = plan_batches(lengths, batch_size=16, epochs=0.5, seed=1)
    assert sum(len(b) for b in half) == 250
    with pytest.raises(ConfigError, match="packed"):
        plan_batches(lengths, batch_size=16, epochs=1, seed=1, strategy="packed")


def test_packed_batching_is_not_offered_by_the_schema() -> None:
    """`local.batching: packed` did nothing but raise at training time; the schema no longer accepts it."""
    from amlft.config import Profile

    with pytest.raises(ConfigError, match=r"local\.batching"):
        Profile.from_yaml(REPO / "jobs" / "local-demo.yml", overrides=["local.batching=packed"])
    assert Profile.from_yaml(REPO / "jobs" / "local-demo.yml", overrides=["local.batching=padded"])


def test_train_config_holds_every_default_once_and_round_trips(tmp_path: Path) -> None:
    from dataclasses import asdict

    from amlft.backends.local.trainer import HYPERPARAMETERS, TrainConfig, effective_hyperparameters

    defaults = effective_hyperparameters({})
    assert defaults == TrainConfig().hyperparameters() and set(defaults) == set(HYPERPARAMETERS)
    cfg = TrainConfig(train_dir=str(tmp_path), model="m", train_file="t.jsonl", **effective_hyperparameters(
        {"learning_rate": "3e-4", "max_steps": 7}), eval_prompts=3)
    cfg.save()
    again = TrainConfig.load(tmp_path)
    assert asdict(again) == asdict(cfg) and again.learning_rate == 3e-4 and again.max_steps == 7


def test_hyperparameters_use_azure_names_and_reject_typos() -> None:
    from amlft.backends.local.trainer import effective_hyperparameters

    hp = effective_hyperparameters({"num_train_epochs": "2", "learning_rate": "1e-4", "lora_r": 4,
                                    "apply_deepspeed": True})  # Azure-only input: accepted, ignored
    assert hp["num_train_epochs"] == 2.0 and hp["learning_rate"] == 1e-4 and hp["lora_r"] == 4
    assert "apply_deepspeed" not in hp
    with pytest.raises(ConfigError, match="lerning_rate"):
        effective_hyperparameters({"lerning_rate": 1e-4})
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        effective_hyperparameters({"per_device_train_batch_size": 0})


def test_demo_profile_is_shipped_identically_and_validates() -> None:
    from amlft.config import Profile
    from amlft.resources import resource_path

    shipped = resource_path("profiles", "local-demo.yml")
    assert shipped.read_text() == (REPO / "jobs" / "local-demo.yml").read_text()
    prof = Profile.from_yaml(shipped)
    assert prof.backend == "local" and prof.model.build == "tiny" and prof.data.source == "amlft:sample_chat"
    from amlft.backends.local.trainer import effective_hyperparameters

    effective_hyperparameters(prof.finetune)


def test_shipped_dataset_is_reproducible_and_holds_out_test_prompts(tmp_path: Path) -> None:
    import subprocess
    import sys

    from amlft.resources import sample_chat_dir

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_chat.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for f in sorted(sample_chat_dir().glob("*.jsonl")):
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f"{f.name} differs from its generator"
    rows = {s: [json.loads(x) for x in (sample_chat_dir() / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train_sft", "test_sft", "train_gen", "test_gen")}
    for r in rows["train_sft"]:
        assert set(r) == {"prompt", "prompt_id", "messages"} and r["prompt"] == r["messages"][0]["content"]
    train_prompts = {m["content"] for r in rows["train_sft"] + rows["train_gen"] for m in r["messages"]
                     if m["role"] == "user"}
    for split in ("test_sft", "test_gen"):
        assert not {r["prompt"] for r in rows[split]} & train_prompts, f"{split} leaks training prompts"
    # the base model's pre-training text never shows the task's answer format
    assert not any(m["content"].startswith("Category:") for r in rows["train_gen"] for m in r["messages"])


def test_check_refuses_a_model_that_does_not_fit_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amlft.backends.base import StepContext
    from amlft.backends.local import resources
    from amlft.config import Profile
    from amlft.console import Console
    from amlft.errors import PreflightError
    from amlft.lifecycle import run_step
    from amlft.records import RunRecord

    big = tmp_path / "big-model"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({  # a 7B Llama: config only, no weights needed
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 32000}))
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 8 * resources.GIB)
    monkeypatch.setattr(resources, "gpus", lambda: [])
    prof = Profile.from_yaml(REPO / "jobs" / "local-demo.yml",
                             overrides=["model.build=", f"model.path={big}"])
    rec = RunRecord.create(backend="local", profile=prof.to_dict(), profile_path=None)
    ctx = StepContext(profile=prof, record=rec, console=Console(quiet=True))
    with pytest.raises(PreflightError) as err:
        run_step(ctx, "check")
    memory = next(p for p in err.value.problems if p["check"] == "memory")
    assert memory["severity"] == "error" and "will not fit" in memory["message"]
    assert "6,7" in memory["message"] or "6,738" in memory["message"]  # parameters counted from config.json
    assert "smaller model" in memory["fix"]
    assert rec.step_status("check") == "failed"


def test_hub_model_without_network_fails_with_what_to_do() -> None:
    from amlft.backends.local.resources import count_parameters
    from amlft.backends.local.trainer import load_tokenizer_and_model
    from amlft.errors import TrainingError

    # conftest sets HF_HUB_OFFLINE=1: the same code path as a machine with no network
    with pytest.raises(TrainingError, match=r"Qwen/Qwen2\.5-0\.5B-Instruct") as err:
        load_tokenizer_and_model("Qwen/Qwen2.5-0.5B-Instruct", dtype=None)
    assert "model.path" in (err.value.hint or "") and "model.build: tiny" in (err.value.hint or "")
    # check still sizes well-known models offline
    assert count_parameters("microsoft/Phi-3-mini-4k-instruct") == (3_821_000_000, "known model table")


def test_replay_rows_are_the_base_models_finished_answers_and_are_kept_for_a_resume(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from amlft.backends.local import trainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[{"role": "user", "content": "Classify this item: banana"}]] * 3
    cut = trainer.generate_answers(model, tok, prompts, device="cpu", max_new_tokens=1, finished_only=True)
    full = trainer.generate_answers(model, tok, prompts, device="cpu", max_new_tokens=1)
    assert all(a == "" for a, f in zip(cut, full, strict=True) if f)  # an answer cut at the limit is not kept

    monkeypatch.setattr(trainer, "REPLAY_MAX_NEW_TOKENS", 4)
    seen: list[str] = []
    rows = trainer.replay_rows(model, tok, 5, train_dir=tmp_path, device="cpu",
                               status=lambda *a, **k: seen.append(str(a[0])))
    assert seen and all(r[0]["role"] == "user" and r[1]["role"] == "assistant" and r[1]["content"] for r in rows)
    assert (tmp_path / "replay.jsonl").exists()

    def must_not_generate(*_a: object, **_k: object) -> list[str]:
        raise AssertionError("a resumed run reuses replay.jsonl")

    monkeypatch.setattr(trainer, "generate_answers", must_not_generate)
    assert trainer.replay_rows(model, tok, 5, train_dir=tmp_path, device="cpu", status=lambda *a, **k: None) == rows
