"""A run's fine-tuned model exported for on-device runtimes, recorded and registered.

    export_run(record, console, precision=, execution_provider=, out=, model_dir=)  ->  export entry
    find_export(record, precision=, execution_provider=)                            ->  entry or None

The run record keeps one entry per target under outputs.export.exports["onnx-<precision>-<ep>"]
(path, sizes, manifest), so `amlft deploy --engine onnxruntime-genai` reuses an export instead
of building it again, and a torn-down run can be served by either engine without retraining.
A local run's export is also registered in its MLflow registry as `<model>-onnx`, one version
per export, tagged with format, precision and execution provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amlft.errors import ConfigError, RecordError
from amlft.records import RunRecord


def engine_findings(engine: str) -> list[dict[str, Any]]:
    """Preflight for `local.engine: onnxruntime-genai`: the `onnx` extra must be there before training starts."""
    if engine != "onnxruntime-genai":
        return []
    import importlib.util

    from amlft.export.onnx import BUILDER_NEEDS

    missing = [pkg for mod, pkg in BUILDER_NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        return [{"severity": "error", "check": "engine",
                 "message": f"local.engine is onnxruntime-genai, but {', '.join(missing)} is not installed",
                 "fix": "pip install 'amlft[onnx]' (or set local.engine: transformers)"}]
    return [{"severity": "info", "check": "engine", "fix": "",
             "message": "serving with onnxruntime-genai: deploy exports the model to int4 ONNX (CPU) first"}]


def export_key(precision: str, execution_provider: str, fmt: str = "onnx") -> str:
    return f"{fmt}-{precision}-{execution_provider}"


def find_export(record: RunRecord, *, precision: str = "int4", execution_provider: str = "cpu") -> dict[str, Any] | None:
    """The run's recorded export for this target, if its folder is still there."""
    entry = (record.output("export").get("exports") or {}).get(export_key(precision, execution_provider))
    if not entry or not (Path(entry["path"]) / "genai_config.json").is_file():
        return None
    source = entry.get("source_dir")
    if source and Path(source).is_dir() and weights_mtime(Path(source)) > float(entry.get("source_mtime") or 0):
        return None  # the model was trained again since: this export is stale
    return dict(entry)


def weights_mtime(folder: Path) -> float:
    """When the folder's weights last changed (an export older than that is stale)."""
    return max((p.stat().st_mtime for p in folder.glob("*.safetensors")), default=0.0)


def run_model_dir(record: RunRecord) -> Path:
    """The fine-tuned model of a local run (the merged weights `amlft register` registered)."""
    out = record.data.get("outputs") or {}
    if record.backend == "azure":
        reg = out.get("register") or {}
        name, version = reg.get("name") or "<model>", reg.get("version") or "<version>"
        raise ConfigError(
            f"Run {record.run_id} trained on Azure ML; its model is in the workspace registry, not on this machine.",
            hint=f"Download it (az ml model download --name {name} --version {version} --download-path ./model-{name} "
                 f"-g <resource-group> -w <workspace>), then: amlft export --run {record.run_id} --model-dir "
                 f"./model-{name} ...")
    chosen = (out.get("register") or {}).get("model_dir") or (out.get("train") or {}).get("merged_dir")
    if not chosen:
        raise RecordError(f"Run {record.run_id} has no fine-tuned model yet (no register.model_dir in its record).",
                          hint=f"Finish the run first (amlft wait --run {record.run_id}; amlft register --run "
                               f"{record.run_id}), or export a folder with --model-dir.")
    if not Path(chosen).is_dir():
        raise RecordError(f"The model folder {chosen} recorded by run {record.run_id} no longer exists.",
                          hint="Export a copy with --model-dir DIR.")
    return Path(chosen)


def export_run(record: RunRecord, console: Any, *, precision: str = "int4", execution_provider: str = "cpu",
               out: str | Path | None = None, model_dir: str | Path | None = None,
               verify: bool = True) -> dict[str, Any]:
    """Export the run's model (or `model_dir` for it), record it in the run and register it."""
    from amlft.export.onnx import export_onnx
    from amlft.export.sources import resolve_model_source

    source = resolve_model_source(model_dir if model_dir is not None else run_model_dir(record))
    key = export_key(precision, execution_provider)
    out_dir = Path(out) if out else record.run_dir / "exports" / key
    outputs = record.data.get("outputs") or {}
    reg, train = outputs.get("register") or {}, outputs.get("train") or {}
    provenance = {"run_id": record.run_id, "backend": record.backend, "model_uri": reg.get("model_uri"),
                  "base_model": train.get("base_model") or (reg.get("tags") or {}).get("base_model")
                  or source.base_model}
    with record.step("export"):
        manifest = export_onnx(source, out_dir, precision=precision, execution_provider=execution_provider,
                               console=console, provenance=provenance, verify=verify)
        entry = summary(manifest)
        if source.weights_dir is not None:
            entry.update(source_dir=str(source.weights_dir), source_mtime=weights_mtime(source.weights_dir))
        if record.backend == "local" and reg.get("name"):
            entry["registered"] = _register(record, reg, manifest)
        exports = dict(record.output("export").get("exports") or {})
        exports[key] = entry
        record.set_output("export", exports=exports, latest=key)
    record.event(f"exported {key} to {entry['path']}", total_bytes=entry["total_bytes"])
    return entry


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the run record keeps of a manifest (the file list stays in the folder's amlft_export.json)."""
    return {k: manifest.get(k) for k in ("path", "format", "precision", "execution_provider", "architecture",
                                        "base_model", "total_bytes", "chat_template", "check", "created_at",
                                        "build_seconds")} | {"files": len(manifest.get("files") or [])}


def _register(record: RunRecord, reg: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    from amlft.backends.local import registry

    tags = {"format": str(manifest["format"]), "precision": str(manifest["precision"]),
            "execution_provider": str(manifest["execution_provider"]), "layout": "onnxruntime-genai",
            "amlft_run_id": record.run_id, "source_model_uri": str(reg.get("model_uri")),
            "base_model": str(manifest.get("base_model")), "created_by": "amlft"}
    return registry.register_export(record.root, name=f"{reg['name']}-onnx", export_dir=Path(manifest["path"]),
                                    tags=tags, mlflow_run_id=reg.get("mlflow_run_id"))
