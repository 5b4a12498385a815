"""The ONNX Runtime GenAI engine: serves an `amlft export` folder (genai_config.json + model.onnx).

Why a second engine: ORT GenAI's int4 CPU kernels decode a small model several times faster
than PyTorch fp32 on the same cores (see scripts/bench_engines.py), and the folder it serves is
the one a laptop or an edge box runs (Foundry Local's layout).

How a batch runs: each request gets its own og.Generator (its own KV cache), and the worker
steps the generators of a batch in turn, one token each, so every row streams as it goes, stops
on its own (end-of-turn, max_new_tokens, stop string, cancel, deadline) and frees its cache at
once. Search options map one to one: greedy or sampling (temperature, top_p, top_k),
repetition_penalty; min_tokens and ignore_eos become the search's min_length, which masks the
end-of-sequence logits until the row is long enough (as vLLM's min_tokens does).

Prompts are encoded with the export's own tokenizer through the same chat helper as the
transformers engine (amlft.backends.local.chat), so template, special-token escaping and
prompt ids are identical on both engines; text is decoded incrementally with ORT GenAI's
tokenizer stream.
"""

from __future__ import annotations

import json
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

log = logging.getLogger("amlft.server")


class OrtGenaiEngine(FolderEngine):
    """Loads an ONNX Runtime GenAI folder and serves generation requests from one worker thread."""

    # ---- model -----------------------------------------------------------------------------
    def _load(self, device: str, threads: int | None) -> None:
        from amlft.errors import ConfigError
        from amlft.extras import needs_extra, require

        if not (self.model_dir / "genai_config.json").is_file():
            hint = ("This is a transformers folder: export it first (amlft export --model-dir "
                    f"{self.model_dir} --out DIR) or serve it with --engine transformers."
                    if (self.model_dir / "config.json").is_file() else
                    "Point --model-dir at an `amlft export` folder (it holds genai_config.json).")
            raise ConfigError(f"{self.model_dir} is not an ONNX Runtime GenAI model folder (no genai_config.json).",
                              hint=hint)
        og = require("onnxruntime_genai", extra="onnx", purpose="The onnxruntime-genai engine")
        with needs_extra("local", purpose="The ONNX Runtime GenAI scoring engine"):
            from transformers import AutoTokenizer

        self.og = og
        genai = json.loads((self.model_dir / "genai_config.json").read_text(encoding="utf-8"))
        config = og.Config(str(self.model_dir))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.og_tokenizer = og.Tokenizer(self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"The tokenizer in {self.model_dir} has no chat template.",
                              hint="Export a chat (instruct) model: its tokenizer carries the template.")
        self.device = str(self.model.device_type).lower() if hasattr(self.model, "device_type") else "cpu"
        self.model_name = self.model_dir.name
        self.context_length = int(genai["model"].get("context_length") or 0) or None
        eos = genai["model"].get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.threads = threads
        self.roles = template_roles(self.tokenizer)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids (see engines.base.encode_within_context)."""
        return encode_within_context(self.tokenizer, messages, self.context_length)

    # ---- generation --------------------------------------------------------------------------
    def generate_batch(self, batch: list[GenRequest]) -> None:
        """Step each row's generator in turn until every row has stopped."""
        rows = [_Row(self, r) for r in batch]
        live = [row for row in rows if not row.finished]
        while live:
            now = time.monotonic()
            for row in live:
                row.step(now)
            live = [row for row in live if not row.finished]
        for row in rows:
            row.collect()

    def search_options(self, p: GenParams, prompt_len: int, budget: int) -> dict[str, Any]:
        opts: dict[str, Any] = {"max_length": prompt_len + budget, "do_sample": p.do_sample}
        floor = budget if p.ignore_eos else min(p.min_tokens, budget)
        if floor:
            opts["min_length"] = prompt_len + floor  # the search masks end-of-sequence until then
        if p.do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if getattr(p, name) is not None:
                    opts[name] = getattr(p, name)
        if p.repetition_penalty is not None:
            opts["repetition_penalty"] = p.repetition_penalty
        return opts


class _Row:
    """One request's generator, its streamed text and why it stopped."""

    def __init__(self, engine: OrtGenaiEngine, req: GenRequest) -> None:
        self.engine, self.req = engine, req
        self.tokens: list[int] = []
        self.text = ""
        self.cut: str | None = None  # text up to a stop string
        self.finished = req.cancelled
        self.scanned = 0
        room = engine.context_length
        self.budget = max(1, min(req.params.max_new_tokens, room - len(req.prompt_ids) if room else 1 << 30))
        if self.finished:
            return
        og = engine.og
        params = og.GeneratorParams(engine.model)
        params.set_search_options(**engine.search_options(req.params, len(req.prompt_ids), self.budget))
        self.generator = og.Generator(engine.model, params)
        self.generator.append_tokens(req.prompt_ids)
        self.stream = engine.og_tokenizer.create_stream()

    def step(self, now: float) -> None:
        r, p = self.req, self.req.params
        if r.cancelled or now > r.deadline:
            if not r.cancelled:
                self.engine.cancel(r, "timeout")
            self._end()
            return
        gen = self.generator
        gen.generate_next_token()
        token = int(gen.get_next_tokens()[0])
        n = len(self.tokens) + 1
        if token in self.engine.eos_ids and not p.ignore_eos and n > p.min_tokens:
            r.finish_reason = "stop"
            self._end()
            return
        self.tokens.append(token)
        self.text += self.stream.decode(token)
        if p.stop:
            # only text new since the last step is searched (with room for a match that straddles it);
            # text from before min_tokens was reached never stops the row, as in vLLM
            start = max(0, self.scanned - max(map(len, p.stop)) + 1)
            cut = find_stop(self.text[start:], p.stop) if n >= p.min_tokens else None
            self.scanned = len(self.text)
            if cut is not None:
                self.cut, r.finish_reason = self.text[: start + cut], "stop"
                self._end()
                return
        self.engine.push_text(r, self.text, final=False)
        if n >= self.budget or gen.is_done():
            r.finish_reason = "length" if n >= self.budget else "stop"
            self._end()

    def _end(self) -> None:
        self.finished = True
        self.generator = None  # frees this row's KV cache now, not when the batch ends

    def collect(self) -> None:
        r = self.req
        if r.cancelled:
            return
        r.completion_tokens = len(self.tokens)
        r.text = self.cut if self.cut is not None else self.text
        self.engine.push_text(r, r.text, final=True)
