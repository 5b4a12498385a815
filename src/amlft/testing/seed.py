"""What the fake's world starts with: the workspace, cluster, registry and quota.

The registry is seeded as it is today: Phi-3-mini-4k-instruct (the reference notebook's
model) is archived, its fine-tuning retired on 2025-08-30; Phi-4-mini-instruct, the
flagship of jobs/phi4-mini-ultrachat.yml, is current.
"""

from __future__ import annotations

import json
from typing import Any

SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-amlft-rehearsal"
WORKSPACE_NAME = "amlft-rehearsal"
LOCATION = "eastus"
CLUSTER_NAME = "gpu-a100"
CLUSTER_SKU = "Standard_NC24ads_A100_v4"
REGISTRY_NAME = "azureml"
REGISTRY_REGIONS = ["eastus", "westus", "westeurope"]
FLAGSHIP_MODEL = "Phi-4-mini-instruct"
PHI3_RETIRED_ON = "2025-08-30"
REGISTRY_SUBSCRIPTION_ID = "11111111-1111-1111-1111-111111111111"
REGISTRY_RESOURCE_GROUP = "registry-builtin-prod-eastus-01"
STORAGE_ACCOUNT = "amlftrehearsalstore"
DEFAULT_CONTAINER = "azureml-blobstore-00000000-0000-0000-0000-000000000000"
ARTIFACT_CONTAINER = "azureml"
# Virtual clock origin: a fixed instant so rehearsals are reproducible.
CLOCK_ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z

PHI3_FINETUNE_SKUS = [
    "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4",
]
PHI3_INFERENCE_SKUS = [
    "Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_ND40rs_v2",
    "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4",
]
PHI3_DEFAULTS = {
    "apply_deepspeed": "true", "deepspeed_stage": "2", "apply_lora": "true", "precision": "16",
    "ignore_mismatched_sizes": "false", "num_train_epochs": "1", "per_device_train_batch_size": "1",
    "learning_rate_min": "1e-06", "learning_rate_max": "5e-05", "max_seq_length": "4096",
}
PHI4_DEFAULTS = {
    "apply_deepspeed": "true", "deepspeed_stage": "2", "apply_lora": "true", "precision": "16",
    "ignore_mismatched_sizes": "false", "num_train_epochs": "1", "per_device_train_batch_size": "1",
    "max_seq_length": "4096",
}

# name -> (family, vCPUs, memory GB, GPUs); the GPU table plus two CPU sizes.
VM_SIZES: dict[str, tuple[str, int, int, int]] = {
    "Standard_DS3_v2": ("standardDSv2Family", 4, 14, 0),
    "Standard_E4s_v3": ("standardESv3Family", 4, 32, 0),
    "Standard_NC6s_v3": ("standardNCSv3Family", 6, 112, 1),
    "Standard_NC12s_v3": ("standardNCSv3Family", 12, 224, 2),
    "Standard_NC24s_v3": ("standardNCSv3Family", 24, 448, 4),
    "Standard_NC24rs_v3": ("standardNCSv3Family", 24, 448, 4),
    "Standard_ND40rs_v2": ("standardNDSv2Family", 40, 672, 8),
    "Standard_NC24ads_A100_v4": ("standardNCADSA100v4Family", 24, 220, 1),
    "Standard_NC48ads_A100_v4": ("standardNCADSA100v4Family", 48, 440, 2),
    "Standard_NC96ads_A100_v4": ("standardNCADSA100v4Family", 96, 880, 4),
    "Standard_ND96asr_v4": ("standardNDASv4_A100Family", 96, 900, 8),
    "Standard_ND96amsr_A100_v4": ("standardNDAMSv4_A100Family", 96, 1900, 8),
    "Standard_NC4as_T4_v3": ("standardNCASv3_T4Family", 4, 28, 1),
    "Standard_NC64as_T4_v3": ("standardNCASv3_T4Family", 64, 440, 4),
    "Standard_NC40ads_H100_v5": ("standardNCadsH100v5Family", 40, 320, 1),
    "Standard_NC80adis_H100_v5": ("standardNCadsH100v5Family", 80, 640, 2),
    "Standard_ND96isr_H100_v5": ("standardNDSH100v5Family", 96, 1900, 8),
}
# family -> (current usage, limit) in vCPUs. NCSv3 is small on purpose: an NC6s_v3 x2
# deployment fits, which is what the deployment_quota fault then contradicts.
QUOTA = {
    "standardNCADSA100v4Family": (0, 96),
    "standardNCSv3Family": (0, 24),
    "standardNDSv2Family": (0, 0),
    "standardNDASv4_A100Family": (0, 0),
    "standardNDAMSv4_A100Family": (0, 0),
    "standardNCASv3_T4Family": (0, 64),
    "standardNCadsH100v5Family": (0, 0),
    "standardNDSH100v5Family": (0, 0),
    "standardDSv2Family": (8, 100),
    "standardESv3Family": (0, 100),
}
REGIONAL_VCPU_LIMIT = 400
# The `quota_exceeded` fault: the A100 family's limit is below one NC24ads node, and the
# endpoint's NCSv3 family is mostly used by someone else's deployments.
QUOTA_EXCEEDED = {
    "standardNCADSA100v4Family": (0, 12),
    "standardNCSv3Family": (18, 24),
}


