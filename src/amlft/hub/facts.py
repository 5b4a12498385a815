"""What a run record knows about the model it produced: everything a model card states.

Why a separate step: the card must only say things the run actually measured or used.
Gathering them in one typed object (with `None` for what the run does not know) keeps
the card renderer free of record-format guesswork, and keeps missing pieces explicit -
no eval means no model-index, not a made-up number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amlft.records import RunRecord

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Sources whose rows are English chat (the shipped sample is ultrachat-shaped English).
ENGLISH_SOURCES = ("HuggingFaceH4/ultrachat_200k", "amlft:sample_chat")


def is_hub_id(value: Any) -> bool:
    """`owner/name` that is not also a folder on this machine (a local path is no Hub id)."""
    return isinstance(value, str) and bool(HUB_ID.match(value)) and not Path(value).exists()


@dataclass
class RunFacts:
    run_id: str
    backend: str
    rehearse: bool
    created_at: str | None
    profile_name: str | None
    model_name: str | None                 # profile.model.name (Azure registry name)
    base_model_id: str | None              # a Hub id we can put in `base_model`
    base_model_ref: str | None             # what was fine-tuned, as the run saw it (id or folder)
    base_model_dir: str | None
    base_card: dict[str, Any] = field(default_factory=dict)   # the base model card's metadata, when local
    method: str = "lora"                   # "lora" | "full"
    lora: dict[str, Any] = field(default_factory=dict)        # r, lora_alpha, target_modules, ... from the adapter
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    hyperparameters_source: str = ""
    train_metrics: dict[str, Any] = field(default_factory=dict)
    data_source: str | None = None
    data_format: str | None = None
    data_substituted: bool = False
    data_counts: dict[str, Any] = field(default_factory=dict)
    data_report: dict[str, Any] = field(default_factory=dict)
    data_files: dict[str, str] = field(default_factory=dict)  # role -> prepared JSONL
    data_hash: str | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    azure_job: dict[str, Any] = field(default_factory=dict)
    registered: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None           # merged transformers folder
    adapter_dir: str | None = None         # peft adapter folder

    @property
    def base_label(self) -> str:
        """How to name the base model in prose: its Hub id, else what the local folder is."""
        if self.base_model_id:
            return self.base_model_id
        ref = self.base_model_ref or self.model_name
        if ref and Path(ref).is_dir():
            tiny = _read_json(Path(ref) / "amlft_tiny.json")
            if tiny:
                params = tiny.get("parameters")
                return "amlft's tiny offline chat model" + (f" ({params:,} parameters)" if isinstance(params, int) else "")
            return f"the local model folder {Path(ref).name}"
        return ref or "an unrecorded base model"

    @property
    def license(self) -> str | None:
        lic = self.base_card.get("license")
        return lic if isinstance(lic, str) else None

    @property
    def language(self) -> list[str] | None:
        lang = self.base_card.get("language")
        if isinstance(lang, str):
            return [lang]
        if isinstance(lang, list) and all(isinstance(x, str) for x in lang):
            return list(lang)
        return ["en"] if self.data_source in ENGLISH_SOURCES else None

    @property
    def dataset_id(self) -> str | None:
        return self.data_source if is_hub_id(self.data_source) else None


def gather_facts(record: RunRecord, *, model_dir: str | Path | None = None) -> RunFacts:
    """Collect the card's facts from a run record (and the files it points at)."""
    out = record.data.get("outputs") or {}
    profile = record.profile
    pmodel = profile.get("model") or {}
    train, data, reg, submit = (dict(out.get(k) or {}) for k in ("train", "data", "register", "submit"))

    base_ref = train.get("base_model") or pmodel.get("hub_id") or pmodel.get("path") or pmodel.get("name")
    base_id = next((c for c in (pmodel.get("hub_id"), train.get("base_model")) if is_hub_id(c)), None)
    base_dir = train.get("base_model_dir") or pmodel.get("path")

    adapter_dir = train.get("adapter_dir")
    lora = _read_json(Path(adapter_dir) / "adapter_config.json") if adapter_dir else {}
    if lora.get("base_model_name_or_path") and not base_id and is_hub_id(lora["base_model_name_or_path"]):
        base_id = lora["base_model_name_or_path"]
    finetune = dict(profile.get("finetune") or {})
    if lora:
        method = "lora" if str(lora.get("peft_type", "LORA")).upper() == "LORA" else str(lora["peft_type"]).lower()
    elif record.backend == "local":
        method = "lora"  # the local backend always trains a LoRA adapter
    else:
        method = "lora" if str(finetune.get("apply_lora", "false")).lower() == "true" else "full"

    hp = dict(train.get("hyperparameters") or {})
    hp_source = "effective values used by the local trainer" if hp else ""
    if not hp and finetune:
        hp, hp_source = finetune, "inputs passed to the Azure ML chat_completion_pipeline component"

    report: dict[str, Any] = {}
    if data.get("report_path"):
        report = _read_json(Path(data["report_path"]))

    return RunFacts(
        run_id=record.run_id,
        backend=record.backend,
        rehearse=record.rehearse,
        created_at=record.data.get("created_at"),
        profile_name=profile.get("name"),
        model_name=pmodel.get("name"),
        base_model_id=base_id,
        base_model_ref=str(base_ref) if base_ref else None,
        base_model_dir=str(base_dir) if base_dir else None,
        base_card=_card_metadata(Path(base_dir) / "README.md") if base_dir else {},
        method=method,
        lora={k: lora[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "peft_type") if k in lora},
        hyperparameters=hp,
        hyperparameters_source=hp_source,
        train_metrics=dict(train.get("metrics") or {}),
        data_source=data.get("source") or (profile.get("data") or {}).get("source"),
        data_format=data.get("format"),
        data_substituted=bool(data.get("substituted")),
        data_counts=dict(data.get("counts") or {}),
        data_report=report,
        data_files={role: str(data[f"{role}_file"]) for role in ("train", "validation", "test")
                    if data.get(f"{role}_file")},
        data_hash=data.get("data_hash"),
        eval=dict(out.get("eval") or {}),
        azure_job={k: submit[k] for k in ("job_name", "experiment", "display_name", "studio_url") if submit.get(k)},
        registered={k: reg[k] for k in ("name", "version", "model_uri") if reg.get(k)},
        model_dir=str(model_dir) if model_dir else reg.get("model_dir"),
        adapter_dir=adapter_dir,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _card_metadata(readme: Path) -> dict[str, Any]:
    """The YAML metadata of a model card on disk (a downloaded base model's README.md)."""
    if not readme.is_file():
        return {}
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    if not m:
        return {}
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}
