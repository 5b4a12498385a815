"""The trainer's two speed-ups change how much is computed, never what: fused LoRA layers and
shared-prefix batches give the loss and LoRA gradients of the plain path, save an adapter
plain peft loads, and step aside where they do not apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SYSTEM = {"role": "system", "content": "You are a careful assistant who answers in one short line."}


def _lora_model(model_dir: Path, *, fused: bool, dropout: float = 0.0, seed: int = 0) -> tuple[Any, Any]:
    """The tiny model with LoRA on every Linear and non-zero B (so every gradient path is exercised)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from amlft.backends.local.fused_lora import fused_lora_config
    from amlft.backends.local.trainer import load_tokenizer_and_model

    tok, model = load_tokenizer_and_model(str(model_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    make = fused_lora_config if fused else LoraConfig
    model = get_peft_model(model, make(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                       task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    return tok, model


def _batch(tok: Any, *, system: bool, n: int = 6) -> dict[str, Any]:
    from amlft.backends.local.chat import encode_conversation, read_conversations
    from amlft.backends.local.trainer import collate
    from amlft.resources import sample_chat_dir

    convs = list(read_conversations(sample_chat_dir() / "train_gen.jsonl"))[:n]
    if system:
        convs = [[SYSTEM, *c] for c in convs]
    return collate([encode_conversation(tok, c, max_seq_length=128) for c in convs], tok.pad_token_id)


def _loss_and_grads(model: Any, fn: Any, batch: dict[str, Any], seed: int = 1) -> tuple[float, list[Any]]:
    import torch

    model.zero_grad()
    torch.manual_seed(seed)  # same dropout masks on every path
    loss = fn(batch)
    loss.backward()
    return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def _assert_same(a: tuple[float, list[Any]], b: tuple[float, list[Any]]) -> None:
    import torch

    assert b[0] == pytest.approx(a[0], rel=1e-5)
    assert len(a[1]) == len(b[1]) > 0
    for ga, gb in zip(a[1], b[1], strict=True):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6), float((ga - gb).abs().max())


# ---- fused LoRA --------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_lora_gives_peft_loss_and_gradients(tiny_model_dir: Path, dropout: float) -> None:
    from amlft.backends.local.fused_lora import FusedLoraLinear
    from amlft.backends.local.trainer import label_loss

    tok, plain = _lora_model(tiny_model_dir, fused=False, dropout=dropout)
    _, fused = _lora_model(tiny_model_dir, fused=True, dropout=dropout)
    layers = [m for m in fused.modules() if isinstance(m, FusedLoraLinear)]
    assert layers and not any(isinstance(m, FusedLoraLinear) for m in plain.modules())
    batch = _batch(tok, system=False)
    _assert_same(_loss_and_grads(plain, lambda b: label_loss(plain, b), batch),
                 _loss_and_grads(fused, lambda b: label_loss(fused, b), batch))


def test_fused_lora_saves_an_adapter_plain_peft_loads_and_merges(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel

    from amlft.backends.local.fused_lora import FusedLoraLinear
    from amlft.backends.local.trainer import load_tokenizer_and_model

    tok, fused = _lora_model(tiny_model_dir, fused=True)
    fused.eval()
    batch = _batch(tok, system=False, n=3)
    with torch.no_grad():
        want = fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    fused.save_pretrained(tmp_path / "adapter")
    assert "custom" not in (tmp_path / "adapter" / "adapter_config.json").read_text()

    _, base = load_tokenizer_and_model(str(tiny_model_dir), dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert not any(isinstance(m, FusedLoraLinear) for m in reloaded.modules())
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged = fused.merge_and_unload()
        after_merge = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(after_merge, want, atol=1e-4)
    assert not any(isinstance(m, FusedLoraLinear) for m in merged.modules())


def test_fused_lora_steps_aside_for_a_disabled_adapter(tiny_model_dir: Path) -> None:
    """`with model.disable_adapter()` must give the base model's output, as peft's own layer does."""
    import torch

    tok, fused = _lora_model(tiny_model_dir, fused=True)
    _, plain = _lora_model(tiny_model_dir, fused=False)
    batch = _batch(tok, system=False, n=2)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        with fused.disable_adapter():
            base_fused = fused(**kw).logits
        with plain.disable_adapter():
            base_plain = plain(**kw).logits
        adapted = fused(**kw).logits
    assert torch.allclose(base_fused, base_plain, atol=1e-6)
    assert not torch.allclose(adapted, base_fused, atol=1e-4)  # the adapter does act when enabled


# ---- shared prefixes ---------------------------------------------------------------------------
def _ids_batch(rows: list[list[int]], labels: list[list[int]]) -> dict[str, Any]:
    import torch

    width = max(len(r) for r in rows)
    pad = [r + [0] * (width - len(r)) for r in rows]
    lab = [r + [-100] * (width - len(r)) for r in labels]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    return {"input_ids": torch.tensor(pad), "labels": torch.tensor(lab), "attention_mask": torch.tensor(mask)}


def test_shared_prefix_stops_before_the_first_label_and_inside_the_shortest_row() -> None:
    from amlft.backends.local.prefix_sharing import shared_prefix_length

    rows = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 9, 9, 9, 9]]
    no_labels = [[-100] * len(r) for r in rows]
    assert shared_prefix_length(_ids_batch(rows, no_labels)) == 3  # 4 shared, less the one whose label it predicts
    labelled = [[-100, -100, 3, 4, 5, 6, 7], [-100] * 8]
    assert shared_prefix_length(_ids_batch(rows, labelled)) == 1  # labels[:, 2] is predicted from position 1
    same = [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]
    assert shared_prefix_length(_ids_batch(same, [[-100] * len(r) for r in same])) == 3  # one real token left
    assert shared_prefix_length(_ids_batch([rows[0]], [no_labels[0]])) == 0  # nothing to share with one row


def test_shared_prefix_gives_the_plain_loss_and_gradients(tiny_model_dir: Path) -> None:
    from amlft.backends.local.prefix_sharing import MIN_SHARED_TOKENS, PrefixSharing, shared_prefix_length
    from amlft.backends.local.trainer import label_loss

    tok, model = _lora_model(tiny_model_dir, fused=True)
    batch = _batch(tok, system=True)
    prefix = shared_prefix_length(batch)
    assert prefix >= MIN_SHARED_TOKENS  # the system turn and the user header
    sharing = PrefixSharing()
    plain = _loss_and_grads(model, lambda b: label_loss(model, b), batch)
    shared = _loss_and_grads(model, lambda b: label_loss(model, b, sharing), batch)
    assert sharing.checked and sharing.enabled and not sharing.reason
    assert sharing.saved_tokens == prefix * (batch["input_ids"].shape[0] - 1)
    _assert_same(plain, shared)


def test_shared_prefix_is_off_for_sliding_window_models_and_decoders_without_a_cache(tiny_model_dir: Path) -> None:
    from amlft.backends.local.prefix_sharing import PrefixSharing
    from amlft.backends.local.trainer import label_loss

    tok, model = _lora_model(tiny_model_dir, fused=True)
    batch = _batch(tok, system=True)
    base = model.get_base_model()

    base.config.sliding_window = 16
    sliding = PrefixSharing()
    label_loss(model, batch, sliding)
    assert not sliding.enabled and "sliding-window" in sliding.reason and sliding.saved_tokens == 0
    base.config.sliding_window = None

    class NoCache:  # a decoder that refuses past_key_values, as some remote-code models do
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, **kw: Any) -> Any:
            if "past_key_values" in kw or "cache" in kw:
                raise TypeError("forward() got an unexpected keyword argument 'cache'")
            return self.inner(**kw)

    real = base.get_decoder
    base.get_decoder = lambda: NoCache(real())  # type: ignore[method-assign]
    refused = PrefixSharing()
    loss = label_loss(model, batch, refused)
    assert not refused.enabled and "shared cache" in refused.reason and refused.saved_tokens == 0
    assert float(loss) > 0 and base.training  # trained the plain way, still in training mode


def test_a_fine_tune_reports_the_shared_positions_and_both_switches_work(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from amlft.backends.local.chat import read_conversations
    from amlft.backends.local.trainer import TrainConfig, train
    from amlft.resources import sample_chat_dir

    data = tmp_path / "train.jsonl"
    convs = list(read_conversations(sample_chat_dir() / "train_sft.jsonl"))[:24]
    data.write_text("".join(json.dumps({"messages": [SYSTEM, *c]}) + "\n" for c in convs))
    results = {}
    for name, knobs in {"default": {}, "off": {"share_prefix": False, "fused_lora": False}}.items():
        cfg = TrainConfig(train_dir=str(tmp_path / name), model=str(tiny_model_dir), train_file=str(data),
                          max_steps=3, per_device_train_batch_size=8, lora_dropout=0.0, eval_prompts=0,
                          save_steps=10**6, **knobs)
        lines: list[str] = []
        results[name] = train(cfg, log=lines.append)
        results[name]["log"] = lines
    on, off = results["default"], results["off"]
    assert on["metrics"]["shared_prefix_tokens"] > 0 and off["metrics"]["shared_prefix_tokens"] == 0
    assert any("shared prefixes:" in line for line in on["log"])
    # same data, same seed, same batches: the same losses step by step
    assert [h["loss"] for h in on["history"]] == pytest.approx([h["loss"] for h in off["history"]], rel=1e-4)
