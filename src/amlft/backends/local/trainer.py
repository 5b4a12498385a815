"""LoRA fine-tuning with transformers + peft, on CPU or CUDA. Reads straight down:
settings, data, model, evaluation before, loop (with checkpoints), merge, evaluation after.

Why a hand-written loop rather than `transformers.Trainer`: throughput and control.
Batches are grouped by length (each batch is padded only to its own longest row, and
rows of similar length share a batch), so almost no compute goes to padding; no
sequences are concatenated, so nothing attends across conversations. Checkpoints hold
adapter, optimizer, scheduler and RNG state plus the position in a batch plan that is
fixed by the seed, so a resumed run continues exactly where the interrupted one stopped.
`scripts/bench_training.py` measures this against a plain Trainer + peft baseline.

Files in the training folder (`<run_dir>/train`):
    config.json       what submit asked for (model, data files, hyper-parameters, knobs)
    progress.jsonl    one line per optimizer step: step, total, loss, lr, tokens/s, ...
    checkpoints/      checkpoint-<step>/ (adapter + trainer_state.pt), the last two kept
    adapter/          the final LoRA adapter;  merged/  base + adapter, transformers format
    eval_before.json, result.json, loss_curve.png, train.log (written by train_main)
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlft.backends.local.chat import IGNORE_INDEX, encode_conversation, read_conversations
from amlft.errors import ConfigError, TrainingError

# Every default in one commented block. Names are the Azure ML chat_completion_pipeline
# component's input names, so one profile moves between backends.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "num_train_epochs": 1,
    "max_steps": -1,                  # > 0 overrides epochs (the Azure component's meaning)
    "learning_rate": 2e-4,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 512,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
    "max_grad_norm": 1.0,
    "seed": 42,
}
# Azure component inputs that only make sense on Azure; accepted and ignored here.
AZURE_ONLY = {"apply_lora", "apply_deepspeed", "apply_ort", "deepspeed_stage", "precision", "num_nodes_finetune",
              "number_of_gpu_to_use_finetuning", "ignore_mismatched_sizes", "auto_find_batch_size",
              "per_device_eval_batch_size", "evaluation_strategy", "save_strategy", "logging_steps",
              "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "eval_steps", "save_total_limit",
              "apply_early_stopping", "early_stopping_patience", "early_stopping_threshold",
              "metric_for_best_model", "enable_full_determinism", "ignore_errors"}
FAIL_AFTER_ENV = "AMLFT_TRAIN_FAIL_AFTER_STEP"  # tests: exit abruptly after this step (crash/resume)
KEEP_CHECKPOINTS = 2


def effective_hyperparameters(finetune: dict[str, Any]) -> dict[str, Any]:
    """Profile `finetune:` over the defaults; unknown names are an error, not a silent no-op."""
    unknown = sorted(k for k in finetune if k not in DEFAULT_HYPERPARAMETERS and k not in AZURE_ONLY)
    if unknown:
        raise ConfigError(f"finetune: the local backend does not know {', '.join(unknown)}.",
                          hint=f"Known: {', '.join(sorted(DEFAULT_HYPERPARAMETERS))}.")
    hp = dict(DEFAULT_HYPERPARAMETERS)
    hp.update({k: v for k, v in finetune.items() if k in DEFAULT_HYPERPARAMETERS})
    casts = {"num_train_epochs": float, "max_steps": int, "learning_rate": float, "warmup_steps": int,
             "weight_decay": float, "per_device_train_batch_size": int, "gradient_accumulation_steps": int,
             "max_seq_length": int, "lora_r": int, "lora_alpha": float, "lora_dropout": float,
             "max_grad_norm": float, "seed": int}
    for k, cast in casts.items():
        try:
            hp[k] = cast(hp[k])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"finetune.{k} must be a number (got {hp[k]!r}).") from exc
    for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length", "lora_r"):
        if hp[k] < 1:
            raise ConfigError(f"finetune.{k} must be at least 1 (got {hp[k]}).")
    return hp


@dataclass
class TrainSpec:
    """What one training run does; written by submit as config.json, read by train_main."""

    train_dir: str
    model: str                       # local folder or hub id
    train_file: str
    test_file: str | None
    hyperparameters: dict[str, Any]
    device: str = "auto"
    batching: str = "length_grouped"
    save_steps: int = 50
    eval_prompts: int = 24
    threads: int | None = None
    trust_remote_code: bool = False
    eval_max_new_tokens: int = 32
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> Path:
        path = Path(self.train_dir) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, train_dir: Path) -> TrainSpec:
        return cls(**json.loads((train_dir / "config.json").read_text()))


# ------------------------------------------------------------------------ loading
def pick_device(requested: str) -> tuple[str, Any]:
    """(device, dtype): CUDA with bf16 where supported, else fp32 on CPU."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("local.device is 'cuda' but no CUDA GPU is visible.",
                            hint="Set local.device: auto (or cpu).")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


