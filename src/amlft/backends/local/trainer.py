"""LoRA fine-tuning with transformers + peft, on CPU or CUDA. Reads straight down:
settings, data, model, evaluation before, loop (with checkpoints), merge, evaluation after.

Why a hand-written loop rather than `transformers.Trainer`: throughput and control.
Batches are grouped by length (each batch is padded only to its own longest row, and
rows of similar length share a batch), so almost no compute goes to padding; no
sequences are concatenated, so nothing attends across conversations. Three changes cut
what a step computes without changing its result (tests compare loss and gradients):
the LM head runs only at label positions (`label_loss`), the tokens every row of a batch
starts with run once (`prefix_sharing.py`), and each LoRA Linear is one autograd node
(`fused_lora.py`). Checkpoints hold adapter, optimizer, scheduler and RNG state plus the
position in a batch plan that is fixed by the seed, so a resumed run continues exactly
where the interrupted one stopped. `scripts/bench_training.py` measures this against
transformers' Trainer + peft and TRL's SFTTrainer.

Files in the training folder (`<run_dir>/train`):
    config.json       what submit asked for (model, data files, hyper-parameters, knobs)
    progress.jsonl    one line per optimizer step: step, total, loss, lr, tokens/s, ...
    status.json       the current phase (loading, encoding, evaluating n/total prompts, training, ...)
    checkpoints/      checkpoint-<step>/ (adapter + trainer_state.pt), the last two kept
    adapter/          the final LoRA adapter;  merged/  base + adapter, transformers format
    eval_before.json, result.json, loss_curve.png, train.log (written by train_main)
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from amlft.backends.local.chat import IGNORE_INDEX, encode_conversation, encode_prompt, read_conversations
from amlft.backends.local.prefix_sharing import PrefixSharing
from amlft.errors import ConfigError, TrainingError
from amlft.extras import needs_extra
from amlft.model_refs import hub_offline

# Azure component inputs that only make sense on Azure; accepted and ignored here.
AZURE_ONLY = {"apply_lora", "apply_deepspeed", "apply_ort", "deepspeed_stage", "precision", "num_nodes_finetune",
              "number_of_gpu_to_use_finetuning", "ignore_mismatched_sizes", "auto_find_batch_size",
              "per_device_eval_batch_size", "evaluation_strategy", "save_strategy", "logging_steps",
              "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "eval_steps", "save_total_limit",
              "apply_early_stopping", "early_stopping_patience", "early_stopping_threshold",
              "metric_for_best_model", "enable_full_determinism", "ignore_errors"}
KEEP_CHECKPOINTS = 2
EVAL_BATCH_SIZE = 8                    # prompts generated at once during evaluation
REPLAY_MAX_NEW_TOKENS = 64             # replay answers longer than this are left out


@dataclass
class TrainConfig:
    """Everything one local fine-tune does, every default once; written by submit as config.json.

    The hyper-parameter block uses the Azure ML chat_completion_pipeline component's input
    names, so one profile's `finetune:` moves between backends unchanged.
    """

    # what and where (filled in by submit)
    train_dir: str = ""
    model: str = ""                    # transformers folder or hub id
    train_file: str = ""
    test_file: str | None = None
    # hyper-parameters (profile `finetune:`)
    num_train_epochs: float = 1.0
    max_steps: int = -1                # > 0 overrides epochs (the Azure component's meaning)
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 512          # tokens per conversation; longer rows are truncated
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    # local knobs (profile `local:`)
    device: str = "auto"               # auto | cpu | cuda
    batching: str = "length_grouped"   # length_grouped (rows of similar length share a batch) | padded
    save_steps: int = 50               # checkpoint every N optimizer steps
    eval_prompts: int = 24             # held-out prompts scored (exact match) before and after
    eval_max_new_tokens: int = 32
    general_questions: bool = False    # also score shipped general questions (forgetting check; real models)
    replay_prompts: int = 0            # general prompts the base model answers first, mixed into training
    threads: int | None = None         # torch intra-op threads; None: the idle cores on CPU (idle_cores)
    share_prefix: bool = True          # run a batch's common leading tokens once (prefix_sharing.py)
    fused_lora: bool = True            # one autograd node per LoRA Linear (fused_lora.py)
    trust_remote_code: bool = False

    def save(self) -> Path:
        path = Path(self.train_dir) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, train_dir: Path) -> TrainConfig:
        return cls(**json.loads((Path(train_dir) / "config.json").read_text()))

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HYPERPARAMETERS}


_NAMES = [f.name for f in fields(TrainConfig)]
# The hyper-parameter block of TrainConfig, in declaration order (what `finetune:` may set).
HYPERPARAMETERS = tuple(_NAMES[_NAMES.index("num_train_epochs"): _NAMES.index("seed") + 1])
_CASTS: dict[str, Callable[[Any], Any]] = {"float": float, "int": int, "str": str}
AT_LEAST_ONE = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length", "lora_r")


def effective_hyperparameters(finetune: dict[str, Any]) -> dict[str, Any]:
    """Profile `finetune:` over TrainConfig's defaults, cast to their types; unknown names are an error."""
    unknown = sorted(k for k in finetune if k not in HYPERPARAMETERS and k not in AZURE_ONLY)
    if unknown:
        raise ConfigError(f"finetune: the local backend does not know {', '.join(unknown)}.",
                          hint=f"Known: {', '.join(sorted(HYPERPARAMETERS))}.")
    defaults = TrainConfig()
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    hp: dict[str, Any] = {}
    for name in HYPERPARAMETERS:
        value = finetune.get(name, getattr(defaults, name))
        try:
            hp[name] = _CASTS[types[name]](value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"finetune.{name} must be a number (got {value!r}).") from exc
    for name in AT_LEAST_ONE:
        if hp[name] < 1:
            raise ConfigError(f"finetune.{name} must be at least 1 (got {hp[name]}).")
    return hp


