"""Managed online endpoint + deployment: create early, deploy, explain failures, tear down.

The endpoint is started right after the job is submitted (it takes minutes and costs
nothing without a deployment), so after training only the deployment is left. Every
endpoint carries `amlft-run-id` / `amlft-created-at` tags: teardown deletes only an
endpoint whose tag names this run (never one that merely has the same name), and the
stale sweep finds leaked ones by those tags.
"""

from __future__ import annotations

import time
from typing import Any

from amlft.backends.azure.service import call
from amlft.backends.azure.session import AzureSession
from amlft.config import Profile
from amlft.console import Console
from amlft.errors import AmlftError, DeploymentError, ServiceError
from amlft.extras import needs_extra
from amlft.records import RunRecord, now_iso

TAG_RUN = "amlft-run-id"
TAG_CREATED = "amlft-created-at"
EP_KIND = "azureml.online_endpoint"
DEP_KIND = "azureml.online_deployment"
LOG_LINES = 60


def begin_endpoint(sess: AzureSession, record: RunRecord, name: str, *, console: Console) -> None:
    """Start creating the run's endpoint (recorded first); does not wait for it."""
    with needs_extra("azure", purpose="Azure online endpoints"):
        from azure.ai.ml.entities import ManagedOnlineEndpoint

    existing = [r for r in record.resources(EP_KIND, live_only=True) if r["name"] == name]
    if existing:
        return
    created_at = now_iso()
    record.add_resource(EP_KIND, name, state="creating", billable=True)
    ep = ManagedOnlineEndpoint(name=name, auth_mode="key", description=f"amlft run {record.run_id}",
                               tags={TAG_RUN: record.run_id, TAG_CREATED: created_at})
    try:
        call(f"Creating endpoint {name}", sess.ws.online_endpoints.begin_create_or_update, ep,
             hint="Endpoint names are unique per Azure region: set endpoint.name to another name.")
    except ServiceError as exc:
        # Refused: nothing of ours exists under that name, so teardown must not touch it.
        record.update_resource(EP_KIND, name, state="deleted", refused=True, error=exc.message[:500])
        raise
    console.info(f"endpoint {name}: creating in the background while training runs")


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s"


def wait_lro(sess: AzureSession, poller: Any, what: str, *, console: Console, timeout_s: float,
             resume: str, delete: str) -> Any:
    """Wait for a long-running operation, showing its state and the time elapsed, bounded by
    `timeout_s` (the profile's endpoint.operation_timeout_s). Ctrl-C stops waiting, not the
    operation, and says so."""
    started = time.monotonic()
    last = ""
    try:
        while not poller.done():
            # call(): a failed operation raises here, translated; and the SDK's polling thread,
            # which prints a progress dot per poll, cannot reach stdout (--json) meanwhile
            call(what, poller.wait, timeout=sess.poll_interval_s)
            state = str(poller.status())
            elapsed = time.monotonic() - started
            if state != last:
                console.info(f"  [{_elapsed(elapsed)}] {what}: {state}")
                last = state
            if not poller.done() and elapsed >= timeout_s:
                raise DeploymentError(
                    f"{what} is still {state} after {_elapsed(elapsed)} (endpoint.operation_timeout_s={timeout_s:g}); "
                    "it continues in Azure.", hint=f"Wait for it: {resume}; or delete it: {delete}")
    except KeyboardInterrupt:
        console.warn(f"stopped waiting; {what} continues in Azure (an endpoint with a deployment bills).")
        console.warn(f"  resume: {resume}")
        console.warn(f"  delete: {delete}")
        raise
    return call(what, poller.result)


