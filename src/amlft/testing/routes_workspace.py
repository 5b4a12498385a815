"""Workspace-scoped ARM resources: workspace, computes, VM sizes, quota, datastores,
and the workspace's versioned assets (data, models)."""

from __future__ import annotations

import uuid
from typing import Any

from amlft.testing import seed
from amlft.testing.assets import ARM, asset_id, container_json, iso, system_data, workspace_id
from amlft.testing.http import FakeRequest, Reply, Router, reply_error, reply_json

SUB = r"/subscriptions/(?P<sub>[^/]+)"
WS = SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
LOC = SUB + r"/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
DEFAULT_DATASTORE = "workspaceblobstore"
WORKSPACE_GUID = "33333333-3333-3333-3333-333333333333"


def _check_scope(sub: str, rg: str | None = None, ws: str | None = None) -> Reply | None:
    if sub != seed.SUBSCRIPTION_ID:
        return reply_error(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
    if rg is not None and rg.lower() != seed.RESOURCE_GROUP.lower():
        return reply_error(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
    if ws is not None and ws.lower() != seed.WORKSPACE_NAME.lower():
        return reply_error(404, "ResourceNotFound",
                           f"The Resource '{ARM}/workspaces/{ws}' under resource group '{rg}' was not found.")
    return None


def workspace_json() -> dict[str, Any]:
    rg_id = f"/subscriptions/{seed.SUBSCRIPTION_ID}/resourceGroups/{seed.RESOURCE_GROUP}/providers"
    return {
        "id": workspace_id(),
        "name": seed.WORKSPACE_NAME,
        "type": f"{ARM}/workspaces",
        "location": seed.LOCATION,
        "kind": "Default",
        "tags": {},
        "identity": {"type": "SystemAssigned", "principalId": str(uuid.UUID(int=4)), "tenantId": str(uuid.UUID(int=5))},
        "sku": {"name": "Basic", "tier": "Basic"},
        "systemData": system_data("2025-01-01T00:00:00Z"),
        "properties": {
            "friendlyName": seed.WORKSPACE_NAME,
            "description": "amlft rehearsal workspace (in-process fake)",
            "storageAccount": f"{rg_id}/Microsoft.Storage/storageAccounts/{seed.STORAGE_ACCOUNT}",
            "keyVault": f"{rg_id}/Microsoft.KeyVault/vaults/kv-amlft-rehearsal",
            "applicationInsights": f"{rg_id}/Microsoft.Insights/components/ai-amlft-rehearsal",
            "containerRegistry": None,
            "discoveryUrl": f"https://{seed.LOCATION}.api.azureml.ms/discovery",
            "mlFlowTrackingUri": f"azureml://{seed.LOCATION}.api.azureml.ms/mlflow/v1.0{workspace_id()}",
            "workspaceId": WORKSPACE_GUID,
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
            "hbiWorkspace": False,
            "v1LegacyMode": False,
        },
    }


def get_workspace(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str) -> Reply:
    return _check_scope(sub, rg, ws) or reply_json(200, workspace_json())


def discovery_urls(fake: Any, req: FakeRequest, st: dict[str, Any]) -> Reply:
    api = f"https://{seed.LOCATION}.api.azureml.ms"
    return reply_json(200, {"api": api, "catalog": api, "experimentation": api, "gallery": api,
                            "history": api, "hyperdrive": api, "labeling": api, "modelmanagement": api,
                            "pipelines": api, "studiocoreservices": api})


# -- compute ------------------------------------------------------------------------------
def compute_json(name: str, c: dict[str, Any], faults: list[str]) -> dict[str, Any]:
    vm_size = c["vm_size"]
    state = c.get("provisioning_state", "Succeeded")
    errors = None
    if "sku_not_allowed" in faults and name == seed.CLUSTER_NAME:
        vm_size = "Standard_NC6s_v3"  # V100: inference-only for Phi-3, not in its fine-tune allow-list
    if "cluster_failed" in faults and name == seed.CLUSTER_NAME:
        state = "Failed"
        errors = [{"error": {
            "code": "AllocationFailed",
            "message": (f"Compute cluster {name} failed to provision: the requested VM size {vm_size} is not "
                        f"available in location '{seed.LOCATION}' (SkuNotAvailable). Delete and recreate the "
                        "cluster, or choose another size/region."),
        }}]
    return {
        "id": f"{workspace_id()}/computes/{name}",
        "name": name,
        "type": f"{ARM}/workspaces/computes",
        "location": seed.LOCATION,
        "tags": {},
        "systemData": system_data(c.get("created", "2025-01-01T00:00:00Z")),
        "properties": {
            "computeType": "AmlCompute",
            "computeLocation": seed.LOCATION,
            "provisioningState": state,
            "provisioningErrors": errors,
            "isAttachedCompute": False,
            "disableLocalAuth": True,
            "createdOn": c.get("created", "2025-01-01T00:00:00Z"),
            "modifiedOn": c.get("created", "2025-01-01T00:00:00Z"),
            "properties": {
                "vmSize": vm_size,
                "vmPriority": "Dedicated",
                "osType": "Linux",
                "scaleSettings": {"minNodeCount": c["min_nodes"], "maxNodeCount": c["max_nodes"],
                                  "nodeIdleTimeBeforeScaleDown": f"PT{c['idle_seconds']}S"},
                "currentNodeCount": 0,
                "targetNodeCount": 0,
                "allocationState": "Steady",
                "allocationStateTransitionTime": "2025-01-01T00:00:00Z",
                "nodeStateCounts": {"idleNodeCount": 0, "runningNodeCount": 0, "preparingNodeCount": 0,
                                    "unusableNodeCount": 0, "leavingNodeCount": 0, "preemptedNodeCount": 0},
                "remoteLoginPortPublicAccess": "Disabled",
                "enableNodePublicIp": True,
                "isolatedNetwork": False,
            },
        },
    }


def get_compute(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    bad = _check_scope(sub, rg, ws)
    if bad:
        return bad
    c = st["computes"].get(name)
    if c is None:
        return reply_error(404, "ResourceNotFound", f"Compute {name} not found in workspace {ws}.")
    return reply_json(200, compute_json(name, c, st["faults"]))


def list_computes(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str) -> Reply:
    bad = _check_scope(sub, rg, ws)
    if bad:
        return bad
    return reply_json(200, {"value": [compute_json(n, c, st["faults"]) for n, c in st["computes"].items()],
                            "nextLink": None})


# Shapes: `VirtualMachineSizeListResult` / `ListUsagesResult` in Azure/azure-rest-api-specs,
# specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/stable/
# 2024-04-01/machineLearningServices.json (example: .../2024-04-01/examples/Usage/list.json).
# The SDK entities built from them drop vCPUs and currentValue (azure-ai-ml 1.35.2), which is
# why amlft reads these JSON shapes directly (backends/azure/quota.py).
def list_vm_sizes(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, loc: str) -> Reply:
    bad = _check_scope(sub)
    if bad:
        return bad
    sizes = [
        {"name": name, "family": family, "vCPUs": vcpus, "gpus": gpus, "osVhdSizeMB": 1047552,
         "maxResourceVolumeMB": 1000 * memory, "memoryGB": float(memory), "lowPriorityCapable": True,
         "premiumIO": True, "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
         "estimatedVMPrices": None}
        for name, (family, vcpus, memory, gpus) in seed.VM_SIZES.items()
    ]
    return reply_json(200, {"value": sizes})


def list_usages(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, loc: str) -> Reply:
    bad = _check_scope(sub)
    if bad:
        return bad
    values = []
    quota = dict(seed.QUOTA)
    if "quota_exceeded" in st["faults"]:
        quota.update(seed.QUOTA_EXCEEDED)
    for family, (used, limit) in quota.items():
        values.append({
            "id": f"/subscriptions/{sub}/providers/{ARM}/locations/{loc}/usages/{family}",
            "amlWorkspaceLocation": loc,
            "type": f"{ARM}/usages",
            "unit": "Count",
            "currentValue": used,
            "limit": limit,
            "name": {"value": family, "localizedValue": f"{family} Cluster Dedicated vCPUs"},
        })
    values.append({
        "id": f"/subscriptions/{sub}/providers/{ARM}/locations/{loc}/usages/TotalCores",
        "amlWorkspaceLocation": loc, "type": f"{ARM}/usages", "unit": "Count",
        "currentValue": sum(u for u, _ in quota.values()), "limit": seed.REGIONAL_VCPU_LIMIT,
        "name": {"value": "Total Cluster Dedicated Regional vCPUs",
                 "localizedValue": "Total Cluster Dedicated Regional vCPUs"},
    })
    return reply_json(200, {"value": values, "nextLink": None})


# -- datastores -----------------------------------------------------------------------------
def datastore_json(name: str = DEFAULT_DATASTORE) -> dict[str, Any]:
    container = seed.DEFAULT_CONTAINER if name == DEFAULT_DATASTORE else seed.ARTIFACT_CONTAINER
    return {
        "id": f"{workspace_id()}/datastores/{name}",
        "name": name,
        "type": f"{ARM}/workspaces/datastores",
        "systemData": system_data("2025-01-01T00:00:00Z"),
        "properties": {
            "datastoreType": "AzureBlob",
            "accountName": seed.STORAGE_ACCOUNT,
            "containerName": container,
            "endpoint": "core.windows.net",
            "protocol": "https",
            "credentials": {"credentialsType": "AccountKey"},
            "isDefault": name == DEFAULT_DATASTORE,
            "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
            "subscriptionId": seed.SUBSCRIPTION_ID,
            "resourceGroup": seed.RESOURCE_GROUP,
            "description": None,
            "tags": {},
            "properties": {},
        },
    }


DATASTORES = (DEFAULT_DATASTORE, "workspaceartifactstore")


def list_datastores(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str) -> Reply:
    bad = _check_scope(sub, rg, ws)
    if bad:
        return bad
    names = [DEFAULT_DATASTORE] if (req.arg("isDefault") or "").lower() == "true" else list(DATASTORES)
    return reply_json(200, {"value": [datastore_json(n) for n in names], "nextLink": None})


def get_datastore(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str,
                  name: str) -> Reply:
    bad = _check_scope(sub, rg, ws)
    if bad:
        return bad
    if name not in DATASTORES:
        return reply_error(404, "UserError", f"Datastore {name} not found.")
    return reply_json(200, datastore_json(name))


def datastore_secrets(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str,
                      name: str) -> Reply:
    bad = _check_scope(sub, rg, ws)
    if bad:
        return bad
    return reply_json(200, {"secretsType": "AccountKey", "key": "ZmFrZS1zdG9yYWdlLWtleQ=="})


# -- workspace assets (data, models) ---------------------------------------------------------------
def _asset_version_json(kind: str, name: str, version: str, rec: dict[str, Any]) -> dict[str, Any]:
    body = rec["body"]
    props = dict(body.get("properties", {}))
    props.setdefault("isArchived", False)
    props.setdefault("isAnonymous", False)
    if kind == "models":
        props.setdefault("provisioningState", "Succeeded")
        props["flavors"] = props.get("flavors") or {}
    return {
        "id": asset_id(kind, name, version),
        "name": version,
        "type": f"{ARM}/workspaces/{kind}/versions",
        "systemData": system_data(rec["created"]),
        "properties": props,
    }


def _assets(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return st["data"] if kind == "data" else st["models"]


def put_asset_version(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, kind: str,
                      name: str, version: str) -> Reply:
    bad = _check_scope(sub, rg, ws)
    if bad:
        return bad
    body = req.json()
    store = _assets(st, kind).setdefault(name, {})
    existed = version in store
    if existed:
        # The service keeps asset versions immutable apart from description/tags/stage.
        old = store[version]["body"]["properties"]
        new = body.get("properties", {})
        for field in ("dataUri", "modelUri", "dataType", "modelType"):
            if field in old and field in new and old[field] != new[field]:
                return reply_error(
                    409, "UserError",
                    f"Conflict: {kind} {name}:{version} already exists with a different {field}; "
                    "asset versions are immutable, create a new version instead.")
    store[version] = {"body": body, "created": store.get(version, {}).get("created", st["clock"])}
    return reply_json(200 if existed else 201, _asset_version_json(kind, name, version, store[version]))


def get_asset_version(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, kind: str,
                      name: str, version: str) -> Reply:
    rec = _assets(st, kind).get(name, {}).get(version)
    if rec is None:
        label = "Data" if kind == "data" else "Model"
        return reply_error(404, "UserError", f"{label} container/version {name}:{version} not found.")
    return reply_json(200, _asset_version_json(kind, name, version, rec))


def _ordered(versions: dict[str, Any]) -> list[str]:
    return sorted(versions, key=lambda v: (versions[v]["created"], (0, int(v)) if v.isdigit() else (1, v)))


def list_asset_versions(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, kind: str,
                        name: str) -> Reply:
    versions = _assets(st, kind).get(name, {})
    items = [_asset_version_json(kind, name, v, versions[v]) for v in _ordered(versions)]
    order = (req.arg("$orderBy") or req.arg("orderBy") or "").lower()
    if "desc" in order:
        items.reverse()
    top = req.arg("$top")
    if top:
        items = items[: int(top)]
    return reply_json(200, {"value": items, "nextLink": None})


def get_asset_container(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, kind: str,
                        name: str) -> Reply:
    versions = _assets(st, kind).get(name)
    if not versions:
        return reply_error(404, "UserError", f"{kind} container {name} not found.")
    ordered = _ordered(versions)
    return reply_json(200, container_json(kind, name, ordered, created=versions[ordered[0]]["created"]))


def put_asset_container(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, kind: str,
                        name: str) -> Reply:
    versions = _assets(st, kind).setdefault(name, {})
    return reply_json(200, container_json(kind, name, _ordered(versions), created=st["clock"]))


def list_asset_containers(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str,
                          kind: str) -> Reply:
    items = [container_json(kind, n, _ordered(v), created=iso(st["clock"])) for n, v in _assets(st, kind).items()]
    return reply_json(200, {"value": items, "nextLink": None})


def register(router: Router) -> None:
    router.add("GET", WS, get_workspace)
    router.add("GET", r"/discovery", discovery_urls)
    router.add("GET", WS + r"/computes", list_computes)
    router.add("GET", WS + r"/computes/(?P<name>[^/]+)", get_compute)
    router.add("GET", LOC + r"/vmSizes", list_vm_sizes)
    router.add("GET", LOC + r"/usages", list_usages)
    router.add("GET", WS + r"/datastores", list_datastores)
    router.add("GET", WS + r"/datastores/(?P<name>[^/]+)", get_datastore)
    router.add("POST", WS + r"/datastores/(?P<name>[^/]+)/listSecrets", datastore_secrets)
    kinds = r"(?P<kind>data|models)"
    router.add("GET", WS + "/" + kinds, list_asset_containers)
    router.add("GET", WS + "/" + kinds + r"/(?P<name>[^/]+)", get_asset_container)
    router.add("PUT", WS + "/" + kinds + r"/(?P<name>[^/]+)", put_asset_container)
    router.add("GET", WS + "/" + kinds + r"/(?P<name>[^/]+)/versions", list_asset_versions)
    router.add("GET", WS + "/" + kinds + r"/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", get_asset_version)
    router.add("PUT", WS + "/" + kinds + r"/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", put_asset_version)
