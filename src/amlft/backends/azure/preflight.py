"""`check` for Azure: everything that can fail hours into a run, asked before anything bills.

All problems are collected (never stop at the first), each with its fix and a finding
code. One function per check, run in order by `run_checks`; the ones that need no
workspace (`offline_checks`) are shared with `submit --dry-run`. The facts gathered on
the way (resolved model version, cluster SKU, GPUs per node, effective fine-tune
parameters) are returned so `submit` builds exactly what was checked.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

from amlft.backends.azure import names, pipeline, quota, skus
from amlft.backends.azure.service import call
from amlft.backends.azure.session import AzureSession
from amlft.config import Profile
from amlft.errors import AmlftError

# Chat models in the azureml registry that fine-tune with chat_completion_pipeline;
# offered (when they exist) instead of a retired model.
SUCCESSORS = ("Phi-4-mini-instruct", "Phi-3.5-mini-instruct", "Phi-4", "Meta-Llama-3.1-8B-Instruct",
              "Mistral-7B-Instruct-v0.3")
_RETIRE_KEY = re.compile(r"(?i)(retire|deprecat)")


def finding(severity: str, code: str, message: str, fix: str = "") -> dict[str, Any]:
    """One problem: `code` is "<check>.<what>" (e.g. "quota.family_exceeded"), stable for scripts and tests."""
    return {"severity": severity, "check": code.split(".", 1)[0], "code": code, "message": message, "fix": fix}


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
    sizes: dict[str, quota.VmSize] | None = None  # None: not read (or not readable)


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
    """Successors that exist in the registry and are not retired (a missing one is simply skipped)."""
    found = []
    for name in SUCCESSORS:
        if name == exclude:
            continue
        try:
            m = call(f"Reading model {name}", sess.reg.models.get, name, label="latest")
        except AmlftError:
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
@dataclass
class _Run:
    """What every check reads: the session, the profile, and the facts gathered so far."""

    sess: AzureSession
    prof: Profile
    run_id: str
    facts: Facts


def run_checks(sess: AzureSession, prof: Profile, *, run_id: str) -> tuple[list[dict[str, Any]], Facts]:
    """Every check, in order; each adds findings and may record facts later checks use."""
    run = _Run(sess, prof, run_id, Facts())
    out: list[dict[str, Any]] = []
    for check in (check_model, check_component, check_parameters, check_cluster, check_finetune_sku,
                  check_gpus, check_cluster_quota, check_inference_sku, check_endpoint_quota):
        out.extend(check(run))
    run.facts.endpoint_name = endpoint_name(run_id, prof)
    out.extend(check_names(prof, run.facts.endpoint_name))
    return out, run.facts


def offline_checks(prof: Profile, *, run_id: str,
                   inputs: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], pipeline.MergedParameters, int | None]:
    """The checks that need no workspace (`submit --dry-run`): cluster set, GPUs known, no K80,
    fine-tune inputs valid, names valid. Returns (findings, merged parameters, GPUs per node)."""
    out = check_cluster_configured(prof)
    sku = prof.compute.instance_type
    gpus = prof.compute.gpus_per_node or (skus.gpus_per_node(sku) if sku else None)
    if gpus is None:
        out.append(finding("error", "gpus.unknown",
                           f"Unknown GPUs per node for {sku or 'the cluster (compute.instance_type unset)'}.",
                           "Set compute.instance_type to a known GPU size (" + ", ".join(skus.known_gpu_skus()[:4])
                           + ", ...) or compute.gpus_per_node."))
    if sku:
        problem = finetune_sku_problem(sku, None)
        if problem:
            out.append(finding("error", "finetune_sku.retired", f"compute.instance_type: {problem}.",
                               "Use an A100/H100/V100 size."))
    merged = pipeline.merge_parameters(prof.finetune, None, inputs)
    out.extend(_parameter_errors(merged))
    out.extend(check_names(prof, endpoint_name(run_id, prof)))
    return out, merged, gpus


def check_model(run: _Run) -> list[dict[str, Any]]:
    """The model exists in the registry and can still be fine-tuned."""
    sess, m = run.sess, run.prof.model
    ref = f"{m.name}" + (f":{m.version}" if m.version else f"@{m.label or 'latest'}")
    try:
        model = get_model(sess, run.prof)
    except AmlftError as exc:
        if getattr(exc, "status", None) == 404:
            return [finding("error", "model.missing", f"Model {ref} is not in registry '{sess.registry_name}'.",
                            "Check model.name/version/label against the Azure ML model catalog.")]
        return [finding("error", "model.unreadable", exc.message, exc.hint or "")]
    run.facts.model = model
    run.facts.model_asset_id = str(model.id) if getattr(model, "id", None) else pipeline.model_asset_id(
        sess.registry_name, m.name, version=str(model.version), label=None)
    why = retirement(model)
    if not why:
        return []
    alts = suggest_models(sess, m.name)
    return [finding("error", "model.retired", f"Model {m.name}:{model.version} {why}; it can no longer be fine-tuned.",
                    ("Pick another model, e.g. " + " or ".join(f"--set model.name={a}" for a in alts[:3])
                     if alts else "Pick another chat model that supports fine-tuning in the model catalog.")
                    + " (and set model.version/label to match)")]


def check_component(run: _Run) -> list[dict[str, Any]]:
    """The pipeline component exists; say so when its interface drifted from the pinned snapshot."""
    snapshot = pipeline.load_snapshot()["inputs"]
    run.facts.component_inputs = snapshot
    try:
        component = get_component(run.sess, run.prof)
    except AmlftError as exc:
        return [finding("error", "component.unreadable", exc.message, exc.hint or "Check pipeline.component/version/label.")]
    run.facts.component = component
    run.facts.component_inputs = pipeline.inputs_from_component(component) or snapshot
    added = sorted(set(run.facts.component_inputs) - set(snapshot))
    removed = sorted(set(snapshot) - set(run.facts.component_inputs))
    if not (added or removed):
        return []
    return [finding("info", "component.drift",
                    f"{run.prof.pipeline.component} {getattr(component, 'version', '')} differs from the pinned "
                    f"{pipeline.SNAPSHOT_VERSION} interface: added {added or 'none'}, removed {removed or 'none'}.",
                    "Review your finetune: keys; pin pipeline.version for reproducible runs.")]


def _parameter_errors(merged: pipeline.MergedParameters) -> list[dict[str, Any]]:
    return [finding("error", "finetune.bad_input", e, "Use the component's input names and types (see --dry-run --export).")
            for e in merged.errors]


def check_parameters(run: _Run) -> list[dict[str, Any]]:
    """profile > model_specific_defaults > project defaults, against the component's inputs."""
    tags = (getattr(run.facts.model, "tags", None) or {}) if run.facts.model is not None else {}
    merged = pipeline.merge_parameters(run.prof.finetune, tags.get("model_specific_defaults"),
                                       run.facts.component_inputs)
    run.facts.parameters = merged
    out = _parameter_errors(merged)
    if merged.dropped:
        out.append(finding("warning", "finetune.dropped_default",
                           f"The model's defaults {', '.join(merged.dropped)} are not inputs of "
                           f"{run.prof.pipeline.component}; they are dropped.", ""))
    return out