def wait_endpoint(sess: AzureSession, name: str, *, console: Console, timeout_s: float, resume: str,
                  delete: str, traffic: dict[str, int] | None = None) -> Any:
    """Poll the endpoint until it is provisioned (and, with `traffic`, routes it): the process that
    started the operation may be long gone, so this reads the resource, not a poller."""
    started = time.monotonic()
    last = ""
    try:
        while True:
            ep = call(f"Reading endpoint {name}", sess.ws.online_endpoints.get, name)
            raw = getattr(ep, "provisioning_state", "") or ""
            state = str(getattr(raw, "value", raw))
            elapsed = time.monotonic() - started
            if state != last:
                console.info(f"  [{_elapsed(elapsed)}] endpoint {name}: {state}")
                last = state
            routed = traffic is None or {k: int(v) for k, v in (ep.traffic or {}).items() if int(v)} == traffic
            if state.lower() == "succeeded" and routed:
                return ep
            if state.lower() in ("failed", "canceled"):
                raise DeploymentError(f"Endpoint {name} ended in provisioning state {state}.",
                                      hint=f"See the endpoint's activity log in the Azure portal; {delete} cleans up.")
            if elapsed > timeout_s:
                raise DeploymentError(f"Endpoint {name} is still {state} after {_elapsed(elapsed)} "
                                      f"(endpoint.operation_timeout_s={timeout_s:g}); it continues in Azure.",
                                      hint=f"Wait for it: {resume}; or delete it: {delete}")
            time.sleep(sess.poll_interval_s)
    except KeyboardInterrupt:
        console.warn(f"stopped waiting; endpoint {name} continues provisioning in Azure.")
        console.warn(f"  resume: {resume}")
        console.warn(f"  delete: {delete}")
        raise


def owned_by(ep: Any, run_id: str) -> bool:
    return (getattr(ep, "tags", None) or {}).get(TAG_RUN) == run_id


def deploy(sess: AzureSession, record: RunRecord, prof: Profile, *, endpoint_name: str, model_ref: str,
           console: Console, keep_on_failure: bool) -> dict[str, Any]:
    """Deployment + 100% traffic. On failure: log tail, delete what this run created, raise."""
    with needs_extra("azure", purpose="Azure online endpoints"):
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

    e = prof.endpoint
    if not record.resources(EP_KIND, live_only=True):
        begin_endpoint(sess, record, endpoint_name, console=console)
    resume, delete = f"amlft deploy --run {record.run_id}", f"amlft teardown --run {record.run_id}"
    limit = float(e.operation_timeout_s)
    ep = wait_endpoint(sess, endpoint_name, console=console, timeout_s=limit, resume=resume, delete=delete)
    if not owned_by(ep, record.run_id):
        raise DeploymentError(f"Endpoint {endpoint_name} exists but was not created by run {record.run_id}.",
                              hint="Set endpoint.name to a name of your own.")
    record.update_resource(EP_KIND, endpoint_name, state="created")
    dep_key = f"{endpoint_name}/{e.deployment_name}"
    record.add_resource(DEP_KIND, dep_key, endpoint=endpoint_name, deployment=e.deployment_name,
                        instance_type=e.instance_type, instance_count=e.instance_count, billable=True, state="creating")
    dep = ManagedOnlineDeployment(
        name=e.deployment_name, endpoint_name=endpoint_name, model=model_ref,
        instance_type=e.instance_type, instance_count=e.instance_count,
        liveness_probe=ProbeSettings(initial_delay=e.liveness_initial_delay_s),
        request_settings=OnlineRequestSettings(request_timeout_ms=e.request_timeout_ms,
                                               max_concurrent_requests_per_instance=e.max_concurrent_requests_per_instance),
    )
    console.info(f"deploying {model_ref} to {endpoint_name}/{e.deployment_name} "
                 f"({e.instance_count} x {e.instance_type}); this takes 10-20 minutes on Azure")
    try:
        poller = call(f"Creating deployment {dep_key}", sess.ws.online_deployments.begin_create_or_update, dep)
        wait_lro(sess, poller, f"deployment {dep_key}", console=console, timeout_s=limit, resume=resume,
                 delete=delete)
    except AmlftError as exc:
        logs = deployment_logs(sess, endpoint_name, e.deployment_name)
        if logs:
            console.error(f"deployment {dep_key} failed; last {LOG_LINES} log lines:\n{logs}")
        if keep_on_failure:
            console.warn(f"--keep-on-failure: leaving {endpoint_name} in place (it bills); "
                         f"`amlft teardown --run {record.run_id}` removes it")
        else:
            delete_endpoint(sess, record, endpoint_name, console=console, timeout_s=limit)
        raise DeploymentError(exc.message,
                              hint=_deploy_hint(exc.message) + (" The endpoint was deleted." if not keep_on_failure else "")) from exc
    record.update_resource(DEP_KIND, dep_key, state="created")
    want = {e.deployment_name: 100}
    ep.traffic = want
    poller = call(f"Routing traffic on {endpoint_name}", sess.ws.online_endpoints.begin_create_or_update, ep)
    wait_lro(sess, poller, f"traffic update on {endpoint_name}", console=console, timeout_s=limit, resume=resume,
             delete=delete)
    # The scoring URI is only read once the endpoint has Succeeded and routes the new traffic:
    # while it provisions the service answers scoringUri null, and old traffic until the update lands.
    ep = wait_endpoint(sess, endpoint_name, console=console, timeout_s=limit, resume=resume, delete=delete,
                       traffic=want)
    if not ep.scoring_uri:
        raise DeploymentError(f"Endpoint {endpoint_name} has Succeeded but reports no scoring URI.",
                              hint=f"Retry `{resume}`; if it persists, open the endpoint in Azure ML studio.")
    console.info(f"endpoint {endpoint_name} serves {e.deployment_name} (100% traffic): {ep.scoring_uri}")
    return {"endpoint_name": endpoint_name, "deployment_name": e.deployment_name, "scoring_uri": ep.scoring_uri,
            "openai_base_url": None, "contract": "azureml"}


