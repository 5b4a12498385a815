"""What quantization costs: the run's held-out evaluation repeated on an exported model.

    evaluate_export(record, entry, console)  ->  {"exact_match", "token_agreement", "n", "answers"}

The same held-out prompts as the before/after evaluation (trainer.eval_rows), the same prompt
ids (chat.encode_prompt) and greedy decoding, once with the fine-tuned PyTorch model and once
with the export. Two numbers come out, and land in the run's evaluation table as a column
named after the export (e.g. onnx-int4-cpu), beside before and after:

    exact match                   the export's answers against the references (the task metric)
    greedy token agreement        per prompt, the share of the PyTorch model's greedy tokens the
                                  export reproduces before it first picks a different token; 1.0
                                  means the export answers exactly as the fine-tuned model does
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from amlft.errors import RecordError
from amlft.extras import needs_extra
from amlft.records import RunRecord

AGREEMENT_METRIC = "greedy token agreement with the PyTorch model"
DEFAULT_MAX_NEW_TOKENS = 32


def evaluate_export(record: RunRecord, entry: dict[str, Any], console: Any, *, key: str,
                    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict[str, Any]:
    """Evaluate the export at entry["path"] on the run's held-out prompts; record it in outputs.eval."""
    with needs_extra("onnx", purpose="Evaluating an ONNX export"):
        import onnxruntime_genai as og
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    from amlft.backends.local import chat
    from amlft.backends.local.export_run import run_model_dir
    from amlft.backends.local.trainer import eval_rows, normalize_answer

    data = record.output("data")
    n = int((record.profile.get("local") or {}).get("eval_prompts") or 24)
    rows = eval_rows(Path(data["test_file"]) if data.get("test_file") else None, n)
    if not rows:
        raise RecordError(f"Run {record.run_id} has no held-out prompts with short answers to evaluate on.",
                          hint="Evaluation needs the run's prepared test split (amlft data).")
    reference_dir = run_model_dir(record)
    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    configured = model.generation_config.eos_token_id
    eos = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    onnx_model = og.Model(str(entry["path"]))
    hits, agreement, answers = 0, 0.0, []
    started = time.monotonic()
    with console.progress(f"evaluating {key} against the PyTorch model", total=len(rows), unit="prompts") as bar:
        for i, (messages, reference) in enumerate(rows):
            ids = chat.encode_prompt(tokenizer, messages)
            with torch.inference_mode():
                out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            torch_ids = _until_eos([int(t) for t in out[0, len(ids):]], eos)
            onnx_ids = _until_eos(_og_greedy(og, onnx_model, ids, max_new_tokens), eos)
            agreement += _prefix_share(torch_ids, onnx_ids)
            text = str(tokenizer.decode(onnx_ids, skip_special_tokens=True)).strip()
            ok = normalize_answer(text) == normalize_answer(reference)
            hits += ok
            answers.append({"prompt": messages[-1]["content"], "reference": reference, "answer": text, "match": ok})
            bar.update(i + 1, status=f"exact match {hits}/{i + 1}")
    result = {"exact_match": hits / len(rows), "token_agreement": round(agreement / len(rows), 4), "n": len(rows),
              "max_new_tokens": max_new_tokens, "seconds": round(time.monotonic() - started, 1),
              "answers": answers[:5]}
    _record(record, key, result)
    return result


def _og_greedy(og: Any, model: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def _prefix_share(reference: list[int], other: list[int]) -> float:
    """Share of the reference's tokens reproduced before the first difference (1.0: identical)."""
    if not reference:
        return 1.0 if not other else 0.0
    same = 0
    for a, b in zip(reference, other, strict=False):
        if a != b:
            break
        same += 1
    if same == len(reference) and len(other) > len(reference):  # went on where the reference stopped
        return same / len(other)
    return same / len(reference)


def _record(record: RunRecord, key: str, result: dict[str, Any]) -> None:
    """A column named after the export in the run's evaluation table, plus the agreement row."""
    ev = record.output("eval")
    rows = [dict(r) for r in ev.get("rows") or []]
    for row in rows:
        metric = str(row.get("metric", ""))
        row[key] = (result["exact_match"] if metric.startswith("exact match") else
                    result["token_agreement"] if metric == AGREEMENT_METRIC else row.get(key))
    if not any(r.get("metric") == AGREEMENT_METRIC for r in rows):
        rows.append({"metric": AGREEMENT_METRIC, "before": None, "after": 1.0, key: result["token_agreement"]})
    for row in rows:  # every row has every column, so tables line up
        for col in {c for r in rows for c in r}:
            row.setdefault(col, None)
    exports = dict(ev.get("exports") or {})
    exports[key] = result
    record.set_output("eval", rows=rows, exports=exports)
    record.event(f"evaluated {key}: exact match {result['exact_match']:.3f}, "
                 f"greedy token agreement {result['token_agreement']:.3f}", n=result["n"])