def check_cluster_configured(prof: Profile) -> list[dict[str, Any]]:
    if prof.compute.cluster:
        return []
    return [finding("error", "cluster.unset", "No fine-tune cluster configured.",
                    "Set compute.cluster to an Azure ML compute cluster (AmlCompute) name.")]


def check_cluster(run: _Run) -> list[dict[str, Any]]:
    """The cluster exists, is healthy, matches the profile's size and scales to zero."""
    prof, cluster = run.prof, run.prof.compute.cluster
    out = check_cluster_configured(prof)
    if not cluster:
        run.facts.cluster_sku = prof.compute.instance_type
        return out
    try:
        compute = call(f"Reading compute cluster {cluster}", run.sess.ws.compute.get, cluster)
    except AmlftError as exc:
        run.facts.cluster_sku = prof.compute.instance_type
        if getattr(exc, "status", None) == 404:
            size = prof.compute.instance_type or "Standard_NC24ads_A100_v4"
            return [finding("error", "cluster.missing", f"Compute cluster {cluster!r} does not exist in workspace "
                            f"{run.sess.workspace_name}.",
                            f"az ml compute create --name {cluster} --type amlcompute --size {size} "
                            "--min-instances 0 --max-instances 2 (or fix compute.cluster)")]
        return [finding("error", "cluster.unreadable", exc.message, exc.hint or "")]
    raw = getattr(compute, "provisioning_state", "") or ""
    state = str(getattr(raw, "value", raw))
    if state.lower() in ("failed", "deleting", "canceled"):
        errs = getattr(compute, "provisioning_errors", None)
        out.append(finding("error", "cluster.unhealthy", f"Cluster {cluster} is in provisioning state {state}"
                           + (f": {errs}" if errs else "") + ".",
                           f"Delete and recreate it (az ml compute delete --name {cluster}), or use another cluster."))
    sku: str | None = getattr(compute, "size", None)
    run.facts.cluster_sku = sku
    if prof.compute.instance_type and sku and \
            skus.normalize(prof.compute.instance_type).lower() != skus.normalize(sku).lower():
        out.append(finding("warning", "cluster.size_mismatch", f"compute.instance_type is {prof.compute.instance_type} "
                           f"but cluster {cluster} runs {sku}; using the cluster's size.",
                           "Update compute.instance_type to match the cluster."))
    min_nodes = int(getattr(compute, "min_instances", 0) or 0)
    if min_nodes > 0:
        price = skus.price_per_hour(sku, prof.prices)
        cost = f" (about ${price * min_nodes:.2f}/h)" if price else ""
        out.append(finding("warning", "cluster.idle_nodes",
                           f"Cluster {cluster} keeps {min_nodes} node(s) running while idle{cost}.",
                           f"az ml compute update --name {cluster} --min-instances 0"))
    return out


