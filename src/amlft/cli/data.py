"""`amlft data`: with no subcommand, the lifecycle's data step for the run; `prepare`,
`validate` and `stats` work on any chat data, with no run involved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from amlft.cli.common import json_option, make_console, open_context, run_options

FORMATS = ("auto", "ultrachat", "openai", "alpaca", "sharegpt")


@click.group("data", invoke_without_command=True)
@run_options
@click.pass_context
def data_group(click_ctx: click.Context, run_id: str | None, profile: str | None, backend: str | None,
               overrides: tuple[str, ...], rehearse: bool, faults: tuple[str, ...], json_mode: bool) -> None:
    """Chat data: alone, the run's data step; prepare/validate/stats for any data.

    Alone: prepare + validate the run's data (and upload it on Azure).

    Subcommands prepare/validate/stats work on any file, folder or hub dataset.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    from amlft.cli.common import finish
    from amlft.lifecycle import data

    ctx = open_context("data", run_id=run_id, profile=profile, backend=backend, overrides=overrides,
                       rehearse=rehearse, faults=faults, json_mode=json_mode)
    ctx.console.result(data=data(ctx).to_dict())
    finish(ctx)


def _read_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How rows are read and checked; shared by prepare, validate and stats."""
    opts = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                     help="Input format; auto detects it and says which it chose."),
        click.option("--column", "columns", multiple=True, metavar="OURS=THEIRS",
                     help="Map a field name, e.g. --column messages=dialog or --column content=text (repeatable)."),
        click.option("--split-pc", type=click.FloatRange(0, 100, min_open=True), default=None,
                     help="Keep the first N% of each split (as load_dataset(split='name[:N%]') does)."),
        click.option("--sample", type=click.IntRange(min=1), default=None,
                     help="Keep a random sample of N rows per split (seeded)."),
        click.option("--seed", type=int, default=42, show_default=True, help="Seed for --sample and --test-fraction."),
        click.option("--max-seq-length", type=click.IntRange(min=1), default=None,
                     help="Reject conversations longer than N tokens (needs --tokenizer)."),
        click.option("--tokenizer", metavar="ID_OR_PATH", default=None,
                     help="Tokenizer (hub id or folder) for token counts; uses its chat template when it has one."),
        click.option("--split", "splits", multiple=True, metavar="NAME",
                     help="Hub datasets: only these splits (repeatable; default: all)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _options(fmt: str, columns: tuple[str, ...], split_pc: float | None, sample: int | None, seed: int,
             max_seq_length: int | None, tokenizer: str | None, splits: tuple[str, ...], **extra: Any) -> Any:
    from amlft.data import PrepareOptions
    from amlft.data.formats import parse_columns
    from amlft.errors import ConfigError

    try:
        cols = parse_columns(columns)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return PrepareOptions(format=fmt, columns=cols, split_pc=split_pc, sample=sample, seed=seed,
                          max_seq_length=max_seq_length, tokenizer=tokenizer, splits=list(splits) or None, **extra)


def _split_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"split": n, "format": s["format"], "in": s["in"], "kept": s["kept"], "rejected": s["rejected"],
             "duplicates": s["duplicates"], "leakage": s["leakage"]} for n, s in report["splits"].items()]


@data_group.command("prepare")
@click.argument("source")
@click.option("--out", "out_dir", required=True, metavar="DIR", help="Folder for <split>.jsonl, rejected.jsonl, report.json.")
@_read_options
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Hold out this fraction of a single-split source as the test split (seeded).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: write nothing if any row is invalid; skip: write valid rows, rejects to rejected.jsonl.")
@click.option("--drop-duplicates", is_flag=True, help="Drop repeated rows (same prompt_id or conversation).")
@click.option("--drop-leakage", is_flag=True, help="Drop test/validation rows whose conversation is also in train.")
@click.option("--train-split", default="train_sft", show_default=True, help="Name of the training split.")
@click.option("--test-split", default="test_sft", show_default=True, help="Name of the test split.")
@json_option
def prepare_cmd(source: str, out_dir: str, test_fraction: float | None, on_error: str, drop_duplicates: bool,
                drop_leakage: bool, train_split: str, test_split: str, json_mode: bool, **read: Any) -> None:
    """Convert, validate and split SOURCE into DIR/<split>.jsonl.

    SOURCE is a Hugging Face dataset id (e.g. HuggingFaceH4/ultrachat_200k) or a local
    .jsonl/.json/.parquet/.csv file or folder. Every rejected row goes to DIR/rejected.jsonl
    with its file, line and reasons; DIR/report.json has the counts per split and reason.

    \b
    Example:
      amlft data prepare HuggingFaceH4/ultrachat_200k --out data/ --split-pc 5
      amlft data prepare alpaca.json --out data/ --test-fraction 0.1 --on-error skip
    """
    from amlft.data import prepare

    console = make_console(json_mode)
    opts = _options(**read, test_fraction=test_fraction, on_error=on_error, drop_duplicates=drop_duplicates,
                    drop_leakage=drop_leakage, train_split=train_split, test_split=test_split)
    result = prepare(source, out_dir, opts, console=console)
    report = result.report
    console.table(_split_rows(report), title=f"prepared {source} -> {out_dir}")
    if report["totals"]["rejected"]:
        console.warn(f"{report['totals']['rejected']} row(s) rejected: see {result.rejected_path} "
                     f"({', '.join(f'{k}={v}' for k, v in report['reasons'].items())})")
    console.info(f"report: {result.report_path}  data_hash: {result.data_hash[:16]}")
    console.result(ok=True, out_dir=str(result.out_dir), files={n: str(p) for n, p in result.splits.items()},
                   roles=result.roles, counts=result.counts, reasons=report["reasons"], format=result.format,
                   report_path=str(result.report_path), rejected_path=str(result.rejected_path),
                   data_hash=result.data_hash)
    console.emit_result()


@data_group.command("validate")
@click.argument("path")
@_read_options
@click.option("--max-problems", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show this many problems in full; the rest are counted per reason.")
@json_option
def validate_cmd(path: str, max_problems: int, json_mode: bool, **read: Any) -> None:
    """Check every row of PATH without writing anything; exit 1 if any row is invalid.

    Each problem is printed with file, line number, field and reason.
    """
    from amlft.data import format_problems, validate_path
    from amlft.errors import DataError

    console = make_console(json_mode)
    result = validate_path(path, _options(**read, max_examples=max_problems), console=console)
    report = result.report
    console.table(_split_rows(report), title=f"validated {path}")
    console.result(valid=result.ok, counts={n: {k: s[k] for k in ("in", "kept", "rejected")}
                                            for n, s in report["splits"].items()},
                   reasons=report["reasons"], problems=result.problems)
    if not result.ok:
        for line in format_problems(result.problems, report):
            console.info(line)
        t = report["totals"]
        raise DataError(f"{t['rejected']} of {t['in']} rows in {path} are invalid.",
                        hint="Fix the rows above, or prepare with --on-error skip to set them aside.")
    console.info(f"all {report['totals']['in']} rows are valid")
    console.result(ok=True)
    console.emit_result()


@data_group.command("stats")
@click.argument("path")
@_read_options
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Epochs to estimate training tokens for (the run's finetune.num_train_epochs).")
@json_option
def stats_cmd(path: str, epochs: float, json_mode: bool, **read: Any) -> None:
    """Rows, turns, characters and tokens per row of PATH; estimated training tokens."""
    from amlft.data.stats import dataset_stats

    console = make_console(json_mode)
    stats = dataset_stats(path, _options(**read), epochs=epochs, console=console)
    rows = [{"split": n, **{k: v for k, v in s.items() if k != "duplicates"}} for n, s in stats["splits"].items()]
    console.table(rows, title=f"{path} ({stats['format']})")
    approx = "" if stats["tokens_exact"] else " (estimated as characters/4; pass --tokenizer for exact counts)"
    console.info(f"estimated training tokens for {epochs:g} epoch(s) of {stats['train_split']}: "
                 f"{stats['estimated_training_tokens']:,}{approx}")
    if stats["invalid_rows"]:
        console.warn(f"{stats['invalid_rows']} invalid row(s) not counted; `amlft data validate {path}` lists them")
    console.result(ok=True, **stats)
    console.emit_result()
