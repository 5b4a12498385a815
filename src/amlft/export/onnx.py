"""Build an ONNX Runtime GenAI folder from a model with the ORT GenAI model builder.

    export_onnx(source, out_dir, precision=, execution_provider=, console=)  ->  manifest dict

Steps, each visible on the console:
1. check the target (precision x execution provider the builder supports, architecture it knows,
   the `onnx` extra installed) before anything slow runs;
2. stage: a LoRA adapter is merged into its base model; the parts of an MLflow folder are
   gathered into one folder (links, no copies) because the builder reads one folder;
3. build: `python -m onnxruntime_genai.models.builder` in a child process - it loads the model
   with torch, which the CLI process should not pay for - with a progress bar fed by its output;
4. carry the chat template (chat_template.jinja, and Foundry Local's inference_model.json);
5. check the result loads with onnxruntime_genai.Model and generates, then write the manifest.

The folder is built next to `out_dir` and renamed into place at the end, so `out_dir` is
either a complete export or untouched; an interrupted build leaves no half-written model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from amlft.errors import AmlftError, ConfigError, MissingDependency
from amlft.export import MANIFEST, PRECISIONS
from amlft.export.sources import ModelSource
from amlft.extras import INSTALL_HINT, extra_for, needs_extra

BUILDER_MODULE = "onnxruntime_genai.models.builder"
# What the builder accepts (it prints this list itself); fp16 and bf16 on CPU are not among them.
VALID_TARGETS = {("fp32", "cpu"), ("fp32", "cuda"), ("fp16", "cuda"), ("int8", "cpu"), ("int8", "cuda"),
                 ("int4", "cpu"), ("int4", "cuda")}
# Modules the builder imports: the `onnx` extra installs them (torch and transformers come with `local`).
BUILDER_NEEDS = {"onnxruntime_genai": "onnxruntime-genai", "onnxruntime": "onnxruntime", "onnx": "onnx",
                 "onnx_ir": "onnx-ir", "torch": "torch", "transformers": "transformers"}
FOUNDRY_CONFIG = "inference_model.json"
BUILD_LOG = "build.log"  # the builder's output, kept in the export (not part of the model)


class ExportError(AmlftError):
    """The builder ran and failed, or its output does not load."""


def require_onnx_extra(purpose: str = "Exporting to ONNX Runtime GenAI") -> None:
    """Fail fast, without importing anything heavy, when a module the builder needs is missing."""
    for module, package in BUILDER_NEEDS.items():
        if importlib.util.find_spec(module) is None:
            # the same extra and install hint as `needs_extra` (a missing torch gets the pinned command),
            # naming the pip package rather than the import name
            extra = extra_for(module) or "onnx"
            err = MissingDependency(package, extra=extra, purpose=purpose)
            if extra in INSTALL_HINT:
                err.hint = INSTALL_HINT[extra]
            raise err


def supported_architectures() -> list[str]:
    """The architectures the installed builder converts, read from its source (importing it costs torch)."""
    spec = importlib.util.find_spec(BUILDER_MODULE)
    if spec is None or not spec.origin:
        return []
    text = Path(spec.origin).read_text(encoding="utf-8")
    return sorted(set(re.findall(r'config\.architectures\[0\] == "(\w+)"', text)))


def check_target(source: ModelSource, *, precision: str, execution_provider: str) -> str:
    """Precision, provider and architecture are ones the builder handles; returns the architecture."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if (precision, execution_provider) not in VALID_TARGETS:
        ok = ", ".join(f"{p}/{e}" for p, e in sorted(VALID_TARGETS))
        raise ConfigError(f"ONNX Runtime GenAI has no {precision} model for the {execution_provider} execution "
                          f"provider.", hint=f"Supported precision/provider pairs: {ok}.")
    require_onnx_extra()
    arch = source.architecture()
    known = supported_architectures()
    if arch not in known:
        raise ConfigError(f"{source.config_dir / 'config.json'} is a {arch} model; the ONNX Runtime GenAI "
                          "model builder cannot convert that architecture.",
                          hint="Supported architectures: " + ", ".join(known) + ". Fine-tune one of those (e.g. "
                               "Llama, Qwen2, Phi-3, Mistral, Gemma, SmolLM3) to export it.")
    return arch


