"""Model and dataset cards written from a run's facts with huggingface_hub's card API.

Why the card API rather than a text template: `ModelCardData` + `EvalResult` produce the
`model-index` shape the Hub indexes (and shows as evaluation results), and parsing the
rendered card back through `ModelCard` with `ignore_metadata_errors=False` is the same
check huggingface_hub applies when it loads a card - so a card we write is a card the
Hub reads. The Hub's own `/api/validate-yaml` check runs again when the card is pushed.

Every number in a card comes from the run record; a missing fact becomes a sentence that
says so, never a placeholder value.
"""

from __future__ import annotations

import json
from typing import Any

from amlft.errors import AmlftError
from amlft.extras import require
from amlft.hub.facts import RunFacts

# metric name in the run record -> (Hub metric id, readable name, lower is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "exact_match": ("exact_match", "Exact match on held-out prompts", False),
    "test_loss": ("loss", "Held-out loss (assistant tokens)", True),
    "loss": ("loss", "Held-out loss (assistant tokens)", True),
    "eval_loss": ("loss", "Held-out loss (assistant tokens)", True),
    "perplexity": ("perplexity", "Held-out perplexity", True),
}
EXAMPLE_PROMPT = "Give me three tips for writing a clear commit message."


def _hub() -> Any:
    return require("huggingface_hub", extra="hub", purpose="Writing a Hugging Face model card")


# ---------------------------------------------------------------------------- metadata
def eval_results(facts: RunFacts, *, dataset_id: str | None) -> list[Any]:
    """One EvalResult per metric measured after fine-tuning (the model-index of this model)."""
    hub = _hub()
    ev = facts.eval
    rows = [r for r in (ev.get("rows") or []) if isinstance(r, dict) and r.get("metric")]
    if not rows and ev.get("metric") is not None:
        rows = [{"metric": ev["metric"], "before": ev.get("before"), "after": ev.get("after")}]
    n = ev.get("n")
    source = dataset_id or facts.dataset_id or _slug(facts.data_source or "held-out")
    results = []
    for row in rows:
        after = row.get("after")
        if not isinstance(after, (int, float)) or isinstance(after, bool):
            continue
        metric_id, metric_name, _ = METRICS.get(str(row["metric"]), (_slug(str(row["metric"])), str(row["metric"]), False))
        results.append(hub.EvalResult(
            task_type="text-generation", task_name="Text Generation",
            dataset_type=source, dataset_name=f"held-out {'test' if n is None else f'prompts (n={n})'} from {facts.data_source or 'the run data'}",
            dataset_split="test", metric_type=metric_id, metric_name=metric_name, metric_value=round(float(after), 4),
        ))
    return results


