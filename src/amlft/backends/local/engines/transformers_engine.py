"""The transformers engine: one model, dynamic batching over `generate` (left-padded batches).

Why rows are tracked here and not by `generate`: a per-step stopping callable (RowControl)
sees every row's ids, so each row (1) stops at its *own* max_new_tokens, end-of-sequence
token or stop string, (2) stops when its caller timed out or went away — freeing the cores
for everyone else — and (3) streams its newly decoded text. A row's output is exactly what
it would have been had it run alone (greedy decoding with left padding and an attention
mask is position-exact). `min_tokens` masks the end-of-sequence logits of rows that are
still short, as vLLM does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from amlft.backends.local.engines.base import (
    GenParams,
    GenRequest,
    encode_within_context,
    template_roles,
)
from amlft.backends.local.engines.scheduler import FolderEngine, find_stop
from amlft.extras import needs_extra

log = logging.getLogger("amlft.server")
SMALL_MODEL_PARAMS = 50_000_000


class TransformersEngine(FolderEngine):
    """Loads a transformers folder and serves generation requests from one worker thread."""

    # ---- model -----------------------------------------------------------------------------
    def _load(self, device: str, threads: int | None) -> None:
        from amlft.errors import ConfigError

        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"{self.model_dir} is not a transformers model folder (no config.json).",
                              hint="Point --model-dir at the registered model's folder (outputs.register.model_dir).")
        with needs_extra("local", purpose="The transformers scoring engine"):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"The tokenizer in {self.model_dir} has no chat template.",
                              hint="Serve a chat (instruct) model, or save a tokenizer with chat_template set.")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        self.model = model.to(device).eval()
        self.model_name = self.model_dir.name
        # Chat models often end a turn with a token other than the tokenizer's eos (or list several).
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        # End-of-sequence is decided per row here (ignore_eos, min_tokens differ between rows of a
        # batch), so generate() must not act on it: it would pad a row that asked to go on.
        self.model.generation_config.eos_token_id = None
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.roles = template_roles(self.tokenizer)
        small = device == "cpu" and sum(p.numel() for p in self.model.parameters()) < SMALL_MODEL_PARAMS
        if threads is None and small:
            # A small model's matmuls are too small to split: extra intra-op threads only spin and,
            # on a shared machine, slow decoding several-fold. Big models keep torch's default.
            threads = 1
        if threads:  # process-wide: only the server process asks
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids (see engines.base.encode_within_context)."""
        return encode_within_context(self.tokenizer, messages, self.context_length)

    # ---- generation --------------------------------------------------------------------------
    def generate_batch(self, batch: list[GenRequest]) -> None:
        """One left-padded `generate` call for requests sharing a batch key; fills each request's
        text/completion_tokens/finish_reason (requests already cancelled are skipped)."""
        torch = self.torch
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, width - len(r.prompt_ids):] = 1
        control = RowControl(self, batch, width)
        # the processor only where needed: any custom logits processor slows every decoding step
        processors = [control.min_tokens] if any(r.params.min_tokens for r in batch) else []
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                      generation_config=self._config(batch[0].params, max(control.budgets)),
                                      stopping_criteria=[control], logits_processor=processors)
        control.collect(out.cpu())

    def _config(self, p: GenParams, max_new_tokens: int) -> Any:
        with needs_extra("local", purpose="The transformers scoring engine"):
            from transformers import GenerationConfig

        # Unset knobs fall back to the model's generation_config, as the HF pipeline behind Azure does.
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=p.do_sample, pad_token_id=self.pad_id)
        if p.do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if getattr(p, name) is not None:
                    setattr(cfg, name, getattr(p, name))
        if p.repetition_penalty is not None:
            cfg.repetition_penalty = p.repetition_penalty
        return cfg

    def decode(self, ids: Any) -> str:
        return str(self.tokenizer.decode(ids.tolist(), skip_special_tokens=True))


class RowControl:
    """Per-step bookkeeping of one batch: when each row stops, and what it has said so far."""

    def __init__(self, engine: TransformersEngine, batch: list[GenRequest], width: int) -> None:
        self.engine, self.batch, self.width = engine, batch, width
        room = engine.context_length
        self.budgets = [max(1, min(r.params.max_new_tokens, room - len(r.prompt_ids) if room else 1 << 30))
                        for r in batch]
        self.stop_len: list[int | None] = [None] * len(batch)  # tokens kept per row once it stops
        self.stop_text: list[str | None] = [None] * len(batch)  # text cut at a stop string
        self.scanned = [0] * len(batch)  # text length already searched for stop strings
        self.eos = sorted(engine.eos_ids)

    def min_tokens(self, ids: Any, scores: Any) -> Any:
        """Logits processor: a row shorter than its min_tokens cannot pick an end-of-sequence token."""
        n = ids.shape[1] - self.width
        for i, r in enumerate(self.batch):
            if n < r.params.min_tokens and self.eos:
                scores[i, self.eos] = float("-inf")
        return scores

    def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
        n = ids.shape[1] - self.width
        last = ids[:, -1].tolist()
        now = time.monotonic()
        done = [self._step(i, r, ids[i, self.width:], n, last[i], now) for i, r in enumerate(self.batch)]
        return self.engine.torch.tensor(done, dtype=self.engine.torch.bool, device=ids.device)

    def _step(self, i: int, r: GenRequest, gen: Any, n: int, last: int, now: float) -> bool:
        """Decide whether row i stops after its n-th token; stream its new text. True once stopped."""
        if self.stop_len[i] is not None:  # stopped earlier: its later tokens are discarded
            return True
        p = r.params
        if r.cancelled or now > r.deadline:
            self.stop_len[i] = n
            if not r.cancelled:
                self.engine.cancel(r, "timeout")
            return True
        if last in self.engine.eos_ids and not p.ignore_eos and n > p.min_tokens:
            self.stop_len[i], r.finish_reason = n - 1, "stop"
        elif n >= self.budgets[i]:
            self.stop_len[i], r.finish_reason = n, "length"
        if r.on_delta is None and not p.stop:
            return self.stop_len[i] is not None
        text = self.engine.decode(gen[: self.stop_len[i] if self.stop_len[i] is not None else n])
        if p.stop:
            # only text new since the last step is searched (with room for a match that straddles it);
            # text from before min_tokens was reached never stops the row, as in vLLM
            start = max(0, self.scanned[i] - max(map(len, p.stop)) + 1)
            cut = find_stop(text[start:], p.stop) if n >= p.min_tokens else None
            self.scanned[i] = len(text)
            if cut is not None:
                self.stop_len[i], r.finish_reason, self.stop_text[i] = n, "stop", text[: start + cut]
                text = text[: start + cut]
        self.engine.push_text(r, text, final=False)
        return self.stop_len[i] is not None

    def collect(self, out: Any) -> None:
        """Each row's result from generate's output (a row never stopped ran out of tokens)."""
        for i, r in enumerate(self.batch):
            if r.cancelled:
                continue
            n = self.stop_len[i]
            if n is None:
                n, r.finish_reason = out.shape[1] - self.width, "length"
            gen = out[i, self.width: self.width + n]
            r.completion_tokens = int(gen.shape[0])
            text = self.stop_text[i]
            r.text = text if text is not None else self.engine.decode(gen)
            self.engine.push_text(r, r.text, final=True)
