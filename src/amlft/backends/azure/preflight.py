"""`check` for Azure: everything that can fail hours into a run, asked before anything bills.

All problems are collected (never stop at the first), each with its fix. The facts
gathered on the way (resolved model version, cluster SKU, GPUs per node, effective
fine-tune parameters) are returned so `submit` builds exactly what was checked.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

from amlft.backends.azure import names, pipeline, skus
from amlft.backends.azure.service import call, is_not_found, translate
from amlft.backends.azure.session import AzureSession
from amlft.config import Profile
from amlft.errors import AmlftError

# Chat models in the azureml registry that fine-tune with chat_completion_pipeline;
# offered (when they exist) instead of a retired model.
SUCCESSORS = ("Phi-4-mini-instruct", "Phi-3.5-mini-instruct", "Phi-4", "Meta-Llama-3.1-8B-Instruct",
              "Mistral-7B-Instruct-v0.3")
_RETIRE_KEY = re.compile(r"(?i)(retire|deprecat)")


def finding(severity: str, check: str, message: str, fix: str = "") -> dict[str, Any]:
    return {"severity": severity, "check": check, "message": message, "fix": fix}


@dataclass
class Facts:
    model: Any = None
    model_asset_id: str | None = None
    component: Any = None
    component_inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster_sku: str | None = None
    gpus_per_node: int | None = None
    parameters: pipeline.MergedParameters | None = None
    endpoint_name: str | None = None


# ------------------------------------------------------------------ model
def get_model(sess: AzureSession, prof: Profile) -> Any:
    m = prof.model
    if m.version:
        return call(f"Reading model {m.name}:{m.version} from registry {sess.registry_name}",
                    sess.reg.models.get, m.name, version=str(m.version))
    return call(f"Reading model {m.name}@{m.label or 'latest'} from registry {sess.registry_name}",
                sess.reg.models.get, m.name, label=m.label or "latest")


def retirement(model: Any, *, today: _dt.date | None = None) -> str | None:
    """Why this model can no longer be fine-tuned, or None."""
    today = today or _dt.date.today()
    stage = str(getattr(model, "stage", "") or "")
    meta: dict[str, Any] = {}
    for src in (getattr(model, "properties", None), getattr(model, "_system_metadata", None),
                getattr(model, "tags", None)):
        if isinstance(src, dict):
            meta.update(src)
    dates = []
    for key, value in meta.items():
        if _RETIRE_KEY.search(str(key)) and value:
            try:
                d = _dt.date.fromisoformat(str(value)[:10])
            except ValueError:
                continue
            if d <= today:
                dates.append((d, key))
    if stage.lower() == "archived":
        when = f" (fine-tuning retired on {min(dates)[0].isoformat()})" if dates else ""
        return f"is archived{when}"
    if dates:
        d, key = min(dates)
        return f"passed its {key.replace('_', ' ')} on {d.isoformat()}"
    return None


def suggest_models(sess: AzureSession, exclude: str) -> list[str]:
    found = []
    for name in SUCCESSORS:
        if name == exclude:
            continue
        try:
            m = sess.reg.models.get(name, label="latest")
        except Exception:
            continue
        if retirement(m) is None:
            found.append(name)
    return found


def finetune_allow_list(model: Any) -> list[str] | None:
    """The model's fine-tune SKU allow-list: the tag, else system metadata; None when it has neither."""
    tags = getattr(model, "tags", None) or {}
    if tags.get("finetune_compute_allow_list"):
        return skus.parse_sku_list(tags["finetune_compute_allow_list"])
    meta = getattr(model, "_system_metadata", None) or {}
    for key in ("finetune_compute_allow_list", "finetuneComputeAllowList", "finetune_sku_list",
                "azureml.finetune_compute_allow_list"):
        if isinstance(meta, dict) and meta.get(key):
            return skus.parse_sku_list(meta[key])
    return None


