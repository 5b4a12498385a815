"""The lifecycle's data step, shared by both backends: prepare + validate the profile's
data into the run's data folder and record where it went (`outputs.data`).

Why the hub substitution: a rehearsal must run end to end
with no network, but it must never *look* like it trained on ultrachat when it did not -
so the swap to the shipped sample is announced loudly and recorded (`substituted`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from amlft.context import StepContext
from amlft.data.preparer import PrepareOptions, prepare
from amlft.data.sources import SAMPLE_SOURCES, hub_reachable, is_hub_id, local_splits
from amlft.errors import DataError
from amlft.extras import require

PREPARE_VERSION = 1  # bump when prepare's output for the same input changes
DEFAULT_TEST_FRACTION = 0.1


def _sample_dir() -> Path:
    from amlft.resources import sample_chat_dir

    d = sample_chat_dir()
    if not d.is_dir() or not any(d.glob("*.jsonl")):
        raise DataError(f"The shipped sample dataset is missing from {d}.",
                        hint="Reinstall amlft, or set data.source to a local .jsonl file or folder.")
    return d


def resolve_source(ctx: StepContext) -> tuple[str, bool, str]:
    """(source to read, substituted?, why) for the run's profile."""
    src = ctx.profile.data.source
    if src in SAMPLE_SOURCES:
        return str(_sample_dir()), False, "the shipped sample dataset"
    if not is_hub_id(src):
        return src, False, "local data"
    if ctx.rehearse:
        return str(_sample_dir()), True, "rehearsals never download datasets"
    require("datasets", extra="data", purpose="Downloading the profile's Hugging Face dataset")
    if hub_reachable():
        return src, False, "Hugging Face Hub"
    # Never swap data silently outside a rehearsal: training on the sample when the user asked
    # for ultrachat would produce a model that is not what they think it is.
    raise DataError(f"Cannot reach the Hugging Face Hub to download {src}.",
                    hint="Check your network (HF_ENDPOINT, proxies), point data.source at a local "
                         ".jsonl file or folder (or `amlft:sample_chat`, the shipped sample), "
                         "or rehearse the Azure flow offline with --rehearse.")


def _inputs_hash(source: str, substituted: bool, opts: PrepareOptions) -> str:
    """What the prepared files depend on: the source's identity (files: size + mtime) and options."""
    files: list[Any] = []
    p = Path(source)
    if p.exists():
        paths = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        files = [[str(x), x.stat().st_size, x.stat().st_mtime_ns] for x in paths]
    blob = json.dumps({"v": PREPARE_VERSION, "source": source, "substituted": substituted,
                       "options": opts.to_dict(), "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reusable(prev: dict[str, Any], inputs_hash: str) -> bool:
    if prev.get("inputs_hash") != inputs_hash:
        return False
    paths = [prev.get(k) for k in ("train_file", "test_file", "validation_file", "invoke_file", "report_path")]
    return all(Path(p).exists() for p in paths if p)


def prepare_run_data(ctx: StepContext) -> dict[str, Any]:
    """Prepare + validate ctx.profile.data into the run's data folder; record and return outputs.data."""
    cfg = ctx.profile.data
    console = ctx.console
    source, substituted, why = resolve_source(ctx)
    hub = is_hub_id(source)
    overrides: dict[str, Any] = {}
    if substituted or cfg.source in SAMPLE_SOURCES:
        overrides["split_pc"] = None  # N% is meant for the hub's 200k rows; the sample is used whole
        console.warn(f"SUBSTITUTED DATA: {why}, so this run uses the shipped sample dataset "
                     f"({source}: same ultrachat schema and split names) instead of {cfg.source}. "
                     "It does NOT train on the real dataset." if substituted else
                     f"using the shipped sample dataset ({source})")
    if hub:
        from amlft.data.sources import hub_split_names

        wanted = [s for s in (cfg.train_split, cfg.test_split, cfg.validation_split) if s]
        if cfg.invoke_split and cfg.invoke_split not in wanted:
            if cfg.invoke_split in hub_split_names(source):
                wanted.append(cfg.invoke_split)
            else:  # optional: invoke and bench fall back to the test split
                console.info(f"{source} has no {cfg.invoke_split!r} split: invoke will use {cfg.test_split!r}")
        overrides["splits"] = wanted
    elif cfg.test_fraction is None:
        names = [s.name for s in local_splits(source, single_name=cfg.train_split)]
        if len(names) == 1:
            overrides["test_fraction"] = DEFAULT_TEST_FRACTION
            console.info(f"{source} has one split: holding out {DEFAULT_TEST_FRACTION:.0%} of it as the test split "
                         "(set data.test_fraction to change)")
    opts = PrepareOptions.from_config(cfg, **overrides)
    inputs_hash = _inputs_hash(source, substituted, opts)
    prev = ctx.record.output("data")
    if prev and _reusable(prev, inputs_hash):
        console.info(f"data: inputs unchanged, reusing {Path(prev['train_file']).parent} (data_hash {prev['data_hash'][:12]})")
        return prev

    out_dir = ctx.record.data_dir
    label = f"{source} (standing in for {cfg.source})" if substituted else source
    result = prepare(source, out_dir, opts, console=console, label=label)
    report = result.report
    for name, s in report["splits"].items():
        if s["duplicates"]:
            verb = "dropped" if opts.drop_duplicates else "kept (data.drop_duplicates: true drops them)"
            console.warn(f"{name}: {s['duplicates']} duplicate row(s) {verb}")
        if s["leakage"]:
            verb = "dropped" if opts.drop_leakage else "kept (data.drop_leakage: true drops them)"
            console.warn(f"{name}: {s['leakage']} row(s) also in the train split {verb}")
    console.table([{"split": n, "in": c["in"], "kept": c["kept"], "rejected": c["rejected"]}
                   for n, c in result.counts.items()], title=f"data ({result.format}) -> {out_dir}")

    def _file(role: str) -> str | None:
        f = result.file(role)
        return str(f) if f else None

    train = _file("train")
    if train is None:
        raise DataError(f"{source} has no train split (splits: {', '.join(result.splits)}).",
                        hint=f"Name the training split {cfg.train_split} or set data.train_split.")
    output = {
        "train_file": train,
        "test_file": _file("test"),
        "validation_file": _file("validation"),
        "invoke_file": _file("invoke") or _file("test"),
        "report_path": str(result.report_path),
        "rejected_path": str(result.rejected_path),
        "data_hash": result.data_hash,
        "source": cfg.source if not substituted else source,
        "requested_source": cfg.source,
        "format": result.format,
        "substituted": substituted,
        "counts": result.counts,
        "inputs_hash": inputs_hash,
    }
    ctx.record.set_output("data", **output)
    ctx.console.result(data=output)
    return output
