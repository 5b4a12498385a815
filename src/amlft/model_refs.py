"""A model or tokenizer reference is a local folder or a Hugging Face Hub id; say early and fast which
one is unusable, and why.

Why not let transformers find out: given a folder that does not exist it tries the string as a
hub id and reports a confusing "not a valid model identifier"; offline it can spend a minute in
retries before failing; and a training process finds an unreachable hub model only after it
started (49 s into `amlft wait`). Here a path that does not exist is "folder not found"; a hub
id is answered from the local cache when it is there, refused at once when HF_HUB_OFFLINE is
set, and otherwise probed with one metadata request (huggingface_hub's own errors, no retries).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from amlft.errors import ConfigError
from amlft.extras import needs_extra

PROBE_TIMEOUT_S = 3.0
OFFLINE_CHOICES = ("use a local folder (model.path), a GGUF file (model.gguf), the shipped real model "
                   "(model.source: amlft:smollm2-135m-instruct) or model.build: tiny")
PROBE_FILE = "config.json"  # every transformers model repo has it; tokenizer repos have tokenizer_config.json


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_folder(ref: str) -> bool:
    """A path, not a hub id: absolute, ./ ../ ~ prefixed, backslashes, more than one '/', or an existing folder."""
    return (ref.startswith(("/", ".", "~")) or "\\" in ref or ref.count("/") > 1
            or Path(ref).expanduser().exists())


def cached(ref: str, filename: str) -> str | None:
    """The locally cached copy of one file of hub repo `ref`, or None (never touches the network)."""
    with needs_extra("hub", purpose="Resolving a Hugging Face model id"):
        from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref, filename)
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def require_folder(ref: str, *, what: str) -> Path:
    p = Path(ref).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what} {ref}: folder not found" + (" (it is a file)" if p.is_file() else "") + ".",
                          hint=f"Point {what} at an existing folder, or give a Hugging Face Hub id (owner/name).")
    return p


def check_hub_model(ref: str, *, what: str = "model.hub_id", filename: str = PROBE_FILE) -> str:
    """'cache' or 'hub' when `ref` can be loaded; a ConfigError naming the cause (quickly) when it cannot."""
    if cached(ref, filename):
        return "cache"
    if hub_offline():
        raise ConfigError(f"{what} {ref} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set.",
                          hint="Unset HF_HUB_OFFLINE (with network access) or fill the cache first (hf download); "
                               f"offline, {OFFLINE_CHOICES}.")
    with needs_extra("hub", purpose="Resolving a Hugging Face model id"):
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
        )

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        get_hf_file_metadata(hf_hub_url(ref, filename, endpoint=endpoint), timeout=PROBE_TIMEOUT_S,
                             endpoint=endpoint, retry_on_errors=False)
    except OfflineModeIsEnabled as exc:  # HF_HUB_OFFLINE was set when huggingface_hub was imported
        raise ConfigError(f"{what} {ref} is not in the local Hugging Face cache and the hub is in offline mode.",
                          hint=f"Unset HF_HUB_OFFLINE (with network access); offline, {OFFLINE_CHOICES}.") from exc
    except GatedRepoError as exc:
        raise ConfigError(f"{what} {ref} is gated on the Hugging Face Hub: accept its terms first.",
                          hint=f"Open https://huggingface.co/{ref}, accept the license, and set HF_TOKEN.") from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"{what} {ref} does not exist on the Hugging Face Hub (or is private).",
                          hint="Check the spelling (owner/name); for a private model set HF_TOKEN.") from exc
    except HfHubHTTPError as exc:
        raise ConfigError(f"{what} {ref}: the Hugging Face Hub at {endpoint} answered "
                          f"{exc.response.status_code if exc.response is not None else 'an error'}.",
                          hint="Retry later, or use a local folder / model.source.") from exc
    except Exception as exc:  # httpx connection/timeout errors and OSError: the hub is unreachable
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore")):
            raise ConfigError(f"{what} {ref}: cannot reach the Hugging Face Hub at {endpoint} "
                              f"({type(exc).__name__}: {str(exc)[:200]}).",
                              hint=f"Check the network and HF_ENDPOINT; offline, {OFFLINE_CHOICES}.") from exc
        raise
    return "hub"


def load_tokenizer(ref: str, *, what: str = "tokenizer", **kwargs: Any) -> Any:
    """AutoTokenizer for a folder or hub id, failing fast and clearly (see the module docstring)."""
    with needs_extra("local", purpose="Loading the model's tokenizer"):
        from transformers import AutoTokenizer

    if looks_like_folder(ref):
        return AutoTokenizer.from_pretrained(str(require_folder(ref, what=what)), **kwargs)
    where = check_hub_model(ref, what=what, filename="tokenizer_config.json")
    return AutoTokenizer.from_pretrained(ref, local_files_only=where == "cache" or hub_offline(), **kwargs)
