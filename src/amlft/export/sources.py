"""Where the weights, config, tokenizer and adapter of a model folder are, whatever wrote it.

Four layouts reach `amlft export`:

    transformers      config.json + *.safetensors (+ tokenizer) in one folder: a local run's
                      merged model, anything saved with save_pretrained()
    peft-adapter      adapter_config.json + adapter weights; the base model is a local folder
    mlflow            MLmodel with the `transformers` flavor: weights in model/, tokenizer in
                      components/tokenizer/, a LoRA adapter (if any) in peft/ - what
                      `mlflow.transformers.log_model` writes and `amlft register` registers
    azureml           MLmodel with the `hftransformersv2` (or `hftransformers`) flavor: Azure ML's
                      fine-tuning components write data/model, data/config and data/tokenizer -
                      what `az ml model download` of a chat_completion_pipeline model gives

The folder the user points at may be the model itself or a parent of it (a download folder
holding mlflow_model_folder/), so the search goes a few levels down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlft.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
AZUREML_FLAVORS = ("hftransformersv2", "hftransformers")


@dataclass(frozen=True)
class ModelSource:
    """The parts of one model; they live in one folder except for the MLflow layouts."""

    root: Path
    layout: str  # "transformers" | "peft-adapter" | "mlflow" | "azureml"
    weights_dir: Path | None  # config.json + weights; None when only an adapter is given
    config_dir: Path
    tokenizer_dir: Path
    adapter_dir: Path | None = None
    base_model: str | None = None  # what the weights were fine-tuned from, when the folder says

    @property
    def needs_staging(self) -> bool:
        """The builder reads one folder: several parts, or an adapter to merge, need one made."""
        return self.adapter_dir is not None or len({self.weights_dir, self.config_dir, self.tokenizer_dir}) > 1

    def config(self) -> dict[str, Any]:
        return json.loads((self.config_dir / "config.json").read_text(encoding="utf-8"))

    def architecture(self) -> str:
        archs = self.config().get("architectures") or []
        return str(archs[0]) if archs else "(none: config.json names no architectures)"

    def chat_template(self) -> str | None:
        """The tokenizer's chat template (chat_template.jinja, or the older tokenizer_config.json key)."""
        jinja = self.tokenizer_dir / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        cfg = self.tokenizer_dir / "tokenizer_config.json"
        if cfg.is_file():
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return template
        return None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def _walk(root: Path, max_depth: int) -> list[Path]:
    """Folders under root, breadth first (shallowest match wins), hidden ones skipped."""
    out, queue = [], [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        out.append(folder)
        if depth < max_depth:
            queue += [(p, depth + 1) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return out


def resolve_model_source(root: str | Path, *, base_model_dir: str | Path | None = None,
                         max_depth: int = 3) -> ModelSource:
    """Find the model in `root`; errors name what is missing and which layouts are understood."""
    root = Path(root).expanduser()
    if not root.exists():
        raise ConfigError(f"Model folder {root} does not exist.",
                          hint="Pass the folder you downloaded or saved the model to (--model-dir DIR).")
    if not root.is_dir():
        raise ConfigError(f"{root} is a file, not a model folder.",
                          hint="Pass the folder holding config.json and the weights (or an MLflow model's MLmodel).")
    folders = _walk(root, max_depth)
    for folder in folders:
        if (folder / "MLmodel").is_file():
            found = _from_mlmodel(root, folder)
            if found is not None:
                return _checked(found, base_model_dir)
    for folder in folders:
        if (folder / "adapter_config.json").is_file():
            return _checked(_from_adapter(root, folder, base_model_dir), base_model_dir)
        if (folder / "config.json").is_file() and _has_weights(folder):
            tok = folder if _has_tokenizer(folder) else _sibling_tokenizer(folder)
            return _checked(ModelSource(root=root, layout="transformers", weights_dir=folder, config_dir=folder,
                                        tokenizer_dir=tok), base_model_dir)
    raise ConfigError(
        f"No model found in {root}: no transformers folder (config.json + *.safetensors), peft adapter "
        f"(adapter_config.json) or MLflow model (MLmodel) within {max_depth} levels.",
        hint="amlft export reads a transformers folder, a LoRA adapter with a local base model, an MLflow "
             "transformers model (mlflow.transformers / amlft register) or an Azure ML model download "
             "(az ml model download ... : MLmodel + data/model).")


def _sibling_tokenizer(folder: Path) -> Path:
    for cand in (folder.parent / "tokenizer", folder.parent / "components" / "tokenizer"):
        if _has_tokenizer(cand):
            return cand
    return folder  # _checked names the missing tokenizer


def _from_mlmodel(root: Path, ml_root: Path) -> ModelSource | None:
    import yaml

    try:
        spec = yaml.safe_load((ml_root / "MLmodel").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{ml_root / 'MLmodel'} is not valid YAML: {exc}") from exc
    flavors = spec.get("flavors") or {}
    if "transformers" in flavors:
        fl = flavors["transformers"] or {}
        weights = ml_root / str(fl.get("model_binary") or "model")
        tok = ml_root / "components" / "tokenizer"
        peft_dir = ml_root / str(fl.get("peft_adaptor") or "peft")
        adapter = peft_dir if (peft_dir / "adapter_config.json").is_file() else None
        base = fl.get("local_base_model_path") or fl.get("source_model_name")
        if adapter is not None:  # a PEFT model: MLflow stores only the adapter and names the base
            return ModelSource(root=root, layout="mlflow", weights_dir=None, config_dir=adapter,
                               tokenizer_dir=tok if _has_tokenizer(tok) else adapter, adapter_dir=adapter,
                               base_model=str(base) if base else None)
        return ModelSource(root=root, layout="mlflow", weights_dir=weights, config_dir=weights,
                           tokenizer_dir=tok if _has_tokenizer(tok) else weights,
                           base_model=str(base) if base else None)
    for name in AZUREML_FLAVORS:
        if name in flavors:
            data = ml_root / "data"
            weights = data / "model"
            config = data / "config" if (data / "config" / "config.json").is_file() else weights
            tok = data / "tokenizer" if _has_tokenizer(data / "tokenizer") else weights
            fl = flavors[name] or {}
            base = fl.get("model_id") or fl.get("huggingface_id")
            return ModelSource(root=root, layout="azureml", weights_dir=weights, config_dir=config, tokenizer_dir=tok,
                               base_model=str(base) if base else None)
    return None  # an MLmodel without a flavor we know: fall back to searching for the folder itself


def _from_adapter(root: Path, folder: Path, base_model_dir: str | Path | None) -> ModelSource:
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = str(base_model_dir or cfg.get("base_model_name_or_path") or "")
    tok = folder if _has_tokenizer(folder) else Path(base)
    return ModelSource(root=root, layout="peft-adapter", weights_dir=None, config_dir=Path(base),
                       tokenizer_dir=tok, adapter_dir=folder, base_model=base or None)


def _checked(src: ModelSource, base_model_dir: str | Path | None) -> ModelSource:
    """Every part is where it should be, or a clear error saying which is missing."""
    if src.adapter_dir is not None:
        base = Path(base_model_dir) if base_model_dir else Path(src.base_model or "")
        if str(base) in ("", ".") or not (base / "config.json").is_file() or not _has_weights(base):
            raise ConfigError(
                f"{src.adapter_dir} is a LoRA adapter; merging it needs its base model as a local folder, and "
                f"{str(base) if str(base) not in ('', '.') else 'no base model'} is not one.",
                hint="Export the merged model instead (a local run's register.model_dir), or point the adapter's "
                     "base_model_name_or_path at a local transformers folder of the base model.")
        src = ModelSource(root=src.root, layout=src.layout, weights_dir=base, config_dir=base,
                          tokenizer_dir=src.tokenizer_dir if _has_tokenizer(src.tokenizer_dir) else base,
                          adapter_dir=src.adapter_dir, base_model=src.base_model)
    assert src.weights_dir is not None
    if not (src.config_dir / "config.json").is_file():
        raise ConfigError(f"{src.root}: no config.json in {src.config_dir}.",
                          hint="The model folder is incomplete; download or save it again.")
    if not _has_weights(src.weights_dir):
        raise ConfigError(f"{src.root}: no weights (*.safetensors or pytorch_model*.bin) in {src.weights_dir}.",
                          hint="The model folder is incomplete; download or save it again.")
    if not _has_tokenizer(src.tokenizer_dir):
        raise ConfigError(f"{src.root}: no tokenizer ({', '.join(TOKENIZER_FILES)}) in {src.tokenizer_dir}; an "
                          "exported model without its tokenizer cannot be run.",
                          hint="Save the tokenizer next to the weights (tokenizer.save_pretrained(dir)) and retry.")
    return src