def check_finetune_sku(run: _Run) -> list[dict[str, Any]]:
    """The cluster's size is on the model's fine-tune allow-list."""
    sku, model = run.facts.cluster_sku, run.facts.model
    if not sku or model is None:
        return []
    allow = finetune_allow_list(model)
    problem = finetune_sku_problem(sku, allow)
    if not problem:
        return []
    return [finding("error", "finetune_sku.not_allowed", f"Cluster {run.prof.compute.cluster}: {problem}.",
                    "Use a cluster of an allowed size: " + ", ".join(allow or skus.known_gpu_skus()[:6]))]


def _sizes(run: _Run) -> tuple[dict[str, quota.VmSize] | None, list[dict[str, Any]]]:
    if run.facts.sizes is None:
        try:
            run.facts.sizes = quota.list_vm_sizes(run.sess)
        except AmlftError as exc:
            return None, [finding("warning", "gpus.sizes_unreadable", f"VM sizes not checked: {exc.message}",
                                  exc.hint or "")]
    return run.facts.sizes, []


def check_gpus(run: _Run) -> list[dict[str, Any]]:
    """The size is offered in the region and has the GPUs the profile asks for."""
    sku, prof = run.facts.cluster_sku, run.prof
    if not sku:
        return []
    sizes, out = _sizes(run)
    size = (sizes or {}).get(skus.normalize(sku).lower())
    if sizes is not None and size is None:
        gpu_sizes = sorted(s.name for s in sizes.values() if s.gpus > 0)
        out.append(finding("error", "gpus.size_unavailable", f"VM size {sku} is not offered in this workspace's region.",
                           "Available GPU sizes: " + (", ".join(gpu_sizes) or "none")))
    gpus = size.gpus if size is not None and size.gpus else skus.gpus_per_node(sku)
    want = prof.compute.gpus_per_node
    if want:
        if gpus and want > gpus:
            out.append(finding("error", "gpus.too_many", f"compute.gpus_per_node={want} but {sku} has {gpus} GPU(s).",
                               f"Set compute.gpus_per_node <= {gpus}."))
        gpus = want
    run.facts.gpus_per_node = gpus
    if gpus is None:
        out.append(finding("error", "gpus.unknown", f"Unknown number of GPUs for {sku}.", "Set compute.gpus_per_node."))
    elif gpus == 0:
        out.append(finding("error", "gpus.none", f"{sku} has no GPU; fine-tuning needs one.",
                           "Use a GPU cluster, e.g. Standard_NC24ads_A100_v4."))
    return out


