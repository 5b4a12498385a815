#!/usr/bin/env python
"""Training throughput: amlft's LoRA trainer vs a plain transformers Trainer + peft baseline.

Same model, data, LoRA settings, batch size and number of optimizer steps, measured in
the same process one after the other (then in the opposite order, to cancel warm-up and
noisy-neighbour effects). Tokens/s counts real (non-padding) tokens only, so padding
the baseline computes on costs it time but earns it nothing.

The baseline is what a typical SFT script does: tokenize with the chat template, mask
non-assistant tokens, `DataCollatorForSeq2Seq` (pads each random batch to its longest
row), `Trainer.train()`. amlft's loop differs in length-grouped batching and a lean step.

    python scripts/bench_training.py [--steps 60] [--batch-size 16] [--model DIR] [--data FILE]

By default it builds the tiny offline model and uses the shipped sample data mixed with
longer general-chat rows, like real chat data (lengths vary a lot).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def make_mixed_data(out: Path) -> Path:
    """Shipped train_sft plus its general conversations repeated into longer multi-turn rows."""
    from amlft.resources import sample_chat_dir

    rows = [json.loads(line) for line in (sample_chat_dir() / "train_sft.jsonl").read_text().splitlines()]
    general = [json.loads(line) for line in (sample_chat_dir() / "train_gen.jsonl").read_text().splitlines()]
    long_rows = []
    for i in range(0, len(general) - 4, 3):
        msgs = [m for r in general[i:i + 4] for m in r["messages"]]
        long_rows.append({"prompt": msgs[0]["content"], "prompt_id": f"long-{i}", "messages": msgs})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows + long_rows))
    return out


def run_amlft(model_dir: Path, data: Path, work: Path, hp: dict[str, Any], threads: int | None) -> dict[str, Any]:
    from amlft.backends.local.trainer import TrainConfig, train

    d = work / "amlft"
    shutil.rmtree(d, ignore_errors=True)
    cfg = TrainConfig(train_dir=str(d), model=str(model_dir), train_file=str(data), test_file=None, **hp,
                      device="auto", batching="length_grouped", save_steps=10**9, eval_prompts=0, threads=threads)
    cfg.save()
    m = train(cfg, log=lambda *_: None)["metrics"]
    return {"tokens": m["train_tokens"], "seconds": m["train_runtime_s"], "tokens_per_s": m["tokens_per_s"],
            "mean_loss": m["train_loss"]}


def run_baseline(model_dir: Path, data: Path, work: Path, hp: dict[str, Any], threads: int | None) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from amlft.backends.local.chat import encode_conversation, read_conversations

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(model, LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                                             lora_dropout=hp["lora_dropout"], target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    rows = []
    for conv in read_conversations(data):
        ids, labels = encode_conversation(tok, conv, max_seq_length=hp["max_seq_length"])
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    counted = {"tokens": 0}
    base = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = base(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(output_dir=str(work / "baseline"), per_device_train_batch_size=hp["per_device_train_batch_size"],
                             gradient_accumulation_steps=hp["gradient_accumulation_steps"], max_steps=hp["max_steps"],
                             learning_rate=hp["learning_rate"], lr_scheduler_type=hp["lr_scheduler_type"],
                             warmup_steps=hp["warmup_steps"], logging_strategy="no", save_strategy="no", report_to=[],
                             seed=hp["seed"], use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - started
    return {"tokens": counted["tokens"], "seconds": round(seconds, 2),
            "tokens_per_s": round(counted["tokens"] / seconds, 1), "mean_loss": round(out.training_loss, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", type=Path, help="transformers folder (default: build the tiny model)")
    ap.add_argument("--data", type=Path, help="chat JSONL (default: shipped sample + long general chat rows)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()

    from amlft.backends.local.tiny import build_tiny_model
    from amlft.backends.local.trainer import effective_hyperparameters

    work = Path(tempfile.mkdtemp(prefix="amlft-bench-"))
    model_dir = args.model or build_tiny_model(work / "tiny")
    data = args.data or make_mixed_data(work / "train.jsonl")
    hp = effective_hyperparameters({"max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
                                    "learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                                    "max_seq_length": 512, "warmup_steps": 0})
    results: dict[str, list[dict[str, Any]]] = {"amlft": [], "baseline": []}
    for order in (("baseline", "amlft"), ("amlft", "baseline")):
        for name in order:
            fn = run_amlft if name == "amlft" else run_baseline
            r = fn(Path(model_dir), data, work, hp, args.threads)
            results[name].append(r)
            print(f"{name:9s} {r['tokens']:>7d} real tokens in {r['seconds']:7.2f} s = {r['tokens_per_s']:8.1f} tokens/s"
                  f"  (mean loss {r['mean_loss']})", flush=True)
    mean = {k: sum(r["tokens_per_s"] for r in v) / len(v) for k, v in results.items()}
    print(f"\nmodel {model_dir}, data {data}, {args.steps} steps x batch {args.batch_size}")
    print(f"tokens/s  amlft {mean['amlft']:.1f}   baseline (Trainer + peft, pad-to-longest) {mean['baseline']:.1f}")
    print(f"ratio     {mean['amlft'] / mean['baseline']:.2f}x  (target >= 1.5x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
