"""A tiny chat model built on this machine, so the whole lifecycle runs offline.

Why build rather than download: the project's main command must do real work on a
fresh machine with no network. The model is a ~1M-parameter Llama-architecture causal
LM with a byte-level BPE tokenizer trained (with `tokenizers`) on the shipped chat
data and a ChatML chat template. It is briefly pre-trained on the shipped general
chat conversations (train_gen) so the base already speaks the chat format; the LoRA
fine-tune then teaches it the task in train_sft. Everything is saved in transformers
format (safetensors), so `AutoTokenizer.from_pretrained(dir).apply_chat_template(...)`
and `AutoModelForCausalLM.from_pretrained(dir)` work with no hub.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from amlft.backends.local.chat import encode_conversation, read_conversations, texts_of
from amlft.extras import needs_extra

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Every default in one place. ~1.1M parameters: big enough to learn the demo task in a
# minute of CPU LoRA, small enough that the whole demo stays well under five minutes.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 1024,       # BPE merges stop earlier on the small corpus
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    # Wider than the usual 0.02: with tied embeddings and a frozen final norm, a LoRA fine-tune can
    # only reach confident predictions if the embedding rows are long enough to give large logits.
    "initializer_range": 0.1,
    "pretrain_steps": 60,     # full-parameter steps on the general chat (a few seconds on one CPU core)
    "pretrain_lr": 3e-3,
    "pretrain_batch_size": 32,
}
MARKER = "amlft_tiny.json"


def _default_corpus_files() -> list[Path]:
    from amlft.resources import sample_chat_dir

    return sorted(sample_chat_dir().glob("*.jsonl"))


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (no unknown tokens) wrapped as a transformers fast tokenizer."""
    with needs_extra("local", purpose="Building the tiny test model"):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None, model_max_length=DEFAULTS["max_position_embeddings"])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation batches pad on the left; the trainer pads itself
    return fast


def build_tiny_model(out_dir: Path, *, corpus: Iterable[str] | None = None, seed: int = 0,
                     pretrain_conversations: Iterable[list[dict[str, str]]] | None = None,
                     pretrain_texts: Iterable[str] | None = None, pretrain_steps: int | None = None,
                     **overrides: Any) -> Path:
    """Build (or reuse) the tiny chat model in `out_dir` and return that folder.

    corpus: texts the tokenizer is trained on (default: every shipped sample_chat file).
    pretrain_conversations: chat the base is pre-trained on (default: sample_chat/train_gen).
    pretrain_texts: plain texts it also reads (default: the user turns of sample_chat/train_sft,
        never the answers - so every token has a trained embedding but the task is not known).
    Same inputs and seed give the same weights; a folder already built with the same
    settings is reused as is (the settings are kept in amlft_tiny.json).
    """
    with needs_extra("local", purpose="Building the tiny test model"):
        import torch
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    settings = dict(DEFAULTS, **overrides)
    if pretrain_steps is not None:
        settings["pretrain_steps"] = pretrain_steps
    custom = corpus is not None or pretrain_conversations is not None or pretrain_texts is not None
    files = _default_corpus_files()
    data_sha = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    fingerprint = {"settings": settings, "seed": seed, "custom_data": custom, "sample_data": data_sha}
    marker = out_dir / MARKER
    if not custom and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint \
            and (out_dir / "model.safetensors").exists():
        return out_dir

    started = time.perf_counter()
    if corpus is None:
        corpus = [t for f in files for t in texts_of(read_conversations(f))]
    if pretrain_conversations is None:
        from amlft.resources import sample_chat_dir

        pretrain_conversations = list(read_conversations(sample_chat_dir() / "train_gen.jsonl"))
    if pretrain_texts is None:
        from amlft.resources import sample_chat_dir

        pretrain_texts = [m["content"] for c in read_conversations(sample_chat_dir() / "train_sft.jsonl")
                          for m in c if m["role"] == "user"]
    tokenizer = train_tokenizer(corpus, vocab_size=settings["vocab_size"])

    torch.manual_seed(seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"], num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"], num_key_value_heads=settings["num_key_value_heads"],
        max_position_embeddings=settings["max_position_embeddings"], tie_word_embeddings=True,
        initializer_range=settings["initializer_range"],
        bos_token_id=None, eos_token_id=eos, pad_token_id=pad,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = LlamaForCausalLM(config)
    losses = _pretrain(model, tokenizer, list(pretrain_conversations), list(pretrain_texts), settings, seed)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, max_new_tokens=64,
                                               do_sample=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    with needs_extra("local", purpose="Building the tiny test model"):
        from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard progress bar is noise in the lifecycle's output
    model.save_pretrained(out_dir, safe_serialization=True)
    hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out_dir)
    marker.write_text(json.dumps({
        "fingerprint": fingerprint,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_loss_first": losses[0] if losses else None,
        "pretrain_loss_last": losses[-1] if losses else None,
        "build_s": round(time.perf_counter() - started, 2),
    }, indent=2) + "\n")
    return out_dir


def _pretrain(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], texts: list[str],
              settings: dict[str, Any], seed: int) -> list[float]:
    """Full-parameter next-token training on whole conversations (so the base speaks ChatML)
    and on plain texts (so no token keeps an untrained embedding that LoRA cannot fix)."""
    import random

    with needs_extra("local", purpose="Building the tiny test model"):
        import torch

    steps = int(settings["pretrain_steps"])
    limit = settings["max_position_embeddings"]
    chats = [encode_conversation(tokenizer, c, max_seq_length=limit)[0] for c in conversations]
    plain = [[*tokenizer(t, add_special_tokens=False)["input_ids"][: limit - 1], tokenizer.eos_token_id]
             for t in texts]
    if steps <= 0 or not (chats or plain):
        return []
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["pretrain_lr"], weight_decay=0.0)
    pad = model.config.pad_token_id
    bs = int(settings["pretrain_batch_size"])
    n_plain = bs // 4 if chats and plain else (bs if plain else 0)  # mostly chat: that is what it must speak
    losses: list[float] = []
    model.train()
    for step in range(steps):
        batch = rng.sample(chats, min(bs - n_plain, len(chats))) + rng.sample(plain, min(n_plain, len(plain)))
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(x)] = ids[i, : len(x)]
            mask[i, : len(x)] = 1
        lr = settings["pretrain_lr"] * min(1.0, (step + 1) / 10)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
    model.eval()
    return losses