def inference_allow_list(model: Any) -> list[str] | None:
    tags = getattr(model, "tags", None) or {}
    if tags.get("inference_compute_allow_list"):
        return skus.parse_sku_list(tags["inference_compute_allow_list"])
    meta = getattr(model, "_system_metadata", None) or {}
    for key in ("inference_compute_allow_list", "inferenceComputeAllowList", "inference_sku_list"):
        if isinstance(meta, dict) and meta.get(key):
            return skus.parse_sku_list(meta[key])
    return None


def finetune_sku_problem(sku: str, allow: list[str] | None) -> str | None:
    if allow:
        if not skus.sku_allowed(sku, allow):
            return f"{sku} is not in the model's fine-tune allow-list ({', '.join(allow)})"
        return None
    if skus.normalize(sku).lower() in skus.K80_SKUS:
        return f"{sku} is a retired Tesla K80 size; fine-tuning needs a newer GPU"
    return None


# ------------------------------------------------------------------ component
def get_component(sess: AzureSession, prof: Profile) -> Any:
    p = prof.pipeline
    if p.version:
        return call(f"Reading component {p.component}:{p.version}", sess.reg.components.get,
                    p.component, version=p.version)
    return call(f"Reading component {p.component}@{p.label or 'latest'}", sess.reg.components.get,
                p.component, label=p.label or "latest")


def endpoint_name(ctx_record_run_id: str, prof: Profile) -> str:
    return prof.endpoint.name or names.endpoint_name_for_run(ctx_record_run_id)