def model_card_data(facts: RunFacts, *, repo_id: str, mode: str, dataset_repo_id: str | None = None) -> Any:
    hub = _hub()
    datasets = [d for d in (dataset_repo_id, facts.dataset_id) if d]
    tags = ["amlft", facts.method, "fine-tuned", "conversational", "text-generation"]
    if mode == "adapter":
        tags.insert(2, "peft")
    if facts.backend == "azure":
        tags.append("azureml")
    results = eval_results(facts, dataset_id=dataset_repo_id)
    return hub.ModelCardData(
        base_model=facts.base_model_id,
        datasets=datasets or None,
        language=facts.language,
        license=facts.license or "other",
        library_name="peft" if mode == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


# ---------------------------------------------------------------------------- the card
def build_model_card(facts: RunFacts, *, repo_id: str, mode: str, dataset_repo_id: str | None = None,
                     generation: dict[str, Any] | None = None) -> Any:
    """The README.md for the model repo, as a huggingface_hub ModelCard (checked on the way out)."""
    hub = _hub()
    data = model_card_data(facts, repo_id=repo_id, mode=mode, dataset_repo_id=dataset_repo_id)
    body = "\n\n".join(s for s in (
        _intro(facts, repo_id, mode),
        _what_it_does(facts, mode),
        _training_data(facts, dataset_repo_id),
        _training_procedure(facts),
        _evaluation(facts),
        _how_to_use(facts, repo_id, mode, generation or {}),
        _limitations(facts, mode),
        _provenance(facts),
    ) if s)
    card = hub.ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    check_card(card, data)
    return card


def check_card(card: Any, expected: Any) -> None:
    """Parse the rendered card back with huggingface_hub, strictly; it must say what we built (`expected`).

    This is the offline half of the Hub's validation (the model-index must parse into
    EvalResults, the metadata must be a mapping); the Hub re-checks on push.
    """
    hub = _hub()
    try:
        parsed = type(card)(str(card), ignore_metadata_errors=False)
    except ValueError as exc:
        raise AmlftError(f"The generated card's metadata does not parse: {exc}",
                         hint="This is a bug in amlft; please report it with the run record.") from exc
    if parsed.data.to_dict() != expected.to_dict():
        raise AmlftError("The generated card's metadata changed when read back.",
                         hint="This is a bug in amlft; please report it with the run record.")
    if isinstance(expected, hub.ModelCardData) and expected.eval_results:
        back = [(r.metric_type, r.metric_value) for r in parsed.data.eval_results or []]
        if back != [(r.metric_type, r.metric_value) for r in expected.eval_results]:
            raise AmlftError("The card's model-index did not round-trip.", hint="This is a bug in amlft.")


def _intro(facts: RunFacts, repo_id: str, mode: str) -> str:
    what = "A LoRA adapter for" if mode == "adapter" else "A fine-tuned version of"
    return (f"# {repo_id.split('/')[-1]}\n\n{what} {_base_link(facts)}, trained on {_data_phrase(facts)} "
            f"with amlft ({'Azure Machine Learning' if facts.backend == 'azure' else 'local'} "
            f"run `{facts.run_id}`).")


def _what_it_does(facts: RunFacts, mode: str) -> str:
    lines = ["## What it does", "",
             "A chat model: it takes a conversation (a list of `{role, content}` messages) formatted with its "
             "chat template and generates the next assistant turn. It was fine-tuned with "
             f"{_method_phrase(facts)} to answer like the assistant turns in its training data."]
    if mode == "adapter":
        lines += ["", "This repository holds only the adapter weights and their configuration; loading it also "
                      f"loads the base model {_base_link(facts)}."]
    return "\n".join(lines)


def _training_data(facts: RunFacts, dataset_repo_id: str | None) -> str:
    lines = ["## Training data", ""]
    src = facts.data_source or "unknown (the run record names no data source)"
    lines.append(f"- Source: {_dataset_link(src)}" + (f" (format: {facts.data_format})" if facts.data_format else ""))
    if dataset_repo_id:
        lines.append(f"- The prepared splits are published as [{dataset_repo_id}](https://huggingface.co/datasets/{dataset_repo_id}).")
    if facts.data_substituted:
        lines.append("- Note: this was a rehearsal; the hub dataset was unreachable and the shipped sample "
                     "chat data was used instead.")
    if facts.data_hash:
        lines.append(f"- Content hash of the prepared files: `{facts.data_hash[:16]}`")
    splits = _split_rows(facts)
    if splits:
        lines += ["", "| split | rows read | kept | rejected |", "|---|---:|---:|---:|"]
        roles = facts.data_report.get("roles")
        used_as = {v: k for k, v in roles.items() if v and k != "invoke"} if isinstance(roles, dict) else {}
        lines += [f"| {name}{f' ({used_as[name]})' if name in used_as else ''} | {r.get('in', '-')} | "
                  f"{r.get('kept', '-')} | {r.get('rejected', '-')} |" for name, r in splits]
    report = facts.data_report
    reasons = report.get("reasons")
    if isinstance(reasons, dict) and reasons:
        help_raw = report.get("reason_help")
        help_: dict[str, Any] = help_raw if isinstance(help_raw, dict) else {}
        lines += ["", "Rows rejected by validation, by reason:", ""]
        lines += [f"- `{r}`: {n}" + (f" - {help_[r]}" if help_.get(r) else "") for r, n in reasons.items()]
    elif report:
        lines += ["", "Validation rejected no rows."]
    extra = []
    for name, s in (report.get("splits") or {}).items():
        if not isinstance(s, dict):
            continue
        bits = [f"{k} {s[k]}" for k in ("duplicates", "leakage") if s.get(k)]
        for unit in ("tokens", "chars"):
            dist = s.get(unit) if isinstance(s.get(unit), dict) else None
            if dist and dist.get("p50") is not None:
                spread = ", ".join(f"{q} {_fmt(dist[q])}" for q in ("p50", "p90", "p99", "max") if dist.get(q) is not None)
                bits.append(f"{'tokens' if unit == 'tokens' else 'characters'} per conversation: {spread}")
                break
        if bits:
            extra.append(f"- {name}: " + ", ".join(bits))
    if extra:
        lines += ["", *extra]
    if not splits and not report:
        lines += ["", "The run record holds no row counts for this data."]
    return "\n".join(lines)


def _split_rows(facts: RunFacts) -> list[tuple[str, dict[str, Any]]]:
    splits = facts.data_report.get("splits") if isinstance(facts.data_report.get("splits"), dict) else None
    source = splits or facts.data_counts
    return [(str(k), v) for k, v in source.items() if isinstance(v, dict)]


def _training_procedure(facts: RunFacts) -> str:
    lines = ["## Training procedure", "", f"- Method: {_method_phrase(facts)}"]
    if facts.lora.get("target_modules"):
        targets = facts.lora["target_modules"]
        lines.append(f"- LoRA target modules: {', '.join(sorted(targets)) if isinstance(targets, list) else targets}")
    lines.append(f"- Base model: {_base_link(facts)}")
    if facts.hyperparameters:
        lines += ["", f"Hyper-parameters ({facts.hyperparameters_source}):", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(facts.hyperparameters.items())]
    else:
        lines += ["", "The run record holds no hyper-parameters."]
    m = facts.train_metrics
    shown = [(k, m[k]) for k in ("steps", "train_loss", "final_loss", "train_runtime_s", "tokens_per_s", "train_tokens",
                                 "trainable_params", "total_params", "device", "dtype") if m.get(k) is not None]
    if shown:
        lines += ["", "Training run:", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in shown]
    if facts.azure_job and not m:
        lines += ["", f"Training ran as Azure ML job `{facts.azure_job.get('job_name')}`; its metrics are in the "
                      "job's run history" + (f" ([studio]({facts.azure_job['studio_url']}))." if facts.azure_job.get("studio_url") else ".")]
    return "\n".join(lines)


def _evaluation(facts: RunFacts) -> str:
    ev = facts.eval
    rows = [r for r in (ev.get("rows") or []) if isinstance(r, dict) and r.get("metric")]
    if not rows and ev.get("metric") is not None:
        rows = [{"metric": ev["metric"], "before": ev.get("before"), "after": ev.get("after")}]
    if not rows:
        return ("## Evaluation\n\nThis run recorded no evaluation, so this card claims no results. "
                "Evaluate the model on your own task before relying on it.")
    n = ev.get("n")
    lines = ["## Evaluation", "",
             f"Measured by amlft on {f'{n} ' if n is not None else ''}held-out prompts from the test split, "
             "with the base model (before) and the fine-tuned model (after), greedy decoding:", "",
             "| metric | before | after | change |", "|---|---:|---:|---:|"]
    for r in rows:
        name = METRICS.get(str(r["metric"]), (None, str(r["metric"]), False))[1]
        before, after = r.get("before"), r.get("after")
        change = (_fmt(after - before, signed=True)
                  if isinstance(before, int | float) and isinstance(after, int | float) and _num(before) and _num(after)
                  else "-")
        lines.append(f"| {name} | {_fmt(before)} | {_fmt(after)} | {change} |")
    examples = [e for e in (ev.get("examples") or []) if isinstance(e, dict) and e.get("prompt")][:2]
    for e in examples:
        lines += ["", f"> **prompt:** {_one_line(e['prompt'])}"]
        for key in ("reference", "before", "after", "answer"):
            if e.get(key) is not None:
                lines.append(f">\n> **{key}:** {_one_line(str(e[key]))}")
    return "\n".join(lines)


def _how_to_use(facts: RunFacts, repo_id: str, mode: str, generation: dict[str, Any]) -> str:
    gen = {k: generation[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p") if k in generation}
    gen.setdefault("max_new_tokens", 200)
    if not gen.get("do_sample"):
        gen.pop("temperature", None)
        gen.pop("top_p", None)
    gen_args = ", ".join(f"{k}={v!r}" for k, v in gen.items())
    if mode == "adapter":
        load = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f'repo = "{repo_id}"\ntokenizer = AutoTokenizer.from_pretrained(repo)\n'
                "model = AutoPeftModelForCausalLM.from_pretrained(repo)  # also loads the base model\n")
    else:
        load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'repo = "{repo_id}"\ntokenizer = AutoTokenizer.from_pretrained(repo)\n'
                "model = AutoModelForCausalLM.from_pretrained(repo)\n")
    code = (load + "\n"
            f'messages = [{{"role": "user", "content": {json.dumps(EXAMPLE_PROMPT)}}}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",\n"
            "                                       return_dict=True)\n"
            f"output = model.generate(**inputs, {gen_args})\n"
            'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n')
    note = ("If the repository is private, log in first (`hf auth login`) or set `HF_TOKEN`."
            + (" The generation settings are the ones this run was evaluated and served with." if generation else ""))
    return f"## How to use it\n\n```python\n{code}```\n\n{note}"


def _limitations(facts: RunFacts, mode: str) -> str:
    n = facts.eval.get("n")
    items = [
        f"It inherits the abilities, biases and failure modes of its base model, {_base_link(facts)}; "
        "fine-tuning on a narrow chat dataset can also make it worse at things outside that data.",
        ("Its evaluation is small (" + (f"{n} prompts" if n is not None else "see above") + ") and automatic; "
         "it measures closeness to the reference answers, not factuality or safety.") if facts.eval
        else "It was not evaluated by this run.",
        "It has not been red-teamed or safety-tuned beyond what its base model received. Do not use it for "
        "medical, legal, financial or other high-stakes advice without human review.",
    ]
    if facts.base_model_id is None:
        items.append(f"Its base model is not on the Hugging Face Hub: the run used {facts.base_label}"
                     + (f" from `{facts.base_model_ref}`" if facts.base_model_ref and facts.base_model_ref != facts.base_label else "")
                     + ("; the adapter can only be applied to that same base model." if mode == "adapter" else "."))
    if facts.license is None:
        items.append("Licence: not recorded by the run (metadata says `other`). Fine-tuned weights are usually "
                     "bound by the base model's licence and the training data's terms; check both before sharing.")
    if facts.data_substituted or facts.rehearse:
        items.append("It comes from a rehearsal run; treat it as a test artefact, not a model to deploy.")
    return "## Limitations and risks\n\n" + "\n".join(f"- {i}" for i in items)


def _provenance(facts: RunFacts) -> str:
    lines = ["## Where it came from", "",
             f"- amlft run: `{facts.run_id}` ({facts.backend} backend{', rehearsal' if facts.rehearse else ''})"
             + (f", started {facts.created_at}" if facts.created_at else "")]
    if facts.profile_name:
        lines.append(f"- Profile: `{facts.profile_name}`")
    if facts.azure_job:
        job = facts.azure_job
        lines.append(f"- Azure ML job: `{job.get('job_name')}`" + (f" in experiment `{job['experiment']}`" if job.get("experiment") else "")
                     + (f" ([studio]({job['studio_url']}))" if job.get("studio_url") else ""))
    elif facts.backend == "local":
        lines.append("- Trained on a single machine by amlft's local backend (transformers + peft).")
    if facts.registered:
        reg = facts.registered
        lines.append(f"- Registered model: `{reg.get('name')}` version `{reg.get('version')}`"
                     + (f" (`{reg['model_uri']}`)" if reg.get("model_uri") else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- dataset card
def build_dataset_card(facts: RunFacts, *, repo_id: str, model_repo_id: str, splits: dict[str, int]) -> Any:
    """README.md for the prepared-data repo: what the rows are, where they came from, how they were checked."""
    hub = _hub()
    total = sum(splits.values())
    size = "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "100K<n<1M"
    data = hub.DatasetCardData(
        language=facts.language, license=facts.license or "other", task_categories=["text-generation"],
        tags=["amlft", "chat", "conversational"], pretty_name=f"{repo_id.split('/')[-1]} (prepared by amlft)",
        size_categories=[size], source_datasets=[facts.dataset_id] if facts.dataset_id else None,
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": f"data/{s}.jsonl"} for s in splits]}],
    )
    body = "\n\n".join([
        f"# {repo_id.split('/')[-1]}\n\nThe chat data that fine-tuned [{model_repo_id}](https://huggingface.co/{model_repo_id}), "
        f"as prepared and validated by amlft run `{facts.run_id}`.",
        "## Format\n\nJSON Lines, one conversation per line: `{\"messages\": [{\"role\": ..., \"content\": ...}, ...]}` "
        "(plus the source's `prompt` / `prompt_id` fields when it had them).\n\n| split | rows |\n|---|---:|\n"
        + "\n".join(f"| {s} | {n} |" for s, n in splits.items()),
        _training_data(facts, None).replace("## Training data", "## Source and validation", 1),
        f"## How to load it\n\n```python\nfrom datasets import load_dataset\n\nds = load_dataset(\"{repo_id}\")\n```",
    ])
    card = hub.DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    check_card(card, data)
    return card


# ---------------------------------------------------------------------------- phrasing
def _base_link(facts: RunFacts) -> str:
    if facts.base_model_id:
        return f"[{facts.base_model_id}](https://huggingface.co/{facts.base_model_id})"
    return facts.base_label


def _data_phrase(facts: RunFacts) -> str:
    return _dataset_link(facts.data_source) if facts.data_source else "chat data the run record does not name"


def _dataset_link(source: str) -> str:
    from amlft.hub.facts import is_hub_id

    if is_hub_id(source):
        return f"[{source}](https://huggingface.co/datasets/{source})"
    if source == "amlft:sample_chat":
        return "amlft's shipped sample chat data (`amlft:sample_chat`)"
    return f"`{source}`"


def _method_phrase(facts: RunFacts) -> str:
    if facts.method == "lora":
        bits = [f"{name}={_fmt(facts.lora[k])}" for k, name in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"))
                if facts.lora.get(k) is not None]
        return "LoRA" + (f" ({', '.join(bits)})" if bits else "")
    return "full fine-tuning" if facts.method == "full" else facts.method


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any, *, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if signed:
            return f"{v:+.4g}"
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v).replace("|", "\\|")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "custom"
