"""The `azureml` system registry: discovery, models, components."""

from __future__ import annotations

from typing import Any

from amlft.testing import seed
from amlft.testing.http import FakeRequest, Reply, Router, reply_error, reply_json

REG_PREFIX = r"/mferp/managementfrontend/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/registries/(?P<registry>[^/]+)"


def discovery(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str) -> Reply:
    if registry != seed.REGISTRY_NAME:
        return reply_error(404, "RegistryNotFound", f"Registry {registry} not found.")
    return reply_json(200, {
        "registryName": registry,
        "tenantId": "22222222-2222-2222-2222-222222222222",
        "primaryRegion": seed.LOCATION,
        "regions": list(seed.REGISTRY_REGIONS),
        "subscriptionId": seed.REGISTRY_SUBSCRIPTION_ID,
        "resourceGroup": seed.REGISTRY_RESOURCE_GROUP,
        "workspaceName": None,
        "primaryRegionResourceProviderUri": f"https://cert-{seed.LOCATION}.experiments.azureml.net/",
        "registryFqdns": {seed.LOCATION: {"": f"{seed.LOCATION}.api.azureml.ms"}},
    })


def register(router: Router) -> None:
    router.add("GET", r"/registrymanagement/v1\.0/registries/(?P<registry>[^/]+)/discovery", discovery)
    register_assets(router)


def _retired(st: dict[str, Any], name: str) -> bool:
    """The `model_retired` fault retires the flagship too (Phi-3-mini is archived in the seed itself)."""
    return "model_retired" in st["faults"] and name == seed.FLAGSHIP_MODEL


def _versions_sorted(versions: dict[str, Any]) -> list[str]:
    def key(v: str) -> tuple[int, Any]:
        return (0, int(v)) if v.isdigit() else (1, v)

    return sorted(versions, key=key)


def _page(items: list[dict[str, Any]], req: FakeRequest) -> Reply:
    top = req.arg("$top")
    order = (req.arg("$orderBy") or req.arg("orderBy") or "").lower()
    if "desc" in order:
        items = list(reversed(items))
    if top:
        items = items[: int(top)]
    return reply_json(200, {"value": items, "nextLink": None})


def model_container(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str, name: str, **_: str) -> Reply:
    versions = st["registry"]["models"].get(name)
    if not versions:
        return reply_error(404, "UserError", f"Model container {name} not found in registry {registry}.")
    from amlft.testing.assets import container_json

    return reply_json(200, container_json("models", name, _versions_sorted(versions), registry=registry))


def model_versions(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str, name: str, **_: str) -> Reply:
    from amlft.testing.assets import registry_model_json

    versions = st["registry"]["models"].get(name, {})
    items = [registry_model_json(versions[v], retired=_retired(st, name)) for v in _versions_sorted(versions)]
    return _page(items, req)


def model_version(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str, name: str, version: str,
                  **_: str) -> Reply:
    from amlft.testing.assets import registry_model_json

    model = st["registry"]["models"].get(name, {}).get(version)
    if model is None:
        return reply_error(404, "UserError", f"Model {name}:{version} not found in registry {registry}.")
    return reply_json(200, registry_model_json(model, retired=_retired(st, name)))


def component_container(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str, name: str,
                        **_: str) -> Reply:
    from amlft.testing.assets import container_json

    versions = st["registry"]["components"].get(name)
    if not versions:
        return reply_error(404, "UserError", f"Component container {name} not found in registry {registry}.")
    return reply_json(200, container_json("components", name, _versions_sorted(versions), registry=registry))


def component_versions(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str, name: str,
                       **_: str) -> Reply:
    from amlft.testing.assets import component_json

    versions = st["registry"]["components"].get(name, {})
    return _page([component_json(versions[v]) for v in _versions_sorted(versions)], req)


def component_version(fake: Any, req: FakeRequest, st: dict[str, Any], registry: str, name: str, version: str,
                      **_: str) -> Reply:
    from amlft.testing.assets import component_json

    component = st["registry"]["components"].get(name, {}).get(version)
    if component is None:
        return reply_error(404, "UserError", f"Component {name}:{version} not found in registry {registry}.")
    return reply_json(200, component_json(component))


def register_assets(router: Router) -> None:
    for prefix in (REG_PREFIX, REG_PREFIX.replace("/mferp/managementfrontend", "")):
        router.add("GET", prefix + r"/models/(?P<name>[^/]+)", model_container)
        router.add("GET", prefix + r"/models/(?P<name>[^/]+)/versions", model_versions)
        router.add("GET", prefix + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", model_version)
        router.add("GET", prefix + r"/components/(?P<name>[^/]+)", component_container)
        router.add("GET", prefix + r"/components/(?P<name>[^/]+)/versions", component_versions)
        router.add("GET", prefix + r"/components/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", component_version)