# ------------------------------------------------------------------------ progress
class Status:
    """What the trainer is doing right now, in `status.json` (atomically replaced), for `amlft wait`.

    progress.jsonl covers the optimizer steps; this covers everything around them that also
    takes time on a real model (loading, encoding, evaluation), so nothing is silent for minutes.
    """

    def __init__(self, train_dir: Path, log: Callable[[str], None]) -> None:
        self.path, self.log = Path(train_dir) / "status.json", log
        self._last_logged = 0.0

    def __call__(self, phase: str, done: int = 0, total: int = 0, unit: str = "", detail: str = "",
                 *, log: bool | None = None) -> None:
        from amlft.records import atomic_write_json

        atomic_write_json(self.path, {"phase": phase, "done": done, "total": total, "unit": unit,
                                      "detail": detail, "at": time.time()})
        now = time.monotonic()
        if log or (log is None and (done == total or now - self._last_logged >= 5)):
            self.log(f"{phase}: {done}/{total} {unit} {detail}".rstrip() if total else f"{phase} {detail}".rstrip())
            self._last_logged = now


# ------------------------------------------------------------------------ loading
def pick_device(requested: str) -> tuple[str, Any]:
    """(device, dtype): CUDA with bf16 where supported, else fp32 on CPU."""
    with needs_extra("local", purpose="LoRA training"):
        import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("local.device is 'cuda' but no CUDA GPU is visible.",
                            hint="Set local.device: auto (or cpu).")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