def export_onnx(source: ModelSource, out_dir: str | Path, *, precision: str = "int4",
                execution_provider: str = "cpu", console: Any, provenance: dict[str, Any] | None = None, verify: bool = True) -> dict[str, Any]:
    """Export `source` into `out_dir` (replacing an earlier amlft export there); returns the manifest."""
    out_dir = Path(out_dir).expanduser().resolve()
    arch = check_target(source, precision=precision, execution_provider=execution_provider)
    _refuse_foreign_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as work:
        work_dir = Path(work)
        model_dir = _staged(source, work_dir / "staged", console=console)
        partial = work_dir / "onnx"
        layers = int(source.config().get("num_hidden_layers") or 0)
        build_log = work_dir / BUILD_LOG
        try:
            _run_builder(model_dir, partial, precision=precision, execution_provider=execution_provider,
                         cache_dir=work_dir / "cache", layers=layers, log_path=build_log, console=console)
        except ExportError as exc:  # keep the log where the user can read it: the work dir goes away
            kept = out_dir.parent / f"{out_dir.name}.{BUILD_LOG}"
            shutil.copyfile(build_log, kept)
            exc.hint = f"Full log: {kept}"
            raise
        shutil.move(str(build_log), partial / BUILD_LOG)
        template = carry_chat_template(source, partial, name=out_dir.name)
        check = verify_loads(partial) if verify else {"verified": False, "reason": "skipped (--no-verify)"}
        manifest = write_manifest(partial, source=source, precision=precision, execution_provider=execution_provider,
                                  architecture=arch, chat_template=template is not None, check=check,
                                  build_seconds=time.monotonic() - started, provenance=provenance or {})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
    manifest["path"] = str(out_dir)
    return manifest


def _refuse_foreign_folder(out_dir: Path) -> None:
    if out_dir.is_file():
        raise ConfigError(f"--out {out_dir} is a file.", hint="Pass a folder path for the export.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ConfigError(f"--out {out_dir} already holds files that are not an amlft export; refusing to "
                          "overwrite them.", hint="Pass an empty or new folder.")


# ---------------------------------------------------------------------------------- staging
def _staged(source: ModelSource, staged: Path, *, console: Any) -> Path:
    """One folder the builder can read: the model itself, or links to its parts, or a merged adapter."""
    if not source.needs_staging:
        assert source.weights_dir is not None
        return source.weights_dir
    staged.mkdir(parents=True)
    if source.adapter_dir is not None:
        _merge_adapter(source, staged, console=console)
    else:
        assert source.weights_dir is not None
        # later parts win: the tokenizer folder's tokenizer files, the config folder's config
        for part in (source.weights_dir, source.config_dir, source.tokenizer_dir):
            for f in part.iterdir():
                if f.is_file():
                    target = staged / f.name
                    target.unlink(missing_ok=True)
                    target.symlink_to(f.resolve())
    return staged


def _merge_adapter(source: ModelSource, staged: Path, *, console: Any) -> None:
    """Fold the LoRA weights into the base model (W + BA) and save a plain transformers folder."""
    assert source.adapter_dir is not None and source.weights_dir is not None
    with console.progress("merging the LoRA adapter", total=3, unit="steps") as bar:
        with needs_extra("local", purpose="Exporting to ONNX Runtime GenAI"):
            import torch  # noqa: F401  (peft needs it; imported here so a missing torch fails in this step)
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

        bar.update(0, status=f"loading base model {source.weights_dir}")
        base = AutoModelForCausalLM.from_pretrained(source.weights_dir, dtype="float32")
        bar.update(1, status=f"applying adapter {source.adapter_dir}")
        merged = PeftModel.from_pretrained(base, str(source.adapter_dir)).merge_and_unload()
        bar.update(2, status="saving merged weights")
        merged.save_pretrained(staged)
        AutoTokenizer.from_pretrained(source.tokenizer_dir).save_pretrained(staged)
        bar.update(3, status="merged")


# ---------------------------------------------------------------------------------- builder
def _builder_stage(line: str, layers: int) -> tuple[int, str] | None:
    """Progress position for a line the builder prints (it reads the model layer by layer)."""
    line = line.strip()
    if line.startswith("Reading embedding layer"):
        return 1, "reading embeddings"
    if m := re.match(r"Reading (?:decoder )?layer (\d+)", line):
        return int(m.group(1)) + 2, f"reading layer {int(m.group(1)) + 1}/{layers}"
    stages = {"Reading final norm": (layers + 2, "reading final norm"),
              "Reading LM head": (layers + 3, "reading LM head"),
              "Saving ONNX model": (layers + 4, "quantizing and saving the ONNX graph"),
              "Saving GenAI config": (layers + 5, "writing genai_config.json"),
              "Saving processing files": (layers + 6, "saving tokenizer files")}
    for prefix, stage in stages.items():
        if line.startswith(prefix):
            return stage
    return None


def builder_command(model_dir: Path, out_dir: Path, *, precision: str, execution_provider: str,
                    cache_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", BUILDER_MODULE, "-i", str(model_dir), "-o", str(out_dir), "-p", precision,
           "-e", execution_provider, "-c", str(cache_dir)]
    if precision == "int4" and execution_provider == "cpu":
        # accuracy level 4: int8 activations in the int4 MatMul, the fast CPU kernel (~10% faster decoding)
        cmd += ["--extra_options", "int4_accuracy_level=4"]
    return cmd