def load_tokenizer_and_model(model_ref: str, *, dtype: Any, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load from a local folder or a hub id; without network a hub id fails with what to do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Read at call time (huggingface_hub reads it once at import): offline means cache only, no retries.
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    kw = {"trust_remote_code": trust_remote_code, "local_files_only": offline}
    try:
        tok = AutoTokenizer.from_pretrained(model_ref, **kw)
        model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype, **kw)
    except OSError as exc:
        raise TrainingError(
            f"Could not load model {model_ref!r}: {str(exc).splitlines()[0][:300]}",
            hint="Hub ids need network access (or a filled Hugging Face cache); offline, set model.path to a "
                 "local transformers folder or use model.build: tiny.") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise TrainingError(f"Model {model_ref!r} has no chat template.",
                            hint="Fine-tune an instruct/chat model (its tokenizer_config carries chat_template).")
    return tok, model


def encode_file(tokenizer: Any, path: Path, max_seq_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(examples, dropped): rows whose assistant tokens all fall past max_seq_length are dropped (counted)."""
    examples, dropped = [], 0
    for conv in read_conversations(path):
        ids, labels = encode_conversation(tokenizer, conv, max_seq_length=max_seq_length)
        if any(lab != IGNORE_INDEX for lab in labels[1:]):
            examples.append((ids, labels))
        else:
            dropped += 1
    return examples, dropped


# ------------------------------------------------------------------------ batching
def plan_batches(lengths: list[int], *, batch_size: int, epochs: float, seed: int,
                 strategy: str = "length_grouped") -> list[list[int]]:
    """The whole run's micro-batches (example indices), fixed by the seed so a resume replays it.

    length_grouped: shuffle, then sort within windows of 64 batches by length and cut
    into batches, then shuffle the batches - similar lengths share a batch (little
    padding) while the order stays random. padded: plain random batches.
    """
    if strategy == "packed":
        raise ConfigError("local.batching: packed is not supported by the local trainer.",
                          hint="Use local.batching: length_grouped (no padding waste, no cross-contamination).")
    rng = random.Random(seed)
    n = len(lengths)
    full_epochs = math.floor(epochs)
    plan: list[list[int]] = []
    for epoch in range(math.ceil(epochs)):
        order = list(range(n))
        rng.shuffle(order)
        if epoch >= full_epochs:  # a fractional last epoch
            order = order[: max(1, round((epochs - full_epochs) * n))]
        if strategy == "length_grouped":
            window = batch_size * 64
            chunks = [sorted(order[i:i + window], key=lambda j: lengths[j]) for i in range(0, len(order), window)]
            batches = [c[i:i + batch_size] for c in chunks for i in range(0, len(c), batch_size)]
            rng.shuffle(batches)
        else:
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        plan.extend(batches)
    return plan


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest row of this batch only."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids_t = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels_t = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask_t = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(examples):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        labels_t[i, : len(labels)] = torch.tensor(labels)
        mask_t[i, : len(ids)] = 1
    return {"input_ids": ids_t, "labels": labels_t, "attention_mask": mask_t}


# ------------------------------------------------------------------------ evaluation
def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".!").strip().lower()


EXACT_MATCH_MAX_WORDS = 8


def eval_rows(test_file: Path | None, n: int) -> list[tuple[list[dict[str, str]], str]]:
    """The first n held-out conversations with a short final answer, as (prompt messages, reference).

    Exact match only means something for short, deterministic answers (a label, a number,
    a fixed format), so rows whose reference answer is longer than EXACT_MATCH_MAX_WORDS
    words are left to the held-out loss instead.
    """
    if not test_file or n <= 0 or not Path(test_file).exists():
        return []
    rows = []
    for conv in read_conversations(Path(test_file)):
        last = max((i for i, m in enumerate(conv) if m["role"] == "assistant"), default=None)
        if last is None or last == 0 or len(conv[last]["content"].split()) > EXACT_MATCH_MAX_WORDS:
            continue
        rows.append((conv[:last], conv[last]["content"]))
        if len(rows) >= n:
            break
    return rows


def evaluate(model: Any, tokenizer: Any, rows: list[tuple[list[dict[str, str]], str]], *, device: str,
             max_new_tokens: int, test_examples: list[tuple[list[int], list[int]]] | None = None) -> dict[str, Any]:
    """Greedy answers to held-out prompts (normalized exact match) and mean held-out loss."""
    import torch

    model.eval()
    answers = []
    hits = 0
    with torch.no_grad():
        for messages, reference in rows:
            enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            ok = normalize_answer(text) == normalize_answer(reference)
            hits += ok
            answers.append({"prompt": messages[-1]["content"], "reference": reference, "answer": text, "match": ok})
        loss = None
        if test_examples:
            total, count = 0.0, 0
            for i in range(0, len(test_examples), 16):
                batch = collate(test_examples[i:i + 16], tokenizer.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                n_tok = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                total += float(model(**batch).loss) * n_tok
                count += n_tok
            loss = total / max(count, 1)
    return {"exact_match": hits / len(rows) if rows else None, "n": len(rows), "test_loss": loss,
            "answers": answers}


# ------------------------------------------------------------------------ checkpoints
def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in ckpt_root.glob("checkpoint-*") if (p / "trainer_state.pt").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(model: Any, optimizer: Any, scheduler: Any, ckpt_root: Path, step: int,
                    history: list[dict[str, Any]]) -> Path:
    """Adapter + optimizer/scheduler/RNG state; written to a temp folder then renamed (atomic)."""
    import torch

    final = ckpt_root / f"checkpoint-{step}"
    tmp = ckpt_root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "history": history},
               tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(ckpt_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------ the run
def train(spec: TrainSpec, *, log: Any = print) -> dict[str, Any]:
    """Run (or resume) one fine-tune; returns the result written to result.json."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import get_scheduler

    hp = spec.hyperparameters
    train_dir = Path(spec.train_dir)
    ckpt_root = train_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    progress_path = train_dir / "progress.jsonl"
    if spec.threads:
        torch.set_num_threads(spec.threads)
    random.seed(hp["seed"])
    torch.manual_seed(hp["seed"])
    device, dtype = pick_device(spec.device)

    # data
    tokenizer, model = load_tokenizer_and_model(spec.model, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    examples, dropped = encode_file(tokenizer, Path(spec.train_file), hp["max_seq_length"])
    if not examples:
        raise TrainingError(f"No trainable rows in {spec.train_file}: every row's assistant turns fall past "
                            f"max_seq_length={hp['max_seq_length']}.", hint="Raise finetune.max_seq_length.")
    test_examples = (encode_file(tokenizer, Path(spec.test_file), hp["max_seq_length"])[0]
                     if spec.test_file and Path(spec.test_file).exists() else [])
    rows = eval_rows(Path(spec.test_file) if spec.test_file else None, spec.eval_prompts)
    log(f"data: {len(examples)} training conversations ({dropped} dropped: no assistant tokens within "
        f"max_seq_length), {len(test_examples)} held-out, {len(rows)} evaluation prompts; device {device} {dtype}")

    # model + evaluation before fine-tuning (kept across resumes)
    model.to(device)
    before_path = train_dir / "eval_before.json"
    if before_path.exists():
        before = json.loads(before_path.read_text())
    else:
        before = evaluate(model, tokenizer, rows, device=device, max_new_tokens=spec.eval_max_new_tokens,
                          test_examples=test_examples)
        before_path.write_text(json.dumps(before, indent=2) + "\n")
        log(f"before fine-tuning: exact match {before['exact_match']}, held-out loss {before['test_loss']}")
    lora = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                      target_modules=hp["lora_target_modules"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    # plan
    bs, accum = hp["per_device_train_batch_size"], hp["gradient_accumulation_steps"]
    plan = plan_batches([len(ids) for ids, _ in examples], batch_size=bs, epochs=hp["num_train_epochs"],
                        seed=hp["seed"], strategy=spec.batching)
    total_steps = math.ceil(len(plan) / accum)
    if hp["max_steps"] > 0:
        total_steps = hp["max_steps"]
        while len(plan) < total_steps * accum:  # max_steps beyond the epochs: keep drawing epochs
            plan += plan_batches([len(ids) for ids, _ in examples], batch_size=bs, epochs=1,
                                 seed=hp["seed"] + len(plan), strategy=spec.batching)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
    scheduler = get_scheduler(hp["lr_scheduler_type"], optimizer, num_warmup_steps=hp["warmup_steps"],
                              num_training_steps=total_steps)

    # resume
    start_step, history = 0, []
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        start_step, history = int(state["step"]), list(state["history"])
        log(f"resuming from {ckpt.name} (step {start_step} of {total_steps})")
    # progress.jsonl mirrors history: rewrite it so a resumed run does not show the lost steps twice
    progress_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    log(f"training: {total_steps} steps, batch {bs} x {accum} accumulation, {trainable:,} trainable of "
        f"{total_params:,} parameters (LoRA r={hp['lora_r']})")
    fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)
    model.train()
    pad_id = tokenizer.pad_token_id
    started = time.perf_counter()
    run_tokens = 0
    with progress_path.open("a", encoding="utf-8") as prog:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            micro = [collate([examples[j] for j in plan[k]], pad_id) for k in range(step * accum, (step + 1) * accum)]
            label_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
            step_loss, step_tokens = 0.0, 0
            for batch in micro:
                batch = {k: v.to(device) for k, v in batch.items()}
                n_lab = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                loss = model(**batch).loss * (n_lab / max(label_tokens, 1))  # token-weighted over the step
                loss.backward()
                step_loss += float(loss.detach())
                step_tokens += int(batch["attention_mask"].sum())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, hp["max_grad_norm"]))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            run_tokens += step_tokens
            entry = {"step": step + 1, "total_steps": total_steps, "loss": round(step_loss, 5),
                     "lr": scheduler.get_last_lr()[0], "grad_norm": round(grad_norm, 4), "tokens": step_tokens,
                     "tokens_per_s": round(step_tokens / dt, 1),
                     "elapsed_s": round(time.perf_counter() - started, 3),
                     "epoch": round((step + 1) * accum / max(len(plan), 1) * math.ceil(hp["num_train_epochs"]), 3)}
            history.append(entry)
            prog.write(json.dumps(entry) + "\n")
            prog.flush()
            if (step + 1) % spec.save_steps == 0 and step + 1 < total_steps:
                save_checkpoint(model, optimizer, scheduler, ckpt_root, step + 1, history)
            if fail_after and step + 1 == fail_after:
                log(f"{FAIL_AFTER_ENV}={fail_after}: exiting abruptly to simulate a crash")
                os._exit(17)
    runtime = time.perf_counter() - started
    save_checkpoint(model, optimizer, scheduler, ckpt_root, total_steps, history)

    # merge + evaluation after fine-tuning
    adapter_dir, merged_dir = train_dir / "adapter", train_dir / "merged"
    model.save_pretrained(adapter_dir)
    merged = model.merge_and_unload()
    merged.eval()
    after = evaluate(merged, tokenizer, rows, device=device, max_new_tokens=spec.eval_max_new_tokens,
                     test_examples=test_examples)
    log(f"after fine-tuning: exact match {after['exact_match']}, held-out loss {after['test_loss']}")
    shutil.rmtree(merged_dir, ignore_errors=True)
    merged.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    resumed_steps = total_steps - start_step
    metrics = {
        "train_loss": round(sum(h["loss"] for h in history) / max(len(history), 1), 5),
        "final_loss": history[-1]["loss"] if history else None,
        "steps": total_steps,
        "resumed_from_step": start_step or None,
        "tokens_per_s": round(run_tokens / runtime, 1) if runtime > 0 and resumed_steps else None,
        "train_runtime_s": round(runtime, 2),
        "train_tokens": sum(h["tokens"] for h in history),
        "trainable_params": trainable,
        "total_params": total_params,
        "dropped_rows": dropped,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "eval_exact_match_before": before["exact_match"],
        "eval_exact_match_after": after["exact_match"],
        "eval_loss_before": before["test_loss"],
        "eval_loss_after": after["test_loss"],
    }
    return {"metrics": metrics, "history": history, "before": before, "after": after,
            "adapter_dir": str(adapter_dir), "merged_dir": str(merged_dir), "checkpoint_dir": str(ckpt_root)}