def load_tokenizer_and_model(model_ref: str, *, dtype: Any, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load from a local folder or a hub id; without network a hub id fails with what to do."""
    with needs_extra("local", purpose="LoRA training"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

    from amlft.model_refs import check_hub_model, looks_like_folder, require_folder

    try:
        where = (str(require_folder(model_ref, what="model folder")) if looks_like_folder(model_ref)
                 else check_hub_model(model_ref))
    except ConfigError as exc:
        raise TrainingError(exc.message, hint=exc.hint) from exc
    kw = {"trust_remote_code": trust_remote_code, "local_files_only": where == "cache" or hub_offline()}
    try:
        tok = AutoTokenizer.from_pretrained(model_ref, **kw)
        model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype, **kw)
    except OSError as exc:
        raise TrainingError(
            f"Could not load model {model_ref!r}: {str(exc).splitlines()[0][:300]}",
            hint="Hub ids need network access (or a filled Hugging Face cache); offline, set model.path to a "
                 "local transformers folder, model.source: amlft:smollm2-135m-instruct, or model.build: tiny.",
        ) from exc
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
    if strategy not in ("length_grouped", "padded"):
        raise ConfigError(f"local.batching: {strategy} is not a batching strategy of the local trainer.",
                          hint="Use local.batching: length_grouped (little padding, no cross-contamination) or padded.")
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


def plan_for_steps(lengths: list[int], cfg: TrainConfig) -> tuple[list[list[int]], int]:
    """(micro-batch plan, optimizer steps): epochs, or max_steps drawing further epochs as needed."""
    bs, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    plan = plan_batches(lengths, batch_size=bs, epochs=cfg.num_train_epochs, seed=cfg.seed, strategy=cfg.batching)
    if cfg.max_steps <= 0:
        return plan, math.ceil(len(plan) / accum)
    while len(plan) < cfg.max_steps * accum:  # max_steps beyond the epochs: keep drawing epochs
        plan += plan_batches(lengths, batch_size=bs, epochs=1, seed=cfg.seed + len(plan), strategy=cfg.batching)
    return plan, cfg.max_steps


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest row of this batch only."""
    with needs_extra("local", purpose="LoRA training"):
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


def general_questions() -> list[tuple[str, list[str]]]:
    """Shipped general-knowledge questions with accepted answer substrings: does the model still chat?"""
    from amlft.resources import resource_path

    lines = resource_path("general_questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [(q["question"], list(q["expect"])) for q in map(json.loads, filter(str.strip, lines))]


Progress = Callable[[int, int, str], None]  # (done, total, detail)


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, device: str,
                     max_new_tokens: int, progress: Progress | None = None, finished_only: bool = False) -> list[str]:
    """Greedy answers, EVAL_BATCH_SIZE prompts at a time (left-padded), stopping at the end-of-turn token.

    finished_only: an answer still going at max_new_tokens comes back as "" (cut mid-sentence).
    """
    with needs_extra("local", purpose="LoRA training"):
        import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][-1]["content"]))  # similar lengths batch well
    answers: dict[int, str] = {}
    pad = tokenizer.pad_token_id
    started, generated = time.perf_counter(), 0
    for b in range(0, len(order), EVAL_BATCH_SIZE):
        idx = order[b:b + EVAL_BATCH_SIZE]
        encoded = [encode_prompt(tokenizer, prompts[i]) for i in idx]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        stops = set(_as_list(model.generation_config.eos_token_id)) | {pad}
        for row, i in enumerate(idx):
            new = out[row, width:]
            generated += int((new != pad).sum())
            unfinished = len(new) >= max_new_tokens and int(new[-1]) not in stops
            answers[i] = "" if finished_only and unfinished else tokenizer.decode(new, skip_special_tokens=True).strip()
        if progress:
            rate = generated / max(time.perf_counter() - started, 1e-9)
            progress(len(answers), len(prompts), f"{rate:,.0f} tok/s")
    return [answers[i] for i in range(len(prompts))]


def _as_list(value: Any) -> list[int]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [int(value)]


def heldout_loss(model: Any, tokenizer: Any, examples: list[tuple[list[int], list[int]]], *,
                 device: str) -> float | None:
    """Mean loss per assistant token over the held-out conversations."""
    with needs_extra("local", purpose="LoRA training"):
        import torch

    if not examples:
        return None
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 16):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + 16], tokenizer.pad_token_id).items()}
            n_tok = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * n_tok
            count += n_tok
    return total / max(count, 1)


