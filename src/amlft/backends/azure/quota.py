"""VM sizes and vCPU quota, read in the shapes the service really returns.

Why not `compute.list_sizes()` / `compute.list_usage()`: with azure-ai-ml 1.35.2 their
entities drop the fields that matter (`VmSize.v_cp_us` is None, `Usage.current_value`
is None and `Usage.name` is a plain dict), so a check built on them silently never
runs. This module reads the REST responses instead, whose shapes the spec defines
(Azure/azure-rest-api-specs, specification/machinelearningservices/resource-manager/
Microsoft.MachineLearningServices/stable/2024-04-01/machineLearningServices.json:
`VirtualMachineSize` has `vCPUs`, `gpus`, `family`; `Usage` has `currentValue`, `limit`,
`name.value`; examples in .../2024-04-01/examples/Usage/list.json).

A request fits when (a) the size's family has `need` vCPUs free under its own limit and
(b) the regional total ("Total Cluster Dedicated Regional vCPUs") has them free too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from amlft.backends.azure.service import call

REGIONAL_TOTAL = "Total Cluster Dedicated Regional vCPUs"
QUOTA_PORTAL = "Azure portal > Quotas > Machine learning (or `az ml compute list-usage`)"


@dataclass(frozen=True)
class VmSize:
    name: str
    family: str
    vcpus: int
    gpus: int


@dataclass(frozen=True)
class Usage:
    name: str
    current: int
    limit: int

    @property
    def free(self) -> int:
        return max(self.limit - self.current, 0)


def list_vm_sizes(sess: Any) -> dict[str, VmSize]:
    """Sizes offered in the workspace's region, by lower-case name (raw `vmSizes` JSON)."""
    ops = sess.ws.compute
    location = call("Reading the workspace region", ops._get_workspace_location)
    raw = call("Listing VM sizes", ops._vmsize_operations.list, location=location,
               cls=lambda response, _deserialized, _headers: response.http_response.json())
    out: dict[str, VmSize] = {}
    for item in (raw or {}).get("value") or []:
        size = VmSize(str(item.get("name") or ""), str(item.get("family") or ""),
                      int(item.get("vCPUs") or 0), int(item.get("gpus") or 0))
        out[size.name.lower()] = size
    return out


def list_usages(sess: Any) -> dict[str, Usage]:
    """Current usage and limit per quota name (`name.value`), as the REST model serialises it."""
    ops = sess.ws.compute
    location = call("Reading the workspace region", ops._get_workspace_location)
    items = call("Listing quota usage", lambda: list(ops._usage_operations.list(location=location, cls=lambda x: x)))
    out: dict[str, Usage] = {}
    for item in items:
        d = item.as_dict() if hasattr(item, "as_dict") else dict(item)
        name = str((d.get("name") or {}).get("value") or "")
        if name:
            out[name.lower()] = Usage(name, int(d.get("currentValue") or 0), int(d.get("limit") or 0))
    return out


def quota_problem(size: VmSize, count: int, usages: dict[str, Usage], *, what: str, queues: bool,
                  surplus: float = 1.0) -> tuple[str, str, str] | None:
    """(severity, message, fix) when `count` x `size` does not fit the family or regional quota.

    `queues`: a cluster job that finds the quota busy waits (warning); a deployment fails (error).
    `surplus`: managed online deployments reserve 20% extra capacity for upgrades (the service's
    OutOfQuota error counts it), so the endpoint check passes 1.2.
    """
    need = math.ceil(size.vcpus * count * surplus)
    family = usages.get(size.family.lower())
    regional = usages.get(REGIONAL_TOTAL.lower())
    request = f"{what} needs {need} {size.family} vCPUs ({count} x {size.name}, {size.vcpus} vCPUs each" + (
        f", +{round((surplus - 1) * 100)}% reserved for upgrades)" if surplus > 1 else ")")
    fix = (f"Request more {size.family} quota ({QUOTA_PORTAL}), lower the node/instance count, "
           "or pick a VM size whose family has free quota.")
    busy = "warning" if queues else "error"
    then = "; it will queue until they are free" if queues else ""
    if family is None:
        return ("warning", f"{request}; the subscription reports no quota for that family in this region.", fix)
    if family.limit < need:
        return ("error", f"{request}; used/limit is {family.current}/{family.limit}, so it can never fit.", fix)
    if family.free < need:
        return (busy, f"{request}; used/limit is {family.current}/{family.limit} ({family.free} free){then}.",
                "Wait for other jobs/endpoints of that family to finish, or r" + fix[1:])
    if regional is not None and regional.limit < need:
        return ("error", f"{request}; the regional total limit is {regional.limit}.",
                f"Request a higher '{REGIONAL_TOTAL}' limit ({QUOTA_PORTAL}).")
    if regional is not None and regional.free < need:
        return (busy, f"{request}; the regional total is at {regional.current}/{regional.limit} "
                      f"({regional.free} free){then}.",
                f"Free up other clusters/endpoints in the region or request a higher '{REGIONAL_TOTAL}' limit.")
    return None
