"""REST shapes of versioned assets (models, components, data) as the service returns them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from amlft.testing import seed

ARM = "Microsoft.MachineLearningServices"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def system_data(created: str | float) -> dict[str, Any]:
    when = created if isinstance(created, str) else iso(created)
    return {
        "createdAt": when, "createdBy": "amlft-rehearsal", "createdByType": "User",
        "lastModifiedAt": when, "lastModifiedBy": "amlft-rehearsal", "lastModifiedByType": "User",
    }


def workspace_id() -> str:
    return (f"/subscriptions/{seed.SUBSCRIPTION_ID}/resourceGroups/{seed.RESOURCE_GROUP}"
            f"/providers/{ARM}/workspaces/{seed.WORKSPACE_NAME}")


def asset_id(kind: str, name: str, version: str | None = None, *, registry: str | None = None) -> str:
    if registry:
        base = f"azureml://registries/{registry}/{kind}/{name}"
        return f"{base}/versions/{version}" if version else base
    base = f"{workspace_id()}/{kind}/{name}"
    return f"{base}/versions/{version}" if version else base


def registry_model_json(model: dict[str, Any], *, retired: bool) -> dict[str, Any]:
    tags = dict(model["tags"])
    stage = model.get("stage")
    archived = bool(model.get("archived"))
    retired_on = model.get("retired_on") or ("2025-08-30" if retired else None)
    if retired_on:
        # What Phi-3-mini-4k-instruct looks like in the azureml registry now: archived, with its
        # fine-tuning retirement date in the tags (Azure retired it on 2025-08-30).
        tags["finetune_deprecation_date"] = retired_on
        tags["deprecation_date"] = retired_on
        tags["retirement_date"] = retired_on
        stage = "Archived"
        archived = True
    return {
        "id": asset_id("models", model["name"], model["version"], registry=seed.REGISTRY_NAME),
        "name": model["version"],
        "type": f"{ARM}/registries/models/versions",
        "systemData": system_data(model.get("created", "2024-04-23T00:00:00Z")),
        "properties": {
            "description": model.get("description"),
            "tags": tags,
            "properties": model.get("properties", {}),
            "isAnonymous": False,
            "isArchived": archived,
            "modelType": model.get("type", "mlflow_model"),
            "modelUri": f"azureml://registries/{seed.REGISTRY_NAME}/models/{model['name']}/versions/{model['version']}",
            "flavors": {"python_function": {"data": {"loader_module": "mlflow.transformers"}}},
            "stage": stage,
            "jobName": None,
        },
    }


def container_json(kind: str, name: str, versions: list[str], *, registry: str | None = None,
                   created: str | float = "2024-04-23T00:00:00Z") -> dict[str, Any]:
    latest = versions[-1] if versions else None
    return {
        "id": asset_id(kind, name, registry=registry),
        "name": name,
        "type": f"{ARM}/{'registries' if registry else 'workspaces'}/{kind}",
        "systemData": system_data(created),
        "properties": {"description": None, "tags": {}, "properties": {}, "isArchived": False,
                       "latestVersion": latest, "nextVersion": _next_version(latest)},
    }


def _next_version(latest: str | None) -> str:
    if latest is None:
        return "1"
    try:
        return str(int(latest) + 1)
    except ValueError:
        return latest


def component_json(component: dict[str, Any]) -> dict[str, Any]:
    """The registry's pipeline component, rebuilt from the pinned interface snapshot."""
    inputs: dict[str, Any] = {}
    for name, spec in component["inputs"].items():
        entry: dict[str, Any] = {"type": spec["type"]}
        if spec.get("optional"):
            entry["optional"] = True
        if "default" in spec:
            entry["default"] = spec["default"]
        if "enum" in spec:
            entry["enum"] = spec["enum"]
        if "min" in spec:
            entry["min"] = spec["min"]
        inputs[name] = entry
    spec = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineComponent.schema.json",
        "name": component["name"],
        "version": component["version"],
        "display_name": component.get("display_name", component["name"]),
        "description": "Pipeline component for chat completion: model import, preprocess, finetune, evaluation.",
        "type": "pipeline",
        "is_deterministic": True,
        "inputs": inputs,
        "outputs": {k: dict(v) for k, v in component["outputs"].items()},
        "id": asset_id("components", component["name"], component["version"], registry=seed.REGISTRY_NAME),
    }
    return {
        "id": spec["id"],
        "name": component["version"],
        "type": f"{ARM}/registries/components/versions",
        "systemData": system_data("2025-06-01T00:00:00Z"),
        "properties": {
            "description": spec["description"],
            "tags": {"Preview": ""},
            "properties": {},
            "isAnonymous": False,
            "isArchived": False,
            "componentSpec": spec,
        },
    }