def _deploy_hint(message: str) -> str:
    low = message.lower()
    if "quota" in low:
        return ("Not enough quota for the endpoint's instances: request more (Azure portal > Quotas), lower "
                "endpoint.instance_count, or pick another endpoint.instance_type from the model's inference allow-list.")
    if "crash" in low or "liveness" in low or "container" in low:
        return "The scoring container did not start: read the log tail above (model load errors, out of memory)."
    return "Read the log tail above; `amlft deploy --keep-on-failure` keeps the endpoint for debugging."


def deployment_logs(sess: AzureSession, endpoint_name: str, deployment_name: str) -> str:
    """The deployment's log tail, or "" when even that cannot be read (the failure itself is reported)."""
    try:
        text = call(f"Reading the logs of deployment {endpoint_name}/{deployment_name}",
                    sess.ws.online_deployments.get_logs, deployment_name, endpoint_name, LOG_LINES)
    except AmlftError:
        return ""
    return "\n".join(str(text or "").rstrip().splitlines()[-LOG_LINES:])


def delete_endpoint(sess: AzureSession, record: RunRecord, name: str, *, console: Console,
                    timeout_s: float = 1800.0) -> str:
    """Delete the run's endpoint (and so its deployments). Idempotent; never deletes someone else's."""
    try:
        ep = call(f"Reading endpoint {name}", sess.ws.online_endpoints.get, name)
    except ServiceError as exc:
        if exc.status == 404:
            _mark_gone(record, name)
            return "already gone"
        raise
    if not owned_by(ep, record.run_id):
        _mark_gone(record, name)
        console.warn(f"endpoint {name} belongs to someone else (tag {TAG_RUN}={(ep.tags or {}).get(TAG_RUN)}); left alone")
        return "not ours"
    try:
        poller = call(f"Deleting endpoint {name}", sess.ws.online_endpoints.begin_delete, name=name)
        wait_lro(sess, poller, f"deletion of endpoint {name}", console=console, timeout_s=timeout_s,
                 resume=f"amlft teardown --run {record.run_id}", delete=f"amlft teardown --run {record.run_id}")
    except ServiceError as exc:
        if exc.status != 404:
            raise
    _mark_gone(record, name)
    console.info(f"deleted endpoint {name} (billing for it stops)")
    return "deleted"


def _mark_gone(record: RunRecord, name: str) -> None:
    record.mark_deleted(EP_KIND, name)
    for r in record.resources(DEP_KIND, live_only=True):
        if r.get("endpoint") == name:
            record.mark_deleted(DEP_KIND, r["name"])


def endpoint_alive(sess: AzureSession, name: str) -> bool:
    try:
        call(f"Reading endpoint {name}", sess.ws.online_endpoints.get, name)
    except ServiceError as exc:
        if exc.status == 404:
            return False
        raise
    return True