# ------------------------------------------------------------------ the checks
def run_checks(sess: AzureSession, prof: Profile, *, run_id: str) -> tuple[list[dict[str, Any]], Facts]:
    out: list[dict[str, Any]] = []
    facts = Facts()

    def guard(check: str, fix: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AmlftError as exc:
            out.append(finding("error", check, exc.message, exc.hint or fix))
        except Exception as exc:
            err = translate(exc, check)
            if err is None:
                raise
            out.append(finding("error", check, err.message, err.hint or fix))
        return None

    # model -------------------------------------------------------------
    m = prof.model
    ref = f"{m.name}" + (f":{m.version}" if m.version else f"@{m.label or 'latest'}")
    try:
        model = get_model(sess, prof)
    except AmlftError as exc:
        model = None
        if getattr(exc, "status", None) == 404:
            out.append(finding("error", "model", f"Model {ref} is not in registry '{sess.registry_name}'.",
                               "Check model.name/version/label against the Azure ML model catalog."))
        else:
            out.append(finding("error", "model", exc.message, exc.hint or ""))
    if model is not None:
        facts.model = model
        facts.model_asset_id = str(model.id) if getattr(model, "id", None) else pipeline.model_asset_id(
            sess.registry_name, m.name, version=str(model.version), label=None)
        why = retirement(model)
        if why:
            alts = suggest_models(sess, m.name)
            out.append(finding("error", "model", f"Model {m.name}:{model.version} {why}; it can no longer be fine-tuned.",
                               ("Pick another model, e.g. " + " or ".join(f"--set model.name={a}" for a in alts[:3])
                                if alts else "Pick another chat model that supports fine-tuning in the model catalog.")
                               + " (and set model.version/label to match)"))

    # component + parameters -------------------------------------------------
    component = guard("component", "Check pipeline.component/version/label.", get_component, sess, prof)
    snapshot = pipeline.load_snapshot()["inputs"]
    if component is not None:
        facts.component = component
        facts.component_inputs = pipeline.inputs_from_component(component) or snapshot
        added = sorted(set(facts.component_inputs) - set(snapshot))
        removed = sorted(set(snapshot) - set(facts.component_inputs))
        if added or removed:
            out.append(finding("info", "component",
                               f"{prof.pipeline.component} {getattr(component, 'version', '')} differs from the pinned "
                               f"{pipeline.SNAPSHOT_VERSION} interface: added {added or 'none'}, removed {removed or 'none'}.",
                               "Review your finetune: keys; pin pipeline.version for reproducible runs."))
    else:
        facts.component_inputs = snapshot
    tags = (getattr(model, "tags", None) or {}) if model is not None else {}
    merged = pipeline.merge_parameters(prof.finetune, tags.get("model_specific_defaults"), facts.component_inputs)
    facts.parameters = merged
    for e in merged.errors:
        out.append(finding("error", "finetune", e, "Use the component's input names and types (see --dry-run --export)."))
    if merged.dropped:
        out.append(finding("warning", "finetune",
                           f"The model's defaults {', '.join(merged.dropped)} are not inputs of "
                           f"{prof.pipeline.component}; they are dropped.", ""))

    # cluster ---------------------------------------------------------------
    cluster = prof.compute.cluster
    compute = None
    if not cluster:
        out.append(finding("error", "cluster", "No fine-tune cluster configured.",
                           "Set compute.cluster to an Azure ML compute cluster (AmlCompute) name."))
    else:
        try:
            compute = call(f"Reading compute cluster {cluster}", sess.ws.compute.get, cluster)
        except AmlftError as exc:
            if getattr(exc, "status", None) == 404 or is_not_found(exc):
                sku = prof.compute.instance_type or "Standard_NC24ads_A100_v4"
                out.append(finding("error", "cluster", f"Compute cluster {cluster!r} does not exist in workspace "
                                   f"{sess.workspace_name}.",
                                   f"az ml compute create --name {cluster} --type amlcompute --size {sku} "
                                   "--min-instances 0 --max-instances 2 (or fix compute.cluster)"))
            else:
                out.append(finding("error", "cluster", exc.message, exc.hint or ""))
    if compute is not None:
        raw = getattr(compute, "provisioning_state", "") or ""
        state = str(getattr(raw, "value", raw))
        if state.lower() in ("failed", "deleting", "canceled"):
            errs = getattr(compute, "provisioning_errors", None)
            out.append(finding("error", "cluster", f"Cluster {cluster} is in provisioning state {state}"
                               + (f": {errs}" if errs else "") + ".",
                               f"Delete and recreate it (az ml compute delete --name {cluster}), or use another cluster."))
        facts.cluster_sku = getattr(compute, "size", None)
        if prof.compute.instance_type and facts.cluster_sku and \
                skus.normalize(prof.compute.instance_type).lower() != skus.normalize(facts.cluster_sku).lower():
            out.append(finding("warning", "cluster", f"compute.instance_type is {prof.compute.instance_type} but "
                               f"cluster {cluster} runs {facts.cluster_sku}; using the cluster's size.",
                               "Update compute.instance_type to match the cluster."))
        min_nodes = int(getattr(compute, "min_instances", 0) or 0)
        if min_nodes > 0:
            price = skus.price_per_hour(facts.cluster_sku, prof.prices)
            cost = f" (about ${price * min_nodes:.2f}/h)" if price else ""
            out.append(finding("warning", "cluster", f"Cluster {cluster} keeps {min_nodes} node(s) running while idle{cost}.",
                               f"az ml compute update --name {cluster} --min-instances 0"))
    elif prof.compute.instance_type:
        facts.cluster_sku = prof.compute.instance_type

    # fine-tune SKU --------------------------------------------------------------
    if facts.cluster_sku and model is not None:
        allow = finetune_allow_list(model)
        problem = finetune_sku_problem(facts.cluster_sku, allow)
        if problem:
            out.append(finding("error", "finetune_sku", f"Cluster {cluster}: {problem}.",
                               "Use a cluster of an allowed size: " + ", ".join(allow or skus.known_gpu_skus()[:6])))

    # GPUs per node + quota -----------------------------------------------------------
    sizes = guard("gpus", "", lambda: list(call("Listing VM sizes", sess.ws.compute.list_sizes)))
    if facts.cluster_sku:
        size = next((s for s in sizes or [] if str(s.name).lower() == skus.normalize(facts.cluster_sku).lower()), None)
        if sizes is not None and size is None:
            gpu_sizes = sorted(str(s.name) for s in sizes if (getattr(s, "gpus", 0) or 0) > 0)
            out.append(finding("error", "gpus", f"VM size {facts.cluster_sku} is not offered in this workspace's region.",
                               "Available GPU sizes: " + (", ".join(gpu_sizes) or "none")))
        table_gpus = skus.gpus_per_node(facts.cluster_sku)
        gpus = int(size.gpus) if size is not None and getattr(size, "gpus", None) else table_gpus
        if prof.compute.gpus_per_node:
            if gpus and prof.compute.gpus_per_node > gpus:
                out.append(finding("error", "gpus", f"compute.gpus_per_node={prof.compute.gpus_per_node} but "
                                   f"{facts.cluster_sku} has {gpus} GPU(s).", f"Set compute.gpus_per_node <= {gpus}."))
            gpus = prof.compute.gpus_per_node
        facts.gpus_per_node = gpus
        if gpus is None:
            out.append(finding("error", "gpus", f"Unknown number of GPUs for {facts.cluster_sku}.",
                               "Set compute.gpus_per_node."))
        elif gpus == 0:
            out.append(finding("error", "gpus", f"{facts.cluster_sku} has no GPU; fine-tuning needs one.",
                               "Use a GPU cluster, e.g. Standard_NC24ads_A100_v4."))
        if size is not None:
            out.extend(quota_findings(sess, size, nodes=prof.compute.num_nodes, what=f"cluster {cluster}"))

    # inference SKU now, not after training ----------------------------------------------
    inf = prof.endpoint.instance_type
    if model is not None:
        allow = inference_allow_list(model)
        if allow and not skus.sku_allowed(inf, allow):
            out.append(finding("error", "inference_sku", f"endpoint.instance_type {inf} is not in the model's "
                               f"inference allow-list; the deployment would be refused after training.",
                               "Use one of: " + ", ".join(allow)))
    inf_size = next((s for s in sizes or [] if str(s.name).lower() == skus.normalize(inf).lower()), None)
    if inf_size is not None:
        out.extend(f | {"severity": "warning"} for f in
                   quota_findings(sess, inf_size, nodes=prof.endpoint.instance_count, what="the endpoint"))

    # names ---------------------------------------------------------------------------
    ep = endpoint_name(run_id, prof)
    facts.endpoint_name = ep
    for what, n in (("Endpoint", ep), ("Deployment", prof.endpoint.deployment_name)):
        why = names.name_problem(n, what=what)
        if why:
            out.append(finding("error", "names", why, f"Set endpoint.{'name' if what == 'Endpoint' else 'deployment_name'}"
                               " to 3-32 letters, digits or '-', starting with a letter."))
    return out, facts


def quota_findings(sess: AzureSession, size: Any, *, nodes: int, what: str) -> list[dict[str, Any]]:
    """vCPU quota of the size's family: an error when the limit cannot fit the request at all."""
    family = str(getattr(size, "family", "") or "")
    vcpus = int(getattr(size, "v_cp_us", 0) or 0)
    if not family or not vcpus:
        return []
    try:
        usages = list(call("Listing quota usage", sess.ws.compute.list_usage))
    except AmlftError as exc:
        return [finding("info", "quota", f"Quota not checked: {exc.message}", "")]
    need = vcpus * nodes
    for u in usages:
        name = getattr(getattr(u, "name", None), "value", None) or ""
        if str(name).lower() != family.lower():
            continue
        limit, current = int(u.limit or 0), int(u.current_value or 0)
        if limit < need:
            return [finding("error", "quota", f"{what} needs {need} {family} vCPUs ({nodes} x {size.name}); "
                            f"the quota is {limit}.",
                            f"Request more {family} quota (Azure portal > Quotas > Machine learning), "
                            "or pick a size you have quota for.")]
        if limit - current < need:
            return [finding("warning", "quota", f"{what} needs {need} {family} vCPUs; {limit - current} of {limit} "
                            "are free right now, so it may queue.", "Free up nodes or request more quota.")]
        return []
    return []
