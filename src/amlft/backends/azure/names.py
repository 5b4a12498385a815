"""Azure ML naming rules, checked before anything bills (the service only says no at deploy time)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import re

ENDPOINT_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
MIN_LEN, MAX_LEN = 3, 32


def name_problem(name: str, *, what: str) -> str | None:
    """Why `name` is not a valid endpoint/deployment name, or None."""
    if not MIN_LEN <= len(name) <= MAX_LEN:
        return f"{what} name {name!r} has {len(name)} characters; it must have {MIN_LEN}-{MAX_LEN}."
    if not ENDPOINT_NAME.match(name):
        return (f"{what} name {name!r} must start with a letter, contain only letters, digits and '-', "
                "and end with a letter or digit.")
    return None


def endpoint_name_for_run(run_id: str) -> str:
    """A valid, unique-per-run endpoint name: 'ft-' + a slug of the run id + a short hash.

    Endpoint names are unique per Azure region, so the hash keeps two runs with the same
    profile name from colliding.
    """
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:6]
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    slug = slug[: MAX_LEN - len("ft--") - len(digest)].strip("-")
    name = f"ft-{slug}-{digest}" if slug else f"ft-{digest}"
    return name


def registered_model_name(model: str, dataset: str) -> str:
    """'<model>-<dataset>' with '/' -> '-', as the reference flow names the fine-tuned model."""
    raw = f"{model}-{dataset.strip('/')}".replace("/", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-")[:255]


def dataset_slug(source: str) -> str:
    """A short dataset name for display names and asset names: 'HuggingFaceH4/ultrachat_200k' -> 'ultrachat_200k'."""
    s = source.rstrip("/").split("/")[-1] or "data"
    s = re.sub(r"\.(jsonl?|csv|parquet)$", "", s)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-") or "data"


def unique_version() -> str:
    """A model version that sorts by time and is unique per second (the reference uses a timestamp)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d%H%M%S")
