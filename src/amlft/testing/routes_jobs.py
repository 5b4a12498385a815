"""Pipeline jobs on the virtual clock: MFE job create/get/list/cancel, the run-history
routes the SDK uses for child steps, and their log files.

A submitted job runs `chat_completion_pipeline`, a *pipeline component*, so run history
nests the way the service nests it: the job's only child is the pipeline node, and the
node's children are the five leaf steps that chat_completion_pipeline 0.0.82 wires
(assets/training/finetune_acft_hf_nlp/components/pipeline_components/chat_completion/spec.yaml
in Azure/azureml-assets: ft_nlp_common_validation -> chat_completion_model_import ->
chat_completion_datapreprocess -> chat_completion_finetune -> ft_nlp_model_converter).
The SDK turns run-history children into `_BaseJob`s of type "base"
(azure/ai/ml/entities/_job/base_job.py::_BaseJob._load_from_rest in azure-ai-ml 1.35.2),
so a client can tell the node from a leaf only by its run properties: the node carries
`StepType: SubGraphCloudStep`, as the Azure ML CLI's pipeline-reuse helper
(`is_subgraph(run_info)`) reads it.

Every status is a pure function of the job record and the clock, so a second process
that loads the state file sees exactly the same job.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

from amlft.testing import seed
from amlft.testing.assets import ARM, iso, system_data, workspace_id
from amlft.testing.http import FAST_POLL, FakeRequest, Reply, Router, reply_error, reply_json
from amlft.testing.routes_workspace import WS
from amlft.testing.validation import check_job_components

# The phases a command step on AmlCompute walks through, in the order the service reports them
# (JobStatus in specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/
# stable/2024-04-01/mfe.json): Queued while the cluster scales up, Preparing while the image is
# pulled and data mounted, Running, Finalizing while outputs upload.
PHASES = ("Queued", "Preparing", "Running", "Finalizing")
# (leaf step, seconds per phase) - finetune queues longest: the cluster scales up from 0 nodes.
STEPS: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("ft_nlp_common_validation", (60, 60, 60, 30)),
    ("chat_completion_model_import", (30, 60, 240, 60)),
    ("chat_completion_datapreprocess", (30, 60, 180, 30)),
    ("chat_completion_finetune", (240, 120, 1800, 120)),
    ("ft_nlp_model_converter", (30, 60, 420, 60)),
)
FINETUNE_STEP = "chat_completion_finetune"
PARENT_START_DELAY = 60.0
FINETUNE_FAILS_AFTER = 300.0  # seconds of Running before the injected failure / hang
CANCEL_TAKES = 60.0
TERMINAL = ("Completed", "Failed", "Canceled")

OOM_TRACEBACK = """\
Traceback (most recent call last):
  File "/mnt/azureml/cr/j/finetune/exe/wd/finetune.py", line 1042, in <module>
    main()
  File "/mnt/azureml/cr/j/finetune/exe/wd/finetune.py", line 1038, in main
    finetune(args)
  File "/azureml-envs/finetune/lib/python3.10/site-packages/azureml/acft/accelerator/finetune.py", line 406, in train
    self.trainer.train(resume_from_checkpoint=self.finetune_args.resume_from_checkpoint)
  File "/azureml-envs/finetune/lib/python3.10/site-packages/transformers/trainer.py", line 1859, in train
    return inner_training_loop(
  File "/azureml-envs/finetune/lib/python3.10/site-packages/torch/nn/modules/linear.py", line 116, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of \
79.15 GiB of which 1.06 GiB is free. Process 3187 has 78.09 GiB memory in use. Of the allocated memory \
75.31 GiB is allocated by PyTorch, and 1.27 GiB is reserved by PyTorch but unallocated. If reserved but \
unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid \
fragmentation. See documentation for Memory Management (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
"""
OOM_MESSAGE = ("UserError: CUDA out of memory in step 'chat_completion_finetune' (torch.OutOfMemoryError: tried "
               "to allocate 2.00 GiB; GPU 0 has 1.06 GiB free of 79.15 GiB). Reduce per_device_train_batch_size or "
               "max_seq_length, enable apply_lora / deepspeed, or use a larger GPU SKU.")


# -- the timeline -------------------------------------------------------------------------------
def _leaf_plan(job: dict[str, Any]) -> list[dict[str, Any]]:
    """When each leaf starts, changes phase and ends (None: never / not on its own)."""
    t = job["created"] + PARENT_START_DELAY
    plan: list[dict[str, Any]] = []
    broken = job.get("fail_step") or job.get("hang_step")
    blocked = False
    for name, durations in STEPS:
        if blocked:  # continue_on_step_failure is false: later steps never start
            plan.append({"step": name, "start": None, "bounds": [], "end": None, "outcome": None})
            continue
        bounds = [t]
        for d in durations:
            bounds.append(bounds[-1] + d)
        outcome = "Completed"
        end: float | None = bounds[-1]
        if name == broken:
            run_start = bounds[2]
            bounds = [*bounds[:3], run_start + FINETUNE_FAILS_AFTER]
            outcome = "Failed" if job.get("fail_step") else "NotResponding"
            end = bounds[-1] if outcome == "Failed" else None
            blocked = True
        plan.append({"step": name, "start": t, "bounds": bounds, "end": end, "outcome": outcome})
        if end is not None:
            t = end
    return plan


def timeline(job: dict[str, Any], now: float) -> dict[str, Any]:
    """Parent, pipeline-node and per-leaf status at virtual time `now`."""
    created = job["created"]
    cancel_at = job.get("cancel_requested")
    stop_at = cancel_at + CANCEL_TAKES if cancel_at is not None else None
    steps = _leaf_plan(job)
    for s in steps:
        s["status"] = _step_status(s, now, cancel_at, stop_at)
    failed_at = next((s["end"] for s in steps if s["outcome"] == "Failed"), None)
    last_end = steps[-1]["end"]
    if failed_at is not None and now >= failed_at and (cancel_at is None or cancel_at > failed_at):
        parent, parent_end = "Failed", failed_at
    elif cancel_at is not None and (failed_at is None or cancel_at <= failed_at) and now >= cancel_at:
        if last_end is not None and cancel_at >= last_end:
            parent, parent_end = ("Completed", last_end) if now >= last_end else ("Running", None)
        else:
            parent, parent_end = ("Canceled", stop_at) if now >= (stop_at or now) else ("CancelRequested", None)
    elif now < created + PARENT_START_DELAY:
        parent, parent_end = "NotStarted", None
    elif last_end is not None and now >= last_end:
        parent, parent_end = "Completed", last_end
    else:
        parent, parent_end = "Running", None
    return {"status": parent, "start": created + PARENT_START_DELAY, "end": parent_end, "steps": steps}


def _step_status(s: dict[str, Any], now: float, cancel_at: float | None, stop_at: float | None) -> str:
    if s["start"] is None:
        return "NotStarted" if cancel_at is None or now < cancel_at else (
            "Canceled" if now >= (stop_at or now) else "NotStarted")
    end = s["end"]
    if cancel_at is not None and (end is None or cancel_at < end) and now >= cancel_at:
        if cancel_at < s["start"]:
            return "Canceled" if now >= (stop_at or cancel_at) else "NotStarted"
        return "Canceled" if now >= (stop_at or cancel_at) else "CancelRequested"
    if now < s["start"]:
        return "NotStarted"
    bounds = s["bounds"]
    for phase, upper in zip(PHASES, bounds[1:], strict=False):
        if now < upper:
            return phase
    return str(s["outcome"])


def _tick(fake: Any, st: dict[str, Any]) -> None:
    st["clock"] = float(st["clock"]) + fake.tick_s


def _studio_url(name: str) -> str:
    return f"https://ml.azure.com/runs/{name}?wsid={workspace_id()}"


def _child_name(parent: str, step: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"amlft-fake/{parent}/{step}"))


# -- MFE jobs ---------------------------------------------------------------------------------------
def _job_json(name: str, job: dict[str, Any], now: float) -> dict[str, Any]:
    props = dict(job["body"].get("properties", {}))
    tl = timeline(job, now)
    props["status"] = tl["status"]
    props.setdefault("experimentName", "Default")
    props["services"] = {
        "Studio": {"jobServiceType": "Studio", "endpoint": _studio_url(name), "status": None},
        "Tracking": {"jobServiceType": "Tracking",
                     "endpoint": f"azureml://{seed.LOCATION}.api.azureml.ms/mlflow/v1.0{workspace_id()}"},
    }
    props.setdefault("properties", {})
    props["properties"] = {**props["properties"], "azureml.runsource": "azureml.PipelineRun",
                           "runType": "HTTP", "azureml.parameters": "{}"}
    return {
        "id": f"{workspace_id()}/jobs/{name}",
        "name": name,
        "type": f"{ARM}/workspaces/jobs",
        "systemData": system_data(job["created"]),
        "properties": props,
    }


def put_job(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    body = req.json()
    props = body.get("properties") or {}
    if props.get("jobType") != "Pipeline":
        return reply_error(400, "UserError", f"The fake runs pipeline jobs only; got jobType {props.get('jobType')!r}.")
    if name in st["jobs"]:
        return reply_json(200, _job_json(name, st["jobs"][name], st["clock"]))
    refused = check_job_components(st, name, body)
    if refused:
        return refused
    cluster = _cluster_of({"body": body})
    if cluster and cluster != "serverless" and cluster not in st["computes"]:
        return reply_error(400, "UserError", f"Compute target '{cluster}' not found in workspace {ws}.")
    node = next(iter(props.get("jobs") or {"chat_completion_pipeline": None}), "chat_completion_pipeline")
    job = {
        "body": body,
        "created": st["clock"],
        "fail_step": FINETUNE_STEP if "finetune_step_fails" in st["faults"] else None,
        "hang_step": FINETUNE_STEP if "job_not_responding" in st["faults"] else None,
        "cancel_requested": None,
        # Lists, not dicts: the state file is written with sorted keys, and step order matters.
        "node": [node, _child_name(name, node)],
        "leaves": [[step, _child_name(name, step)] for step, _ in STEPS],
    }
    st["jobs"][name] = job
    links = st.setdefault("child_runs", {})
    links[job["node"][1]] = {"parent": name, "step": node, "node": True}
    for step, child in job["leaves"]:
        links[child] = {"parent": name, "step": step, "node": False}
    return reply_json(201, _job_json(name, job, st["clock"]))


def get_job(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    if name in st.get("child_runs", {}):
        # Pipeline children have no MFE properties: the SDK then asks run history.
        return reply_json(200, {"id": f"{workspace_id()}/jobs/{name}", "name": name,
                                "type": f"{ARM}/workspaces/jobs", "properties": None})
    job = st["jobs"].get(name)
    if job is None:
        return reply_error(404, "UserError", f"Job {name} not found in workspace {ws}.")
    _tick(fake, st)
    return reply_json(200, _job_json(name, job, st["clock"]))


def list_jobs(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str) -> Reply:
    items = [_job_json(n, j, st["clock"]) for n, j in sorted(st["jobs"].items(), key=lambda kv: -kv[1]["created"])]
    return reply_json(200, {"value": items, "nextLink": None})


def cancel_job(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, name: str) -> Reply:
    job = st["jobs"].get(name)
    if job is None:
        return reply_error(404, "UserError", f"Job {name} not found in workspace {ws}.")
    if timeline(job, st["clock"])["status"] not in TERMINAL and job.get("cancel_requested") is None:
        job["cancel_requested"] = st["clock"]
    op = new_operation(fake, st, kind="job_cancel", target=name, takes=CANCEL_TAKES)
    return reply_json(202, {}, {"Location": operation_url(op, "mfeOperationResults"), **FAST_POLL})


# -- generic ARM operations (shared with endpoints) --------------------------------------------------
def new_operation(fake: Any, st: dict[str, Any], *, kind: str, target: str, takes: float,
                  error: dict[str, Any] | None = None, result: dict[str, Any] | None = None) -> str:
    op_id = f"{kind}:{uuid.uuid4()}"
    st["operations"][op_id] = {"kind": kind, "target": target, "done_at": st["clock"] + takes,
                               "error": error, "result": result, "started": st["clock"]}
    return op_id


def operation_url(op_id: str, kind: str = "mfeOperationsStatus") -> str:
    return (f"https://management.azure.com/subscriptions/{seed.SUBSCRIPTION_ID}/providers/{ARM}"
            f"/locations/{seed.LOCATION}/{kind}/{op_id}?api-version=2024-10-01-preview")


def operation_status(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, loc: str, kind: str,
                     op: str) -> Reply:
    rec = st["operations"].get(op)
    if rec is None:
        return reply_error(404, "NotFound", f"Operation {op} not found.")
    _tick(fake, st)
    done = st["clock"] >= rec["done_at"]
    if kind.lower() == "mfeoperationresults":  # Location-style polling: 202 until done
        if not done:
            return reply_json(202, {}, {"Location": operation_url(op, "mfeOperationResults"), **FAST_POLL})
        if rec.get("error"):
            return reply_json(400, {"error": rec["error"]})
        return reply_json(200, rec.get("result") or {})
    body: dict[str, Any] = {"id": op, "name": op, "startTime": iso(rec["started"])}
    if not done:
        body["status"] = "InProgress"
        return reply_json(200, body, FAST_POLL)
    body["endTime"] = iso(rec["done_at"])
    if rec.get("error"):
        body["status"] = "Failed"
        body["error"] = rec["error"]
    else:
        body["status"] = "Succeeded"
    return reply_json(200, body, FAST_POLL)


# -- run history -----------------------------------------------------------------------------------
def _run_json(child: str, st: dict[str, Any]) -> dict[str, Any]:
    """A run-history Run for the pipeline node or a leaf step (the shape get_child returns)."""
    link = st["child_runs"][child]
    job_name = link["parent"]
    parent = st["jobs"][job_name]
    tl = timeline(parent, st["clock"])
    cluster = _cluster_of(parent)
    if link.get("node"):
        status, started, ended = tl["status"], tl["start"], tl["end"]
        step_type, parent_run = "SubGraphCloudStep", job_name
    else:
        step = next(s for s in tl["steps"] if s["step"] == link["step"])
        status, ended = step["status"], step["end"]
        started = step["bounds"][2] if step["bounds"] else None
        step_type, parent_run = "CommandStep", parent["node"][1]
    run: dict[str, Any] = {
        "runId": child,
        "runUuid": child,
        "parentRunId": parent_run,
        "rootRunId": job_name,
        "experimentId": "00000000-0000-0000-0000-0000000000e1",
        "name": link["step"],
        "displayName": link["step"],
        "status": status,
        "runType": "azureml.StepRun",
        "createdUtc": iso(parent["created"]),
        "startTimeUtc": iso(started) if started is not None and status not in ("NotStarted", "Queued") else None,
        "endTimeUtc": iso(ended) if status in TERMINAL and ended else None,
        "createdBy": {"userName": "amlft-rehearsal", "userObjectId": "44444444-4444-4444-4444-444444444444"},
        "lastModifiedUtc": iso(st["clock"]),
        "tags": {"azureml.nodeid": link["step"], "azureml.pipeline": job_name},
        "properties": {"azureml.runsource": "azureml.StepRun", "StepType": step_type,
                       "azureml.nodeid": link["step"]},
        "target": cluster,
        "compute": {"target": cluster, "targetType": "AmlCompute", "vmSize": seed.CLUSTER_SKU, "gpuCount": 1,
                    "instanceCount": 1} if cluster and not link.get("node") else None,
        "services": {"Studio": {"endpoint": _studio_url(child)}},
    }
    if status == "Failed" and not link.get("node"):
        run["error"] = {"error": {"code": "UserError", "message": OOM_MESSAGE, "messageFormat": OOM_MESSAGE}}
    return run


def _cluster_of(job: dict[str, Any]) -> str | None:
    props = job["body"].get("properties") or {}
    ids = [props.get("computeId"), (props.get("settings") or {}).get("default_compute")]
    for node in (props.get("jobs") or {}).values():
        node = node or {}
        ids.append(node.get("computeId"))
        ids.append(((node.get("inputs") or {}).get("compute_finetune") or {}).get("value"))
    for cid in ids:
        if cid:
            return str(cid).rsplit("/", 1)[-1]
    return None


def get_run(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, run: str,
            **_: str) -> Reply:
    if run in st.get("child_runs", {}):
        _tick(fake, st)
        return reply_json(200, _run_json(run, st))
    if run in st["jobs"]:
        job = st["jobs"][run]
        _tick(fake, st)
        tl = timeline(job, st["clock"])
        return reply_json(200, {"runId": run, "status": tl["status"], "displayName": run,
                                "createdUtc": iso(job["created"]), "runType": "azureml.PipelineRun",
                                "properties": {}, "tags": {}})
    return reply_error(404, "UserError", f"Run {run} not found.")


def get_run_details(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, run: str,
                    **_: str) -> Reply:
    if run not in st.get("child_runs", {}):
        return reply_error(404, "UserError", f"Run {run} not found.")
    body = _run_json(run, st)
    details = {k: body.get(k) for k in ("runId", "parentRunId", "status", "startTimeUtc", "endTimeUtc",
                                        "error", "tags", "properties", "target")}
    details["createdTimeUtc"] = body["createdUtc"]
    logs: dict[str, str] = {}
    if body["status"] not in ("NotStarted", "Queued") and not st["child_runs"][run].get("node"):
        for log in ("user_logs/std_log.txt", "system_logs/lifecycler/execution-wrapper.log"):
            logs[log] = log_url(req, run, log)
    details["logFiles"] = logs
    return reply_json(200, details)


def list_children(fake: Any, req: FakeRequest, st: dict[str, Any], sub: str, rg: str, ws: str, run: str,
                  **_: str) -> Reply:
    """The job's child is the pipeline node; the node's children are the leaf steps; leaves have none."""
    job = st["jobs"].get(run)
    link = st.get("child_runs", {}).get(run)
    if job is not None:
        kids = [job["node"][1]]
    elif link is not None and link.get("node"):
        kids = [child for _, child in st["jobs"][link["parent"]]["leaves"]]
    elif link is not None:
        kids = []
    else:
        return reply_error(404, "UserError", f"Run {run} not found.")
    return reply_json(200, {"value": [_run_json(k, st) for k in kids], "continuationToken": None, "nextLink": None})


# -- logs -------------------------------------------------------------------------------------------
def log_url(req: FakeRequest, run: str, log: str) -> str:
    return (f"https://{seed.STORAGE_ACCOUNT}.blob.core.windows.net/{seed.ARTIFACT_CONTAINER}/ExperimentRun/"
            f"dcid.{run}/{log}?sv=2019-07-07&sr=b&sig=ZmFrZQ%3D%3D&se=2099-01-01T00%3A00%3A00Z&sp=r")


def step_log(st: dict[str, Any], run: str, log: str) -> str | None:
    link = st.get("child_runs", {}).get(run)
    if link is None or link.get("node"):
        return None
    parent = st["jobs"][link["parent"]]
    tl = timeline(parent, st["clock"])
    step = next(s for s in tl["steps"] if s["step"] == link["step"])
    if step["status"] in ("NotStarted", "Queued") or not step["bounds"]:
        return None
    run_start = step["bounds"][2]
    if log.startswith("system_logs"):
        return f"[{iso(run_start)}] execution-wrapper: starting step {link['step']}\n"
    lines = [f"[{iso(run_start)}] Starting {link['step']} on {_cluster_of(parent)} ({seed.CLUSTER_SKU})"]
    if link["step"] == FINETUNE_STEP:
        lines += [
            "Loading model from " + _model_path(parent),
            "DeepSpeed stage 2 enabled; LoRA r=8 alpha=128",
            "***** Running training *****",
            "  Num examples = 512, Num Epochs = 3, Instantaneous batch size per device = 1",
            "{'loss': 1.4211, 'learning_rate': 4.9e-06, 'epoch': 0.1}",
        ]
        if step["status"] == "Failed":
            lines += OOM_TRACEBACK.rstrip("\n").split("\n")
            lines.append(f"Step {FINETUNE_STEP} failed with exit code 1.")
            return "\n".join(lines) + "\n"
        if step["status"] == "NotResponding":
            lines.append("[NCCL] rank 0 waiting on allreduce (no progress for 600 s)")
    if step["status"] == "Completed":
        lines.append(f"[{iso(step['end'])}] {link['step']} completed successfully.")
    elif step["status"] == "Canceled":
        lines.append("Received SIGTERM: the run was canceled.")
    return "\n".join(lines) + "\n"


def _model_path(job: dict[str, Any]) -> str:
    props = job["body"].get("properties") or {}
    for node in (props.get("jobs") or {}).values():
        path = (((node or {}).get("inputs") or {}).get("mlflow_model_path") or {}).get("uri")
        if path:
            return str(path)
    return "azureml://registries/azureml/models/(unknown)"


def get_log_blob(fake: Any, req: FakeRequest, st: dict[str, Any], run: str, log: str) -> Reply:
    text = step_log(st, run, log)
    if text is None:
        return 404, {"x-ms-error-code": "BlobNotFound", "Content-Type": "application/xml"}, (
            '<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code>'
            "<Message>The specified blob does not exist.</Message></Error>")
    data = text.encode("utf-8")
    return 200, {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(data)),
                 "x-ms-blob-type": "AppendBlob", "ETag": '"0x1"',
                 "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()}, data


def register(router: Router) -> None:
    router.add("PUT", WS + r"/jobs/(?P<name>[^/]+)", put_job)
    router.add("GET", WS + r"/jobs", list_jobs)
    router.add("GET", WS + r"/jobs/(?P<name>[^/]+)", get_job)
    router.add("POST", WS + r"/jobs/(?P<name>[^/]+)/cancel", cancel_job)
    router.add("GET", r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearningServices/locations/"
               r"(?P<loc>[^/]+)/(?P<kind>mfeOperationResults|mfeOperationsStatus)/(?P<op>[^/]+)", operation_status)
    hist = r"/history/v1\.0" + WS + r"(?:/experiments/(?P<exp>[^/]+)|/experimentids/(?P<expid>[^/]+))?"
    router.add("GET", hist + r"/runs/(?P<run>[^/]+)", get_run)
    router.add("GET", hist + r"/runs/(?P<run>[^/]+)/details", get_run_details)
    router.add("GET", hist + r"/runs/(?P<run>[^/]+)/children", list_children)
    router.add("GET", "/" + seed.ARTIFACT_CONTAINER + r"/ExperimentRun/dcid\.(?P<run>[^/]+)/(?P<log>.+)",
               get_log_blob, host=r"\.blob\.core\.windows\.net$")