def _run_builder(model_dir: Path, out_dir: Path, *, precision: str, execution_provider: str, cache_dir: Path,
                 layers: int, log_path: Path, console: Any) -> None:
    cmd = builder_command(model_dir, out_dir, precision=precision, execution_provider=execution_provider,
                          cache_dir=cache_dir)
    # the model is a local folder: never let the builder (transformers) look anything up on the Hub
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    total = layers + 7
    with open(log_path, "w", encoding="utf-8") as log, \
            console.progress(f"building ONNX ({precision}, {execution_provider})", total=total, unit="stages") as bar:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        bar.update(0, status="loading the model")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, text=True, errors="replace", bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                stage = _builder_stage(line, layers)
                if stage is not None:
                    bar.update(stage[0], status=stage[1])
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code == 0:
            bar.update(total - 1, status="checking the exported model")
    if code != 0:
        raise ExportError(f"The ONNX Runtime GenAI model builder failed (exit code {code}):\n{_tail(log_path)}",
                          hint=f"Full log: {log_path}")
    if not (out_dir / "genai_config.json").is_file():
        raise ExportError(f"The model builder finished but wrote no genai_config.json in {out_dir}.",
                          hint=f"Full log: {log_path}")


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of the builder's log (its progress bars redraw with \\r: split on those too)."""
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


# ---------------------------------------------------------------------------------- after the build
def carry_chat_template(source: ModelSource, out_dir: Path, *, name: str) -> str | None:
    """Make sure the export carries the chat template, for ORT GenAI and for Foundry Local.

    ORT GenAI's tokenizer reads chat_template.jinja (or tokenizer_config.json); Foundry Local reads
    a prompt template from inference_model.json, `{Content}` standing for the user's message.
    """
    template = source.chat_template()
    if template is None:
        return None
    jinja = out_dir / "chat_template.jinja"
    if not jinja.is_file():
        jinja.write_text(template, encoding="utf-8")
    with needs_extra("onnx", purpose="Exporting to ONNX Runtime GenAI"):
        import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Model(str(out_dir)))
    prompt = tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": "{Content}"}]),
                                           add_generation_prompt=True)
    foundry = {"Name": name, "PromptTemplate": {"assistant": "{Content}", "prompt": prompt}}
    (out_dir / FOUNDRY_CONFIG).write_text(json.dumps(foundry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return template


def verify_loads(out_dir: Path, *, max_new_tokens: int = 8) -> dict[str, Any]:
    """Load the folder with onnxruntime_genai.Model and decode a few greedy tokens."""
    with needs_extra("onnx", purpose="Exporting to ONNX Runtime GenAI"):
        import onnxruntime_genai as og

    config = json.loads((out_dir / "genai_config.json").read_text(encoding="utf-8"))
    providers = [p for opt in config["model"]["decoder"]["session_options"].get("provider_options", [])
                 for p in opt]
    if "cuda" in providers and not og.is_cuda_available():
        return {"verified": False, "reason": "built for CUDA; this machine has no CUDA device to load it on"}
    started = time.monotonic()
    try:
        model = og.Model(str(out_dir))
        tokenizer = og.Tokenizer(model)
        ids = tokenizer.encode(tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": "Hello"}]),
                                                             add_generation_prompt=True))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        n = 0
        while not gen.is_done() and n < max_new_tokens:
            gen.generate_next_token()
            n += 1
    except Exception as exc:  # onnxruntime_genai raises plain RuntimeError for every failure
        raise ExportError(f"The exported model in {out_dir} does not load or generate: {exc}",
                          hint="Report it with the export log; try --precision fp32 to rule out quantization.") from exc
    return {"verified": True, "generated_tokens": n, "seconds": round(time.monotonic() - started, 2)}


def write_manifest(out_dir: Path, *, source: ModelSource, precision: str, execution_provider: str,
                   architecture: str, chat_template: bool, check: dict[str, Any], build_seconds: float,
                   provenance: dict[str, Any]) -> dict[str, Any]:
    """amlft_export.json: what was exported from where, how, and every file's size and hash."""
    from importlib.metadata import version

    from amlft.hashing import file_sha256
    from amlft.records import now_iso
    from amlft.version import __version__

    files: list[dict[str, Any]] = [
        {"path": p.relative_to(out_dir).as_posix(), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name not in (MANIFEST, BUILD_LOG)]
    manifest: dict[str, Any] = {
        "format": "onnx", "layout": "onnxruntime-genai", "precision": precision,
        "execution_provider": execution_provider, "architecture": architecture,
        "source": {"path": str(source.root), "layout": source.layout, "base_model": source.base_model,
                   "merged_adapter": str(source.adapter_dir) if source.adapter_dir else None, **provenance},
        "base_model": provenance.get("base_model") or source.base_model,
        "chat_template": chat_template, "check": check,
        "builder": {"package": "onnxruntime-genai", "version": version("onnxruntime-genai"),
                    "module": BUILDER_MODULE},
        "amlft_version": __version__, "created_at": now_iso(), "build_seconds": round(build_seconds, 1),
        "total_bytes": sum(f["bytes"] for f in files), "files": files,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return dict(json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")))
    return None
