"""Managed online endpoints and deployments as long-running operations, their keys and
logs, and the scoring URI answering the Azure ML chat contract.

What the recordings show, and the fake does on its virtual clock (Azure/azure-sdk-assets,
python/sdk/ml/azure-ai-ml/tests/recordings/online_services/e2etests/):
- creating an endpoint answers 201 with `provisioningState: Creating` and `scoringUri: null`
  (test_online_endpoint.pyTestOnlineEndpointtest_online_endpoint_e2e.json); the URI appears
  once provisioning has Succeeded;
- every PUT/DELETE carries `Azure-AsyncOperation` + `Location` and
  `x-ms-async-operation-timeout: PT30M` (same recording);
- a traffic update is a PUT answered 201 that still shows the old traffic until the
  operation is done;
- creating a deployment takes about ten minutes
  (test_online_deployment.pyTestOnlineDeploymenttest_online_deployment_create.json).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from typing import Any

from amlft.testing import seed
from amlft.testing.assets import ARM, system_data, workspace_id
from amlft.testing.http import FAST_POLL, FakeRequest, Reply, Router, reply_empty, reply_error, reply_json
from amlft.testing.routes_jobs import new_operation, operation_url
from amlft.testing.routes_workspace import WS
from amlft.testing.validation import check_deployment, check_endpoint

ENDPOINT_TAKES = 240.0
DEPLOYMENT_TAKES = 600.0  # ~10 minutes, as in the recorded deployment create
CRASH_AFTER = 660.0  # the liveness probe gives up after its initial delay
DELETE_TAKES = 120.0
UPDATE_TAKES = 60.0
INFERENCE_HOST = r"\.inference\.ml\.azure\.com$"

CRASH_LOG = """\
2026-01-01T01:02:03,123 | root | INFO | Starting AzureML Inference Server (azureml-inference-server-http 1.3.2)
2026-01-01T01:02:05,456 | root | INFO | Loading model from /var/azureml-app/azureml-models/{model}
Traceback (most recent call last):
  File "/opt/miniconda/envs/userenv/lib/python3.10/site-packages/azureml_inference_server_http/server/user_script.py", line 132, in invoke_init
    self._wrapped_user_init()
  File "/var/azureml-app/score.py", line 41, in init
    model = mlflow.pyfunc.load_model(model_path)
  File "/opt/miniconda/envs/userenv/lib/python3.10/site-packages/transformers/modeling_utils.py", line 3850, in from_pretrained
    raise EnvironmentError(
OSError: Unable to load weights from pytorch checkpoint file for 'model.safetensors' at '/var/azureml-app/azureml-models/{model}/data/model'. \
If you tried to load a PyTorch model from a TF 2.0 checkpoint, please set from_tf=True.
azureml_inference_server_http.server.user_script.UserScriptException: Caught an unhandled exception from the user script
Worker exiting (pid: 87)
Shutting down: Master
Reason: Worker failed to boot.
"""
OK_LOG = """\
2026-01-01T01:02:03,123 | root | INFO | Starting AzureML Inference Server (azureml-inference-server-http 1.3.2)
2026-01-01T01:02:05,456 | root | INFO | Loading model from /var/azureml-app/azureml-models/{model}
2026-01-01T01:04:11,789 | root | INFO | Model loaded. Users's init has completed successfully
2026-01-01T01:04:11,790 | root | INFO | Scoring timeout is set to 90000
2026-01-01T01:04:12,001 | root | INFO | Listening at: http://0.0.0.0:31311
"""


def _alive(rec: dict[str, Any] | None, now: float) -> bool:
    return rec is not None and (rec.get("deleted_at") is None or now < rec["deleted_at"])


def _endpoint_state(ep: dict[str, Any], now: float) -> str:
    if ep.get("deleted_at") is not None:
        return "Deleting"
    if now < ep["ready_at"]:
        return "Creating" if ep.get("updates", 0) == 0 else "Updating"
    return "Succeeded"


def _deployment_state(dep: dict[str, Any], now: float) -> str:
    if dep.get("deleted_at") is not None:
        return "Deleting"
    if now < dep["ready_at"]:
        return "Creating" if dep.get("updates", 0) == 0 else "Updating"
    return "Failed" if dep.get("crash") else "Succeeded"


def scoring_uri(name: str) -> str:
    return f"https://{name}.{seed.LOCATION}.inference.ml.azure.com/score"


def traffic_of(ep: dict[str, Any], now: float) -> dict[str, int]:
    """The traffic in effect: a pending update applies only once its operation is done."""
    pending = ep.get("pending_traffic")
    if pending is not None and now >= float(ep.get("traffic_at") or 0):
        return dict(pending)
    return dict(ep.get("traffic") or {})


def _endpoint_json(name: str, ep: dict[str, Any], now: float) -> dict[str, Any]:
    body = ep["body"]
    props = dict(body.get("properties") or {})
    provisioned = now >= float(ep.get("provisioned_at", ep["ready_at"]))
    props.update({
        "provisioningState": _endpoint_state(ep, now),
        "scoringUri": scoring_uri(name) if provisioned else None,
        "swaggerUri": f"https://{name}.{seed.LOCATION}.inference.ml.azure.com/swagger.json" if provisioned else None,
        "authMode": props.get("authMode") or "Key",
        "traffic": traffic_of(ep, now),
        "mirrorTraffic": props.get("mirrorTraffic") or {},
        "publicNetworkAccess": props.get("publicNetworkAccess") or "Enabled",
        # the service always answers its own properties (test_online_endpoint_e2e.json)
        "properties": {**(props.get("properties") or {}),
                       "azureml.onlineendpointid": f"{workspace_id()}/onlineEndpoints/{name}".lower()},
    })
    return {
        "id": f"{workspace_id()}/onlineEndpoints/{name}",
        "name": name,
        "type": f"{ARM}/workspaces/onlineEndpoints",
        "location": body.get("location") or seed.LOCATION,
        "kind": "Managed",
        "tags": body.get("tags") or {},
        "identity": {"type": "SystemAssigned", "principalId": "55555555-5555-5555-5555-555555555555",
                     "tenantId": "22222222-2222-2222-2222-222222222222"},
        "systemData": system_data(ep["created"]),
        "properties": props,
    }


def _deployment_json(endpoint: str, name: str, dep: dict[str, Any], now: float) -> dict[str, Any]:
    body = dep["body"]
    props = dict(body.get("properties") or {})
    props["provisioningState"] = _deployment_state(dep, now)
    props.setdefault("endpointComputeType", "Managed")
    if not props.get("scaleSettings"):
        props["scaleSettings"] = {"scaleType": "Default"}
    return {
        "id": f"{workspace_id()}/onlineEndpoints/{endpoint}/deployments/{name}",
        "name": name,
        "type": f"{ARM}/workspaces/onlineEndpoints/deployments",
        "location": body.get("location") or seed.LOCATION,
        "kind": "Managed",
        "tags": body.get("tags") or {},
        "sku": body.get("sku") or {"name": "Default", "capacity": 1},
        "systemData": system_data(dep["created"]),
        "properties": props,
    }


def _lro_headers(op: str) -> dict[str, str]:
    return {"Azure-AsyncOperation": operation_url(op, "mfeOperationsStatus"),
            "Location": operation_url(op, "mfeOperationResults"), "x-ms-async-operation-timeout": "PT30M",
            **FAST_POLL}


# -- endpoints ----------------------------------------------------------------------------------------
def put_endpoint(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    body = req.json()
    refused = check_endpoint(st, name, body)
    if refused:
        return refused
    ep = st["endpoints"].get(name)
    now = st["clock"]
    if _alive(ep, now) and ep.get("deleted_at") is None:
        ep["body"] = {**ep["body"], **{k: v for k, v in body.items() if k != "properties"},
                      "properties": {**(ep["body"].get("properties") or {}), **(body.get("properties") or {})}}
        new_traffic = (body.get("properties") or {}).get("traffic")
        if new_traffic is not None:
            unknown = [d for d in new_traffic if not _alive(st["deployments"].get(f"{name}/{d}"), now)]
            if unknown:
                return reply_error(400, "BadArgument",
                                   f"Traffic for endpoint {name} names deployments that do not exist: {unknown}.")
            if sum(int(v) for v in new_traffic.values()) not in (0, 100):
                return reply_error(400, "BadArgument", "Traffic percentages must add up to 0 or 100.")
            ep["traffic"] = traffic_of(ep, now)  # an earlier pending update may have landed
            ep["pending_traffic"] = {k: int(v) for k, v in new_traffic.items()}
            ep["traffic_at"] = now + UPDATE_TAKES
        ep["updates"] = ep.get("updates", 0) + 1
        ep["ready_at"] = max(ep["ready_at"], now + UPDATE_TAKES)
        op = new_operation(fake, st, kind="endpoint_update", target=name, takes=ep["ready_at"] - now)
        return reply_json(201, _endpoint_json(name, ep, now), _lro_headers(op))
    taken = name in st.get("taken_endpoint_names", []) or "endpoint_name_taken" in st["faults"]
    if taken:
        return reply_error(
            409, "Conflict",
            f"An online endpoint named '{name}' already exists in region '{seed.LOCATION}'. Endpoint names must "
            "be unique within an Azure region (across all subscriptions); choose a different endpoint name.")
    if (body.get("properties") or {}).get("traffic"):
        return reply_error(400, "BadArgument", "Traffic cannot be set before the endpoint has deployments.")
    st["endpoints"][name] = {
        "body": body, "created": now, "ready_at": now + ENDPOINT_TAKES, "provisioned_at": now + ENDPOINT_TAKES,
        "traffic": {}, "deleted_at": None,
        "keys": {"primaryKey": _key(name, "primary", now), "secondaryKey": _key(name, "secondary", now)},
    }
    op = new_operation(fake, st, kind="endpoint_create", target=name, takes=ENDPOINT_TAKES)
    return reply_json(201, _endpoint_json(name, st["endpoints"][name], now), _lro_headers(op))


def _key(name: str, which: str, now: float) -> str:
    return hashlib.sha256(f"amlft-fake/{name}/{which}/{now}".encode()).hexdigest()[:32]


def get_endpoint(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    ep = st["endpoints"].get(name)
    if not _alive(ep, st["clock"]):
        return reply_error(404, "UserError", f"Online endpoint {name} not found in workspace {ws}.")
    return reply_json(200, _endpoint_json(name, ep, st["clock"]))


def list_endpoints(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str) -> Reply:
    now = st["clock"]
    items = [_endpoint_json(n, ep, now) for n, ep in sorted(st["endpoints"].items()) if _alive(ep, now)]
    return reply_json(200, {"value": items, "nextLink": None})


def delete_endpoint(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str,
                    name: str) -> Reply:
    now = st["clock"]
    ep = st["endpoints"].get(name)
    if not _alive(ep, now):
        return reply_empty(204)
    if ep.get("deleted_at") is None:
        ep["deleted_at"] = now + DELETE_TAKES
        for key, dep in st["deployments"].items():
            if key.startswith(name + "/") and dep.get("deleted_at") is None:
                dep["deleted_at"] = now + DELETE_TAKES
    op = new_operation(fake, st, kind="endpoint_delete", target=name, takes=ep["deleted_at"] - now)
    return reply_empty(202, _lro_headers(op))


def list_keys(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    ep = st["endpoints"].get(name)
    if not _alive(ep, st["clock"]):
        return reply_error(404, "UserError", f"Online endpoint {name} not found in workspace {ws}.")
    return reply_json(200, ep["keys"])


# -- deployments ----------------------------------------------------------------------------------------
def _quota_error(instance_type: str, count: int) -> Reply:
    vcpus = seed.VM_SIZES.get(instance_type, ("", 4, 0, 0))[1]
    family = seed.VM_SIZES.get(instance_type, ("standardFamily",))[0]
    limit = seed.QUOTA.get(family, (0, 24))[1]
    # Managed online endpoints reserve 20% extra capacity for upgrades.
    needed = math.ceil(vcpus * count * 1.2)
    message = (f"Not enough quota available for {instance_type} in SubscriptionId {seed.SUBSCRIPTION_ID}. "
               f"Current usage/limit: {limit}/{limit}. Additional needed: {needed} Please see troubleshooting "
               "guide, available here: https://aka.ms/oe-tsg#error-outofquota")
    return reply_error(400, "OutOfQuota", message)


def put_deployment(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, endpoint: str,
                   name: str) -> Reply:
    now = st["clock"]
    ep = st["endpoints"].get(endpoint)
    if not _alive(ep, now) or ep.get("deleted_at") is not None:
        return reply_error(404, "UserError", f"Online endpoint {endpoint} not found in workspace {ws}.")
    if _endpoint_state(ep, now) != "Succeeded":
        return reply_error(409, "Conflict", f"Endpoint {endpoint} is still {_endpoint_state(ep, now)}; retry when "
                           "its provisioning has finished.")
    body = req.json()
    refused = check_deployment(st, f"{endpoint}/{name}", body)
    if refused:
        return refused
    props = body.get("properties") or {}
    instance_type = props.get("instanceType") or "Standard_DS3_v2"
    count = int((body.get("sku") or {}).get("capacity") or 1)
    if instance_type not in seed.VM_SIZES:
        return reply_error(400, "BadArgument", f"Instance type {instance_type} is not supported for managed "
                           f"online endpoints in {seed.LOCATION}.")
    if "deployment_quota" in st["faults"]:
        return _quota_error(instance_type, count)
    key = f"{endpoint}/{name}"
    existing = st["deployments"].get(key)
    if _alive(existing, now) and existing.get("deleted_at") is None:
        existing["body"] = body
        existing["updates"] = existing.get("updates", 0) + 1
        existing["ready_at"] = now + UPDATE_TAKES
        op = new_operation(fake, st, kind="deployment_update", target=key, takes=UPDATE_TAKES)
        return reply_json(200, _deployment_json(endpoint, name, existing, now), _lro_headers(op))
    crash = "container_crash" in st["faults"]
    takes = CRASH_AFTER if crash else DEPLOYMENT_TAKES
    st["deployments"][key] = {"body": body, "created": now, "ready_at": now + takes, "deleted_at": None,
                              "crash": crash, "model": props.get("model")}
    error = None
    if crash:
        error = {"code": "ResourceNotReady",
                 "message": (f"User container has crashed or terminated. Deployment {name} of endpoint {endpoint} "
                             "failed: the liveness probe failed after the initial delay and the container "
                             "restarted 3 times. Please see troubleshooting guide, available here: "
                             "https://aka.ms/oe-tsg#error-resourcenotready")}
    op = new_operation(fake, st, kind="deployment_create", target=key, takes=takes, error=error)
    return reply_json(201, _deployment_json(endpoint, name, st["deployments"][key], now), _lro_headers(op))


def get_deployment(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, endpoint: str,
                   name: str) -> Reply:
    dep = st["deployments"].get(f"{endpoint}/{name}")
    if not _alive(dep, st["clock"]):
        return reply_error(404, "UserError", f"Deployment {name} not found for endpoint {endpoint}.")
    return reply_json(200, _deployment_json(endpoint, name, dep, st["clock"]))


def list_deployments(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str,
                     endpoint: str) -> Reply:
    now = st["clock"]
    items = [_deployment_json(endpoint, key.split("/", 1)[1], dep, now)
             for key, dep in sorted(st["deployments"].items())
             if key.startswith(endpoint + "/") and _alive(dep, now)]
    return reply_json(200, {"value": items, "nextLink": None})


def delete_deployment(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, endpoint: str,
                      name: str) -> Reply:
    now = st["clock"]
    key = f"{endpoint}/{name}"
    dep = st["deployments"].get(key)
    if not _alive(dep, now):
        return reply_empty(204)
    ep = st["endpoints"].get(endpoint)
    share = traffic_of(ep, now).get(name) if ep else None
    if share:
        return reply_error(400, "BadArgument", f"Deployment {name} still receives {share}% of the "
                           f"traffic of endpoint {endpoint}; set its traffic to 0 first.")
    if dep.get("deleted_at") is None:
        dep["deleted_at"] = now + DELETE_TAKES
    op = new_operation(fake, st, kind="deployment_delete", target=key, takes=dep["deleted_at"] - now)
    return reply_empty(202, _lro_headers(op))


def get_logs(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, endpoint: str,
             name: str) -> Reply:
    dep = st["deployments"].get(f"{endpoint}/{name}")
    if not _alive(dep, st["clock"]):
        return reply_error(404, "UserError", f"Deployment {name} not found for endpoint {endpoint}.")
    model = str(dep.get("model") or "model").rsplit("/models/", 1)[-1].replace("/versions/", "/")
    text = (CRASH_LOG if dep.get("crash") else OK_LOG).format(model=model)
    tail = req.json().get("tail")
    if tail:
        text = "\n".join(text.rstrip("\n").split("\n")[-int(tail):]) + "\n"
    return reply_json(200, {"content": text})


# -- scoring -----------------------------------------------------------------------------------------------
# Scoring errors as managed online endpoints answer them ("Troubleshoot online endpoint deployment and
# scoring", HTTP status codes: https://learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-online-endpoints
# #http-status-codes): 401 bad key, 404 no deployment takes traffic, 408 request_timeout_ms exceeded,
# 424 model container error (with ms-azureml-model-error-statuscode/-reason), 429 past
# 2 x max_concurrent_requests_per_instance x instances in flight. Every answer carries x-request-id.
def _scoring_error(status: int, message: str, request_id: str, extra: dict[str, str] | None = None) -> Reply:
    return status, {"Content-Type": "application/json", "x-request-id": request_id, **(extra or {})}, json.dumps(
        {"message": message})


def _in_flight_limit(dep: dict[str, Any]) -> int:
    props = dep["body"].get("properties") or {}
    per_instance = int((props.get("requestSettings") or {}).get("maxConcurrentRequestsPerInstance") or 1)
    instances = int((dep["body"].get("sku") or {}).get("capacity") or 1)
    return 2 * per_instance * instances


def _throttled(st: dict[str, Any], key: str, dep: dict[str, Any]) -> bool:
    """Requests that arrive at the same virtual instant are in flight together (the clock does not
    move while scoring), so the (limit+1)-th of a burst is over the limit."""
    burst = st.setdefault("score_bursts", {}).get(key)
    if burst is None or burst["clock"] != st["clock"]:
        burst = {"clock": st["clock"], "count": 0}
    burst["count"] += 1
    st["score_bursts"][key] = burst
    return bool(burst["count"] > _in_flight_limit(dep))


def score(fake: Any, req: FakeRequest, st: dict[str, Any]) -> Reply:
    name = req.host.split(".", 1)[0]
    now = st["clock"]
    request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"amlft-fake/score/{fake.next_seq(st)}"))
    ep = st["endpoints"].get(name)
    if not _alive(ep, now) or ep.get("deleted_at") is not None:
        return _scoring_error(404, f"No online endpoint named {name} (rehearsal fake).", request_id)
    auth = req.headers.get("authorization", "")
    if auth not in (f"Bearer {ep['keys']['primaryKey']}", f"Bearer {ep['keys']['secondaryKey']}"):
        return _scoring_error(401, "Unauthorized: a valid endpoint key is required (Authorization: Bearer <key>).",
                              request_id)
    chosen = req.headers.get("azureml-model-deployment")
    live = {d: p for d, p in traffic_of(ep, now).items() if p > 0}
    if chosen is None:
        if not live:
            return _scoring_error(404, "No valid deployments to route to. Please check that the endpoint has at "
                                       "least one deployment with positive weight values or use a deployment "
                                       "specific header to route.", request_id)
        chosen = max(live, key=lambda d: live[d])
    dep = st["deployments"].get(f"{name}/{chosen}")
    if not _alive(dep, now) or _deployment_state(dep, now) != "Succeeded":
        return _scoring_error(404, f"Deployment {chosen} of endpoint {name} is not ready.", request_id)
    if "scoring_throttled" in st["faults"] and _throttled(st, f"{name}/{chosen}", dep):
        return _scoring_error(429, "Too many requests: the deployment already has "
                                   f"{_in_flight_limit(dep)} requests in flight.", request_id)
    if "scoring_timeout" in st["faults"]:
        timeout_ms = ((dep["body"].get("properties") or {}).get("requestSettings") or {}).get("requestTimeout")
        return _scoring_error(408, f"Request timed out after {timeout_ms or 'PT5S'} (request_timeout_ms).", request_id)
    if "model_error" in st["faults"]:
        return _scoring_error(424, "An error occurred in the model container while scoring.", request_id,
                              {"ms-azureml-model-error-statuscode": "500",
                               "ms-azureml-model-error-reason": "torch.OutOfMemoryError: CUDA out of memory"})
    from amlft.serving import ContractError, parse_azureml_request

    try:
        messages, params = parse_azureml_request(req.json())
    except (ValueError, ContractError) as exc:  # the same contract checks as a real chat image
        return _scoring_error(400, f"Bad request for the Azure ML chat contract: {exc}", request_id)
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    answer = (f"[rehearsal] This answer comes from the amlft in-process Azure ML fake (endpoint {name}, "
              f"deployment {chosen}), not from a real model. You asked: {str(last_user)[:120]!r}")
    max_new = params.get("max_new_tokens")
    if isinstance(max_new, int) and max_new > 0:
        answer = " ".join(answer.split(" ")[: max(max_new, 12)])
    return 200, {"Content-Type": "application/json", "azureml-model-deployment": chosen,
                 "x-request-id": request_id}, json.dumps({"output": answer})


def register(router: Router) -> None:
    ep = WS + r"/onlineEndpoints/(?P<name>[^/]+)"
    router.add("GET", WS + r"/onlineEndpoints", list_endpoints)
    router.add("PUT", ep, put_endpoint)
    router.add("GET", ep, get_endpoint)
    router.add("DELETE", ep, delete_endpoint)
    router.add("POST", ep + r"/listKeys", list_keys)
    dep = WS + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments"
    router.add("GET", dep, list_deployments)
    router.add("PUT", dep + r"/(?P<name>[^/]+)", put_deployment)
    router.add("GET", dep + r"/(?P<name>[^/]+)", get_deployment)
    router.add("DELETE", dep + r"/(?P<name>[^/]+)", delete_deployment)
    router.add("POST", dep + r"/(?P<name>[^/]+)/getLogs", get_logs)
    router.add("POST", r"/score", score, host=INFERENCE_HOST)