def _quota_findings(run: _Run, sku: str | None, count: int, *, what: str, queues: bool,
                    surplus: float = 1.0) -> list[dict[str, Any]]:
    sizes, out = _sizes(run)
    size = (sizes or {}).get(skus.normalize(sku).lower()) if sku else None
    if size is None or not size.vcpus:
        return out
    try:
        usages = quota.list_usages(run.sess)
    except AmlftError as exc:
        return [*out, finding("warning", "quota.unreadable", f"Quota not checked: {exc.message}", exc.hint or "")]
    problem = quota.quota_problem(size, count, usages, what=what, queues=queues, surplus=surplus)
    if problem is None:
        return out
    severity, message, fix = problem
    return [*out, finding(severity, "quota.exceeded" if severity == "error" else "quota.busy", message, fix)]


def check_cluster_quota(run: _Run) -> list[dict[str, Any]]:
    """nodes x vCPUs of the cluster's size against its family's and the region's free quota."""
    return _quota_findings(run, run.facts.cluster_sku, run.prof.compute.num_nodes,
                           what=f"cluster {run.prof.compute.cluster}", queues=True)


def check_inference_sku(run: _Run) -> list[dict[str, Any]]:
    """The endpoint's size is on the model's inference allow-list: refused after training otherwise."""
    inf, model = run.prof.endpoint.instance_type, run.facts.model
    allow = inference_allow_list(model) if model is not None else None
    if not allow or skus.sku_allowed(inf, allow):
        return []
    return [finding("error", "inference_sku.not_allowed", f"endpoint.instance_type {inf} is not in the model's "
                    "inference allow-list; the deployment would be refused after training.",
                    "Use one of: " + ", ".join(allow))]


def check_endpoint_quota(run: _Run) -> list[dict[str, Any]]:
    """instance_count x vCPUs (+20% the service reserves for upgrades) against free quota."""
    e = run.prof.endpoint
    return _quota_findings(run, e.instance_type, e.instance_count, what="the endpoint", queues=False, surplus=1.2)


def check_names(prof: Profile, endpoint: str) -> list[dict[str, Any]]:
    out = []
    for what, n, key in (("Endpoint", endpoint, "name"), ("Deployment", prof.endpoint.deployment_name, "deployment_name")):
        why = names.name_problem(n, what=what)
        if why:
            out.append(finding("error", "names.invalid", why,
                               f"Set endpoint.{key} to 3-32 letters, digits or '-', starting with a letter."))
    return out


# Infra findings that repeat one of ours (same fact, found a second way), by code.
_INFRA_DUPLICATES = {"infra.cluster_missing": "cluster.missing", "infra.idle_nodes": "cluster.idle_nodes"}


def merge_infra(found: list[dict[str, Any]], infra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the infra comparison's findings, minus those that repeat a preflight finding's code."""
    ours = {f.get("code") for f in found}
    return found + [f for f in infra if _INFRA_DUPLICATES.get(str(f.get("code"))) not in ours]