def evaluate(model: Any, tokenizer: Any, rows: list[tuple[list[dict[str, str]], str]], *, device: str,
             max_new_tokens: int, test_examples: list[tuple[list[int], list[int]]] | None = None,
             general: list[tuple[str, list[str]]] | None = None,
             status: Callable[..., None] | None = None, phase: str = "evaluating") -> dict[str, Any]:
    """Task exact match on held-out prompts, held-out loss, and (optionally) general questions still answered."""
    model.eval()

    def progress(what: str) -> Progress | None:
        return (lambda d, t, detail: status(f"{phase}: {what}", d, t, "prompts", detail)) if status else None

    texts = generate_answers(model, tokenizer, [m for m, _ in rows], device=device, max_new_tokens=max_new_tokens,
                             progress=progress("task prompts"))
    answers: list[dict[str, Any]] = [{"prompt": m[-1]["content"], "reference": ref, "answer": text,
                "match": normalize_answer(text) == normalize_answer(ref)} for (m, ref), text in zip(rows, texts,
                                                                                               strict=True)]
    hits = sum(a["match"] for a in answers)
    out: dict[str, Any] = {"exact_match": hits / len(rows) if rows else None, "n": len(rows), "answers": answers}
    if status:
        status(f"{phase}: held-out loss", 0, 0, "", f"{len(test_examples or [])} conversations")
    out["test_loss"] = heldout_loss(model, tokenizer, test_examples or [], device=device)
    if general:
        said = generate_answers(model, tokenizer, [[{"role": "user", "content": q}] for q, _ in general],
                                device=device, max_new_tokens=24, progress=progress("general questions"))
        graded: list[dict[str, Any]] = [{"prompt": q, "expect": exp, "answer": a,
                   "correct": any(e.lower() in a.lower() for e in exp)} for (q, exp), a in zip(general, said,
                                                                                             strict=True)]
        out["general"] = {"n": len(graded), "accuracy": sum(g["correct"] for g in graded) / len(graded),
                          "answers": graded}
    return out


def replay_rows(model: Any, tokenizer: Any, n: int, *, train_dir: Path, device: str,
                status: Callable[..., None]) -> list[list[dict[str, str]]]:
    """Up to n general conversations answered by the base model itself, to mix into the training data.

    Why: a task whose every answer has one shape ("Category: fruit") teaches a small model
    to answer *everything* that way; rehearsing its own answers to unrelated prompts
    (self-distillation replay) keeps its general behaviour while it learns the task.
    Answers that hit the token limit unfinished are left out; the rows are kept in
    replay.jsonl so a resumed run trains on exactly the same data.
    """
    from amlft.resources import resource_path

    path = train_dir / "replay.jsonl"
    if path.exists():
        return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    lines = resource_path("replay_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()][:n]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    answers = generate_answers(model, tokenizer, convs, device=device, max_new_tokens=REPLAY_MAX_NEW_TOKENS,
                               progress=lambda d, t, detail: status("answering replay prompts", d, t, "prompts",
                                                                    detail), finished_only=True)
    rows = [[*c, {"role": "assistant", "content": a}] for c, a in zip(convs, answers, strict=True) if a]
    path.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    return rows


# ------------------------------------------------------------------------ checkpoints
def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in ckpt_root.glob("checkpoint-*") if (p / "trainer_state.pt").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(model: Any, optimizer: Any, scheduler: Any, ckpt_root: Path, step: int,
                    history: list[dict[str, Any]]) -> Path:
    """Adapter + optimizer/scheduler/RNG state; written to a temp folder then renamed (atomic)."""
    with needs_extra("local", purpose="LoRA training"):
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


