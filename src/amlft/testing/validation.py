"""Request validation the service enforces, so a request the service would refuse fails here too.

Required fields and enums of online endpoints and deployments are the REST spec's
(Azure/azure-rest-api-specs, specification/machinelearningservices/resource-manager/
Microsoft.MachineLearningServices/stable/2024-04-01/mfe.json: `OnlineEndpoint` requires
`location` and `properties.authMode` (AMLToken | Key | AADToken); `OnlineDeployment`
requires `location` and `properties.endpointComputeType` (Managed | Kubernetes |
AzureMLCompute)). Registry assets are usable only in the regions the registry has
replicated them to (the registry's discovery lists its regions); a job that references a
component version not replicated to the workspace's region is refused with 400.

Every refusal is recorded in the state's `rejected` list, so a test can assert that a
whole rehearsal never sent such a request.
"""

from __future__ import annotations

import re
from typing import Any

from amlft.testing import seed
from amlft.testing.http import Reply, reply_error

AUTH_MODES = ("AMLToken", "Key", "AADToken")
COMPUTE_TYPES = ("Managed", "Kubernetes", "AzureMLCompute")
_COMPONENT_ID = re.compile(r"azureml://registries/(?P<registry>[^/]+)/components/(?P<name>[^/]+)/versions/(?P<version>[^/]+)")


def _refuse(st: dict[str, Any], what: str, message: str) -> Reply:
    st.setdefault("rejected", []).append(f"{what}: {message}")
    return reply_error(400, "UserError", message, details=[{"code": "ValidationError", "message": message}])


def _missing(body: dict[str, Any], paths: tuple[str, ...]) -> list[str]:
    out = []
    for path in paths:
        node: Any = body
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node in (None, ""):
            out.append(path)
    return out


def _check_put(st: dict[str, Any], what: str, body: dict[str, Any], enum_field: str,
               allowed: tuple[str, ...]) -> Reply | None:
    """The service's two refusals of an endpoint/deployment PUT: a required property missing, or
    `properties.<enum_field>` outside the spec's enum (compared case-insensitively, as the service does)."""
    missing = _missing(body, ("location", f"properties.{enum_field}"))
    if missing:
        return _refuse(st, what, f"The request is missing required properties: {', '.join(missing)}.")
    value = body["properties"][enum_field]
    if str(value).lower() not in (v.lower() for v in allowed):
        return _refuse(st, what, f"properties.{enum_field} '{value}' is not one of {', '.join(allowed)}.")
    return None


def check_endpoint(st: dict[str, Any], name: str, body: dict[str, Any]) -> Reply | None:
    return _check_put(st, f"PUT onlineEndpoints/{name}", body, "authMode", AUTH_MODES)


def check_deployment(st: dict[str, Any], key: str, body: dict[str, Any]) -> Reply | None:
    return _check_put(st, f"PUT deployments/{key}", body, "endpointComputeType", COMPUTE_TYPES)


def check_job_components(st: dict[str, Any], name: str, body: dict[str, Any]) -> Reply | None:
    """Each registry component the job uses must be replicated to the workspace's region."""
    for node in ((body.get("properties") or {}).get("jobs") or {}).values():
        m = _COMPONENT_ID.search(str((node or {}).get("componentId") or ""))
        if not m or m["registry"] != seed.REGISTRY_NAME:
            continue
        component = st["registry"]["components"].get(m["name"], {}).get(m["version"])
        regions = (component or {}).get("regions") or seed.REGISTRY_REGIONS
        if seed.LOCATION not in regions:
            return _refuse(st, f"PUT jobs/{name}", (
                f"Component {m['name']}:{m['version']} from registry '{m['registry']}' is not replicated to "
                f"region '{seed.LOCATION}' (it is in {', '.join(regions)}); registry assets can only be used "
                "in regions the registry has replicated them to."))
    return None