def _registry_model(name: str, version: str, *, finetune: list[str] | None, inference: list[str],
                    defaults: dict[str, str] | None, description: str) -> dict[str, Any]:
    tags: dict[str, str] = {
        "task": "chat-completion",
        "license": "mit",
        "author": "Microsoft",
        "hiddenlayerscanned": "",
        "inference_compute_allow_list": repr(inference),
    }
    if finetune is not None:
        tags["finetune_compute_allow_list"] = repr(finetune)
        tags["evaluation_compute_allow_list"] = repr(finetune)
    if defaults is not None:
        tags["model_specific_defaults"] = repr(defaults)
    return {
        "name": name,
        "version": version,
        "description": description,
        "tags": tags,
        "properties": {"SharedComputeCapacityEnabled": "", "finetuneDefaultInputs": json.dumps(defaults or {})},
        "type": "mlflow_model",
        "stage": "Production",
        "archived": False,
        "created": "2024-04-23T00:00:00Z",
    }


def initial_state() -> dict[str, Any]:
    """A fresh world. Everything here is JSON so it can be persisted as is."""
    from amlft.resources import resource_path

    component = json.loads(resource_path("components", "chat_completion_pipeline-0.0.82.json").read_text("utf-8"))
    phi3 = _registry_model(
        "Phi-3-mini-4k-instruct", "15", finetune=PHI3_FINETUNE_SKUS, inference=PHI3_INFERENCE_SKUS,
        defaults=PHI3_DEFAULTS,
        description="Phi-3 Mini-4K-Instruct is a 3.8B parameters, lightweight, state-of-the-art open model.",
    )
    phi3["retired_on"] = PHI3_RETIRED_ON
    models = {
        "Phi-3-mini-4k-instruct": {"15": phi3},
        FLAGSHIP_MODEL: {
            "1": _registry_model(
                FLAGSHIP_MODEL, "1", finetune=PHI3_FINETUNE_SKUS, inference=PHI3_INFERENCE_SKUS,
                defaults=PHI4_DEFAULTS,
                description="Phi-4-mini-instruct is a 3.8B parameters lightweight open model (128K context) "
                            "built upon synthetic data and filtered publicly available websites.",
            ),
        },
        "Phi-3.5-mini-instruct": {
            "6": _registry_model(
                "Phi-3.5-mini-instruct", "6", finetune=PHI3_FINETUNE_SKUS, inference=PHI3_INFERENCE_SKUS,
                defaults=PHI3_DEFAULTS,
                description="Phi-3.5-mini is a lightweight, state-of-the-art open model (128K context).",
            ),
        },
    }
    return {
        "schema": 1,
        "clock": CLOCK_ORIGIN,
        "faults": [],
        "fault_hits": {},
        "seq": 0,
        "registry": {"models": models, "components": {component["name"]: {
            component["version"]: component,
            # an older version still being replicated: not yet usable from this workspace's region
            "0.0.81": {**component, "version": "0.0.81", "regions": ["westus"]},
        }}},
        "computes": {
            CLUSTER_NAME: {
                "vm_size": CLUSTER_SKU, "min_nodes": 0, "max_nodes": 2, "idle_seconds": 1800,
                "provisioning_state": "Succeeded", "created": "2025-01-01T00:00:00Z",
            },
        },
        "blobs": {},
        "data": {},
        "models": {},
        "jobs": {},
        "endpoints": {},
        "deployments": {},
        "operations": {},
        "taken_endpoint_names": ["my-endpoint"],
    }