def load_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, list[dict[str, Any]]]:
    """Restore adapter, optimizer, scheduler and RNG state; (step, history) to continue from."""
    with needs_extra("local", purpose="LoRA training"):
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)  # tensors and plain containers only
    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(_as_rng_state(state["python_rng"]))
    return int(state["step"]), list(state["history"])


def _as_rng_state(value: Any) -> Any:
    """random.setstate wants tuples; a weights_only load may hand back lists."""
    return tuple(_as_rng_state(v) for v in value) if isinstance(value, list | tuple) else value


def lora_targets(value: str) -> str | list[str]:
    """`all-linear` (peft's shorthand) or a comma-separated list of module names, e.g. `q_proj,v_proj`."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    return names[0] if names == ["all-linear"] else names


# ------------------------------------------------------------------------ the run
def train(cfg: TrainConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) one fine-tune; returns the result written to result.json."""
    with needs_extra("local", purpose="LoRA training"):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import get_scheduler

        from amlft.backends.local.fused_lora import fused_lora_config

    train_dir = Path(cfg.train_dir)
    ckpt_root = train_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    status = Status(train_dir, log)
    device, dtype = pick_device(cfg.device)
    threads = cfg.threads or (idle_cores() if device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # model and data
    status("loading the model", detail=cfg.model, log=True)
    tokenizer, model = load_tokenizer_and_model(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    model.to(device)
    status("encoding the data", detail=Path(cfg.train_file).name, log=True)
    examples, dropped = encode_file(tokenizer, Path(cfg.train_file), cfg.max_seq_length)
    if not examples:
        raise TrainingError(f"No trainable rows in {cfg.train_file}: every row's assistant turns fall past "
                            f"max_seq_length={cfg.max_seq_length}.", hint="Raise finetune.max_seq_length.")
    test_file = Path(cfg.test_file) if cfg.test_file and Path(cfg.test_file).exists() else None
    test_examples = encode_file(tokenizer, test_file, cfg.max_seq_length)[0] if test_file else []
    rows = eval_rows(test_file, cfg.eval_prompts)
    general = general_questions() if cfg.general_questions else []
    log(f"data: {len(examples)} training conversations ({dropped} dropped: no assistant tokens within "
        f"max_seq_length), {len(test_examples)} held-out, {len(rows)} evaluation prompts"
        f"{f', {len(general)} general questions' if general else ''}; device {device} {dtype}")
    evaluation = functools.partial(evaluate, tokenizer=tokenizer, rows=rows, device=device,
                                   max_new_tokens=cfg.eval_max_new_tokens, test_examples=test_examples,
                                   general=general, status=status)

    # evaluation before fine-tuning (kept across resumes)
    before_path = train_dir / "eval_before.json"
    if before_path.exists():
        before = json.loads(before_path.read_text())
    else:
        before = evaluation(model, phase="evaluating before fine-tuning")
        before_path.write_text(json.dumps(before, indent=2) + "\n")
        log(f"before fine-tuning: exact match {before['exact_match']}, held-out loss {before['test_loss']}"
            + (f", general questions {before['general']['accuracy']:.0%}" if general else ""))

    # replay: the base model's own answers to general prompts, mixed in (keeps it from forgetting how to chat)
    if cfg.replay_prompts:
        replay = replay_rows(model, tokenizer, cfg.replay_prompts, train_dir=train_dir, device=device, status=status)
        examples += [e for e in (encode_conversation(tokenizer, r, max_seq_length=cfg.max_seq_length) for r in replay)
                     if any(lab != IGNORE_INDEX for lab in e[1][1:])]
        log(f"replay: {len(replay)} general conversations answered by the base model, mixed into training")

    # LoRA, batch plan, optimizer; then resume where a killed run stopped
    lora = fused_lora_config if cfg.fused_lora else LoraConfig
    model = get_peft_model(model, lora(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       target_modules=lora_targets(cfg.lora_target_modules), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total_params = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    plan, total_steps = plan_for_steps([len(ids) for ids, _ in examples], cfg)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=total_steps)
    start_step, history = 0, list[dict[str, Any]]()
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        start_step, history = load_checkpoint(ckpt, model, optimizer, scheduler)
        log(f"resuming from {ckpt.name} (step {start_step} of {total_steps})")
    log(f"training: {total_steps} steps, batch {cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps} "
        f"accumulation, {trainable:,} trainable of {total_params:,} parameters (LoRA r={cfg.lora_r})")
    status("training", start_step, total_steps, "steps", log=False)

    # the loop
    started = time.perf_counter()
    sharing = PrefixSharing(enabled=cfg.share_prefix)
    run_tokens = train_steps(model, optimizer, scheduler, params, examples, plan, cfg, pad_id=tokenizer.pad_token_id,
                             device=device, history=history, start_step=start_step, total_steps=total_steps,
                             sharing=sharing)
    runtime = time.perf_counter() - started
    if sharing.reason:
        log(f"shared-prefix batching off: {sharing.reason}")
    elif sharing.saved_tokens:
        log(f"shared prefixes: {sharing.saved_tokens:,} of {run_tokens:,} token positions ran once per batch "
            f"instead of once per row")
    save_checkpoint(model, optimizer, scheduler, ckpt_root, total_steps, history)

    # merge + evaluation after fine-tuning
    status("merging the adapter", log=True)
    adapter_dir, merged_dir = train_dir / "adapter", train_dir / "merged"
    model.save_pretrained(str(adapter_dir))
    merged: Any = model.merge_and_unload()
    after = evaluation(merged, phase="evaluating after fine-tuning")
    log(f"after fine-tuning: exact match {after['exact_match']}, held-out loss {after['test_loss']}"
        + (f", general questions {after['general']['accuracy']:.0%}" if general else ""))
    status("saving the merged model", detail=str(merged_dir), log=True)
    shutil.rmtree(merged_dir, ignore_errors=True)
    merged.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    metrics = {
        "train_loss": round(sum(h["loss"] for h in history) / max(len(history), 1), 5),
        "final_loss": history[-1]["loss"] if history else None,
        "steps": total_steps,
        "resumed_from_step": start_step or None,
        "tokens_per_s": round(run_tokens / runtime, 1) if runtime > 0 and total_steps > start_step else None,
        "train_runtime_s": round(runtime, 2),
        "train_tokens": sum(h["tokens"] for h in history),
        "shared_prefix_tokens": sharing.saved_tokens,
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
    if general:
        metrics["eval_general_before"] = before["general"]["accuracy"]
        metrics["eval_general_after"] = after["general"]["accuracy"]
    return {"metrics": metrics, "history": history, "before": before, "after": after,
            "adapter_dir": str(adapter_dir), "merged_dir": str(merged_dir), "checkpoint_dir": str(ckpt_root)}


def idle_cores(*, sample_s: float = 0.5) -> int:
    """CPU threads for training: the cores other processes are not using right now (at least 1).

    Why: torch's default is one intra-op thread per core, and its OpenMP threads spin while
    they wait for each other; on a shared machine where other processes hold the cores,
    that spinning slows a step several-fold (measured 7-15x on 2 cores at load 8).
    Why a short sample of the whole machine's CPU time, less this process's own, rather than
    the load average: the 1-minute load average lags by about a minute and counts this
    process's own recent work (the evaluation before training runs here on every core), so
    right after that evaluation it halved the threads on an idle 2-core machine."""
    with needs_extra("local", purpose="LoRA training"):
        import psutil

    cores = psutil.cpu_count() or os.cpu_count() or 1
    me = psutil.Process()

    def busy(t: Any) -> float:  # guest time is already inside user time on Linux
        return float(sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")))

    machine, own, t0 = busy(psutil.cpu_times()), sum(me.cpu_times()[:2]), time.monotonic()
    time.sleep(sample_s)
    wall = max(time.monotonic() - t0, 1e-3)
    others = (busy(psutil.cpu_times()) - machine - (sum(me.cpu_times()[:2]) - own)) / wall
    return max(1, min(cores, round(cores - max(0.0, others))))


def label_loss(model: Any, batch: dict[str, Any], sharing: PrefixSharing | None = None) -> Any:
    """The mean next-token loss over label positions, with the LM head applied only there.

    Same value as `model(**batch).loss`, but the vocabulary projection and softmax (a fifth or
    more of a small model's compute) skip the prompt, system and padding positions, whose
    logits that loss computes and throws away (71% of the tokens of the benchmark's chat data).
    With `sharing`, the rows' common leading tokens run once (prefix_sharing.py). Models that
    post-process logits (soft-capping, scaling) or hide their decoder take the plain path."""
    with needs_extra("local", purpose="LoRA training"):
        import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    plain = (not hasattr(base, "get_decoder") or base.get_output_embeddings() is None
             or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))
    if plain:
        return model(**batch).loss
    head = base.get_output_embeddings()

    def loss_from(rows: dict[str, Any], hidden: Any, offset: int) -> Any:
        targets = rows["labels"][:, offset + 1:]  # hidden holds positions offset.. of every row
        keep = targets != IGNORE_INDEX
        return F.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep])

    if sharing is None:
        hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return loss_from(batch, hidden.last_hidden_state, 0)
    sharing.check(base, batch, loss_from)
    return loss_from(batch, *sharing.hidden(base, batch))


def train_steps(model: Any, optimizer: Any, scheduler: Any, params: list[Any],
                examples: list[tuple[list[int], list[int]]], plan: list[list[int]], cfg: TrainConfig, *,
                pad_id: int, device: str, history: list[dict[str, Any]], start_step: int, total_steps: int,
                sharing: PrefixSharing | None = None) -> int:
    """Optimizer steps start_step..total_steps: one progress.jsonl line each, checkpoints every save_steps.

    Returns the tokens processed. progress.jsonl is rewritten from `history` first, so a
    resumed run does not show the steps lost with the killed process twice.
    """
    with needs_extra("local", purpose="LoRA training"):
        import torch

    train_dir = Path(cfg.train_dir)
    accum = cfg.gradient_accumulation_steps
    progress_path = train_dir / "progress.jsonl"
    progress_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    model.train()
    started, run_tokens = time.perf_counter(), 0
    with progress_path.open("a", encoding="utf-8") as prog:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            micro = [collate([examples[j] for j in plan[k]], pad_id) for k in range(step * accum, (step + 1) * accum)]
            label_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
            step_loss, step_tokens = 0.0, 0
            for batch in micro:
                batch = {k: v.to(device) for k, v in batch.items()}
                n_lab = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                loss = label_loss(model, batch, sharing) * (n_lab / max(label_tokens, 1))  # token-weighted over the step
                loss.backward()
                step_loss += float(loss.detach())
                step_tokens += int(batch["attention_mask"].sum())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            run_tokens += step_tokens
            entry = {"step": step + 1, "total_steps": total_steps, "loss": round(step_loss, 5),
                     "lr": scheduler.get_last_lr()[0], "grad_norm": round(grad_norm, 4), "tokens": step_tokens,
                     "tokens_per_s": round(step_tokens / dt, 1),
                     "elapsed_s": round(time.perf_counter() - started, 3),
                     "epoch": round((step + 1) * accum / max(len(plan), 1) * math.ceil(cfg.num_train_epochs), 3)}
            history.append(entry)
            prog.write(json.dumps(entry) + "\n")
            prog.flush()
            if (step + 1) % cfg.save_steps == 0 and step + 1 < total_steps:
                save_checkpoint(model, optimizer, scheduler, train_dir / "checkpoints", step + 1, history)
    return run_tokens
