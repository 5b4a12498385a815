"""`amlft export`: a fine-tuned model as an ONNX Runtime GenAI folder (Foundry Local layout)."""

from __future__ import annotations

from typing import Any

import click

from amlft.cli.common import json_option
from amlft.export import EXECUTION_PROVIDERS, EXPORT_FORMATS, PRECISIONS


@click.command("export")
@click.option("--run", "run_id", metavar="ID", help="Export this run's model (default: the most recent run here).")
@click.option("--model-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Export this folder instead: a transformers folder, a LoRA adapter, an MLflow model or an Azure "
                   "ML model download (az ml model download). With --run, the export is recorded in that run.")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="onnx", show_default=True,
              help="Output format: an ONNX Runtime GenAI folder (genai_config.json + model.onnx).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="int4", show_default=True,
              help="Weight precision; int4 is the small, fast one for CPUs.")
@click.option("--execution-provider", type=click.Choice(EXECUTION_PROVIDERS), default="cpu", show_default=True,
              help="Where the model will run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Output folder (default for a run: .amlft/runs/<run>/exports/onnx-<precision>-<provider>).")
@click.option("--no-verify", is_flag=True, help="Skip loading the result and generating a few tokens with it.")
@click.option("--evaluate", is_flag=True,
              help="With a run: score the export on the run's held-out prompts (exact match, greedy token agreement "
                   "with the PyTorch model) and add it as a column beside before/after in the run's evaluation.")
@json_option
def export_cmd(run_id: str | None, model_dir: str | None, fmt: str, precision: str, execution_provider: str,
               out_dir: str | None, no_verify: bool, evaluate: bool, json_mode: bool) -> None:
    """Export the fine-tuned model for on-device runtimes (ONNX Runtime GenAI, Foundry Local).

    Merges a LoRA adapter if needed, runs the ONNX Runtime GenAI model builder, carries the
    tokenizer and chat template, checks the result loads and generates, and writes a manifest
    (amlft_export.json: source run, base model, precision, sizes, hashes). A run's export is
    recorded in its run record and registered in its MLflow registry as <model>-onnx.

    \b
    amlft export --precision int4 --execution-provider cpu --evaluate
    amlft export --model-dir ./model-from-azure --out ./phi3-onnx-int4
    amlft deploy --engine onnxruntime-genai      # serve the export (exports first if needed)
    """
    from amlft.cli.common import finish, make_console

    console = make_console(json_mode)
    if evaluate and model_dir and not run_id:
        from amlft.errors import ConfigError

        raise ConfigError("--evaluate needs a run (its held-out prompts and its PyTorch model to compare with).",
                          hint="Add --run ID, or drop --evaluate.")
    if model_dir and not run_id:
        entry = _export_folder(console, model_dir=model_dir, out_dir=out_dir, precision=precision,
                               execution_provider=execution_provider, verify=not no_verify)
    else:
        from amlft.backends.local.export_run import export_run
        from amlft.records import RunRecord

        record = RunRecord.load(run_id)
        console.result(run_id=record.run_id)
        entry = export_run(record, console, precision=precision, execution_provider=execution_provider,
                           out=out_dir, model_dir=model_dir, verify=not no_verify)
        if evaluate:
            from amlft.backends.local.export_eval import evaluate_export
            from amlft.backends.local.export_run import export_key

            key = export_key(precision, execution_provider)
            entry["eval"] = {k: v for k, v in evaluate_export(record, entry, console, key=key).items()
                             if k != "answers"}
            rows = record.output("eval").get("rows") or []
            console.table(rows, title=f"Evaluation on held-out prompts: before, after fine-tuning, and {key}")
    _report(console, entry)
    console.result(export=entry)
    finish(console)


def _export_folder(console: Any, *, model_dir: str, out_dir: str | None, precision: str, execution_provider: str,
                   verify: bool) -> dict[str, Any]:
    from amlft.backends.local.export_run import summary
    from amlft.errors import ConfigError
    from amlft.export.onnx import export_onnx
    from amlft.export.sources import resolve_model_source

    if not out_dir:
        raise ConfigError("--model-dir without --run needs --out DIR (where the export is written).",
                          hint=f"e.g. amlft export --model-dir {model_dir} --out ./model-onnx-{precision}")
    source = resolve_model_source(model_dir)
    manifest = export_onnx(source, out_dir, precision=precision, execution_provider=execution_provider,
                           console=console, verify=verify)
    return summary(manifest)


def _report(console: Any, entry: dict[str, Any]) -> None:
    check = entry.get("check") or {}
    checked = (f"loads and generates ({check.get('generated_tokens')} tokens in {check.get('seconds')}s)"
               if check.get("verified") else f"not checked: {check.get('reason')}")
    console.info(f"exported {entry['precision']}/{entry['execution_provider']} ONNX Runtime GenAI model to "
                 f"{entry['path']} ({entry['total_bytes'] / 1e6:,.1f} MB, {entry['files']} files); {checked}")
    if not entry.get("chat_template"):
        console.warn("the source tokenizer has no chat template; the export has none either")
    if entry.get("registered"):
        console.info(f"registered {entry['registered']['model_uri']} (MLflow)")
    console.info(f"load it: python -c \"import onnxruntime_genai as og; og.Model('{entry['path']}')\"")
