"""Azure ML as it really behaves (issue 10), on the fake through the real azure-ai-ml SDK:
nested pipeline steps, the JobStatus table, quota, long-running operations, scoring
errors, service-side validation, retries and the retired flagship."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml")

from amlft.cli.main import main
from amlft.records import RunRecord
from amlft.testing import FakeAzureML, rehearsal

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = str(ROOT / "jobs" / "phi4-mini-ultrachat.yml")
LEAVES = ["ft_nlp_common_validation", "chat_completion_model_import", "chat_completion_datapreprocess",
          "chat_completion_finetune", "ft_nlp_model_converter"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMLFT_HOME", str(tmp_path / ".amlft"))
    yield tmp_path
    rehearsal.stop_all()


def cli(capsys, *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _submit(fake: FakeAzureML, tmp_path: Path) -> str:
    from azure.ai.ml import Input, dsl
    from azure.ai.ml.entities import Data

    ml, reg = fake.ml_client(), fake.registry_client()
    component = reg.components.get("chat_completion_pipeline", label="latest")
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    asset = ml.data.create_or_update(Data(name="t", version="1", path=str(train), type="uri_file"))

    @dsl.pipeline(name="ft", default_compute=fake.cluster_name)
    def pipeline(train_file):
        step = component(mlflow_model_path=Input(type="mlflow_model", path="azureml://registries/azureml/models/"
                                                 "Phi-4-mini-instruct/versions/1"),
                         train_file_path=train_file, test_file_path=train_file,
                         compute_finetune=fake.cluster_name, number_of_gpu_to_use_finetuning=1)
        return {"trained_model": step.outputs.mlflow_model_folder}

    job = pipeline(train_file=Input(type="uri_file", path=f"azureml:{asset.name}:{asset.version}"))
    return ml.jobs.create_or_update(job, experiment_name="t").name


# -- 10.1 nested steps ---------------------------------------------------------------------------------
def test_the_job_nests_one_pipeline_node_whose_children_are_the_five_leaf_steps(tmp_path):
    from amlft.backends.azure.poller import is_pipeline_node

    with FakeAzureML(tmp_path / "f.json", tick_s=0) as fake:
        ml = fake.ml_client()
        name = _submit(fake, tmp_path)
        (node,) = list(ml.jobs.list(parent_job_name=name))
        # what the SDK really returns for run-history children: type "base", not "pipeline"
        assert node.type == "base" and is_pipeline_node(node)
        leaves = list(ml.jobs.list(parent_job_name=node.name))
        assert [c.display_name for c in leaves] == LEAVES
        assert all(c.type == "base" and not is_pipeline_node(c) for c in leaves)
        assert list(ml.jobs.list(parent_job_name=leaves[0].name)) == []


def test_a_leaf_walks_the_realistic_status_sequence(tmp_path):
    with FakeAzureML(tmp_path / "f.json", tick_s=0) as fake:
        ml = fake.ml_client()
        name = _submit(fake, tmp_path)
        (node,) = list(ml.jobs.list(parent_job_name=name))
        parent_seen: list[str] = []
        finetune_seen: list[str] = []
        for _ in range(200):
            fake.advance(30)
            status = ml.jobs.get(name).status
            if not parent_seen or parent_seen[-1] != status:
                parent_seen.append(status)
            leaf = next(c for c in ml.jobs.list(parent_job_name=node.name)
                        if c.display_name == "chat_completion_finetune")
            if not finetune_seen or finetune_seen[-1] != leaf.status:
                finetune_seen.append(leaf.status)
            if status == "Completed":
                break
    assert finetune_seen == ["NotStarted", "Queued", "Preparing", "Running", "Finalizing", "Completed"]
    assert parent_seen[-2:] == ["Running", "Completed"]


def test_wait_shows_every_leaf_and_names_the_failed_one(home, capsys):
    code, out = cli(capsys, "run", "--profile", FLAGSHIP, "--rehearse", "--fault", "finetune_step_fails")
    assert code == 3, out
    for leaf in LEAVES[:4]:
        assert f"step {leaf}: " in out, leaf
    assert "step ft_nlp_model_converter: NotStarted" in out
    assert "failed in step chat_completion_finetune: UserError: CUDA out of memory" in out
    # the cause and the fix first, the step's log tail after them
    assert out.index("failed in step chat_completion_finetune") < out.index("torch.OutOfMemoryError")
    assert "Its log tail follows" in out
    assert "left running: none" in out


# -- 10.3 job statuses ---------------------------------------------------------------------------------
def test_every_service_job_status_is_in_the_one_table():
    from azure.ai.ml._restclient.arm_ml_service.models._enums import JobStatus

    from amlft.backends.azure import job_status

    assert {s.value for s in JobStatus} == {s.name for s in job_status.STATES.values()}
    assert {"Completed", "Failed", "Canceled"} == job_status.TERMINAL
    assert {"NotResponding", "Paused"} == job_status.STALLED
    assert not job_status.is_terminal("Paused") and not job_status.is_terminal("NotResponding")
    assert job_status.state_of("something new").name == "Unknown"
    assert "heartbeats" in job_status.state_of("notresponding").meaning
    assert "resumes only when someone resumes it" in job_status.state_of("Paused").meaning


def test_a_not_responding_job_is_explained_not_waited_on_forever(home, capsys):
    code, out = cli(capsys, "run", "--profile", FLAGSHIP, "--rehearse", "--fault", "job_not_responding",
                    "--set", "pipeline.stalled_timeout_s=0")
    assert code == 5, out
    assert "step chat_completion_finetune: NotResponding" in out
    assert "has stopped sending heartbeats" in out
    assert "Stopped waiting: step chat_completion_finetune has been NotResponding" in out
    assert "canceled job" in out and "left running: none" in out
    rec = RunRecord.load()
    assert [r["state"] for r in rec.resources("azureml.job")] == ["canceled"]


# -- 10.2 quota ----------------------------------------------------------------------------------------
def test_quota_is_read_in_the_shapes_the_service_returns(tmp_path):
    from types import SimpleNamespace

    from amlft.backends.azure import quota

    with FakeAzureML(tmp_path / "f.json") as fake:
        ml = fake.ml_client()
        # why amlft does not use the SDK entities: azure-ai-ml 1.35.2 drops these fields
        sdk_size = next(s for s in ml.compute.list_sizes() if s.name == "Standard_NC24ads_A100_v4")
        sdk_usage = next(iter(ml.compute.list_usage()))
        assert sdk_size.v_cp_us is None and sdk_usage.current_value is None
        sess = SimpleNamespace(ws=ml)
        sizes = quota.list_vm_sizes(sess)
        usages = quota.list_usages(sess)
    a100 = sizes["standard_nc24ads_a100_v4"]
    assert (a100.family, a100.vcpus, a100.gpus) == ("standardNCADSA100v4Family", 24, 1)
    assert usages["standardncadsa100v4family"].limit == 96
    assert usages[quota.REGIONAL_TOTAL.lower()].limit == 400
    # nodes x vCPUs against the family, then the regional total
    assert quota.quota_problem(a100, 4, usages, what="cluster c", queues=True) is None
    severity, message, _ = quota.quota_problem(a100, 5, usages, what="cluster c", queues=True)
    assert severity == "error" and "needs 120 standardNCADSA100v4Family vCPUs" in message and "0/96" in message


def test_quota_exceeded_fails_check_before_anything_bills(home, capsys):
    code, out = cli(capsys, "check", "--profile", FLAGSHIP, "--rehearse", "--fault", "quota_exceeded")
    assert code == 1, out
    assert "cluster gpu-a100 needs 24 standardNCADSA100v4Family vCPUs" in out and "used/limit is 0/12" in out
    assert "Request more standardNCADSA100v4Family quota" in out
    assert "the endpoint needs 8 standardNCSv3Family vCPUs" in out and "used/limit is 18/24 (6 free)" in out
    assert "nothing billable was started" in out
    rehearsal.stop_all()
    fake = FakeAzureML(rehearsal.fake_state_path(home / ".amlft"))
    assert fake.state["jobs"] == {} and fake.left_running() == []


# -- 12.5 one function per check, finding codes, no dedupe by substring -----------------------------------
def test_a_cluster_named_admin_gpu_keeps_every_finding(home, capsys):
    """The old dedupe dropped any infra finding whose message contained "min" - e.g. "admin-gpu"."""
    import json

    fake = rehearsal.ensure_fake((), root=home / ".amlft")
    fake.add_compute("admin-gpu", min_nodes=1, idle_seconds=3600)
    try:
        main(["check", "--profile", FLAGSHIP, "--rehearse", "--set", "compute.cluster=admin-gpu", "--json"])
    except SystemExit as exc:
        assert not exc.code
    codes = [f["code"] for f in json.loads(capsys.readouterr().out)["check"]]
    assert "cluster.idle_nodes" in codes  # ours
    assert "infra.scale_down_slow" in codes  # the infra comparison's; its message names admin-gpu; kept
    assert "infra.idle_nodes" not in codes  # the same fact as cluster.idle_nodes: reported once


def test_dry_run_reuses_the_offline_checks(home, capsys):
    code, out = cli(capsys, "submit", "--profile", FLAGSHIP, "--dry-run", "--set", "compute.cluster=",
                    "--set", "compute.instance_type=Standard_NC12", "--set", "finetune.nope=1", "--json")
    assert code == 1, out
    for needle in ("No fine-tune cluster configured", "retired Tesla K80", "finetune.nope is not an input"):
        assert needle in out, needle


# -- 12.1 layers -------------------------------------------------------------------------------------------
def test_the_backend_layer_never_imports_amlft_testing():
    import ast

    for path in (ROOT / "src" / "amlft" / "backends").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("amlft.testing"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("amlft.testing") for a in node.names), path


def test_without_responses_the_fake_names_the_extra_to_install(tmp_path, monkeypatch):
    import sys

    from amlft.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "responses", None)  # as if `responses` were not installed
    with pytest.raises(MissingDependency) as err:
        FakeAzureML(tmp_path / "f.json").start()
    assert "rehearse" in str(err.value) + str(err.value.hint)


# -- 10.4 long-running operations ----------------------------------------------------------------------
def _arm(fake: FakeAzureML, path: str) -> str:
    return (f"https://management.azure.com/subscriptions/{fake.subscription_id}/resourceGroups/"
            f"{fake.resource_group}/providers/Microsoft.MachineLearningServices/workspaces/{fake.workspace_name}"
            f"/{path}?api-version=2024-10-01-preview")


def test_endpoint_create_and_traffic_update_behave_like_the_recordings(tmp_path):
    import requests
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    with FakeAzureML(tmp_path / "f.json", tick_s=0) as fake:
        url = _arm(fake, "onlineEndpoints/ep-lro")
        body = {"location": fake.location, "properties": {"authMode": "Key"}, "tags": {"amlft-run-id": "r"}}
        created = requests.put(url, json=body, timeout=5)
        assert created.status_code == 201
        assert created.headers["x-ms-async-operation-timeout"] == "PT30M"
        assert created.json()["properties"]["provisioningState"] == "Creating"
        assert created.json()["properties"]["scoringUri"] is None  # not before Succeeded
        fake.advance(300)
        ml = fake.ml_client()
        ep = ml.online_endpoints.get("ep-lro")
        assert ep.provisioning_state == "Succeeded" and ep.scoring_uri.endswith("/score")
        _deploy_with(ml, "ep-lro", fake)
        ep.traffic = {"default": 100}
        update = requests.put(url, json={**body, "properties": {"authMode": "Key", "traffic": {"default": 100}}},
                              timeout=5)
        assert update.status_code == 201 and update.json()["properties"]["traffic"] == {}  # the old traffic
        fake.advance(30)
        assert not ml.online_endpoints.get("ep-lro").traffic.get("default")  # not yet
        fake.advance(60)
        assert ml.online_endpoints.get("ep-lro").traffic == {"default": 100}
        assert isinstance(ep, ManagedOnlineEndpoint)


def _deploy_with(ml, endpoint: str, fake: FakeAzureML) -> None:
    import requests

    dep = requests.put(_arm(fake, f"onlineEndpoints/{endpoint}/deployments/default"), timeout=5, json={
        "location": fake.location, "sku": {"name": "Default", "capacity": 1},
        "properties": {"endpointComputeType": "Managed", "instanceType": "Standard_NC6s_v3",
                       "model": "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"}})
    assert dep.status_code == 201, dep.text
    fake.advance(540)  # about ten minutes, as recorded: not yet
    assert ml.online_deployments.get("default", endpoint).provisioning_state == "Creating"
    fake.advance(120)
    assert ml.online_deployments.get("default", endpoint).provisioning_state == "Succeeded"


def test_every_operation_wait_is_bounded_and_says_what_continues(tmp_path):
    from types import SimpleNamespace

    from azure.ai.ml.entities import ManagedOnlineEndpoint

    from amlft.backends.azure.endpoints import wait_lro
    from amlft.console import Console
    from amlft.errors import DeploymentError

    with FakeAzureML(tmp_path / "f.json", tick_s=0) as fake:  # a frozen clock: the operation never ends
        ml = fake.ml_client()
        poller = ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="ep-slow", auth_mode="key"))
        sess = SimpleNamespace(poll_interval_s=0.01)
        with pytest.raises(DeploymentError) as err:
            wait_lro(sess, poller, "endpoint ep-slow", console=Console(), timeout_s=0.05,
                     resume="amlft deploy --run r", delete="amlft teardown --run r")
    assert "is still InProgress" in err.value.message and "it continues in Azure" in err.value.message
    assert "amlft deploy --run r" in err.value.hint and "amlft teardown --run r" in err.value.hint


def test_ctrl_c_while_deploying_says_what_continues_and_how_to_resume_or_delete(capsys):
    from types import SimpleNamespace

    from amlft.backends.azure.endpoints import wait_lro
    from amlft.console import Console

    class Interrupted:  # what a poller looks like when the user presses Ctrl-C mid-wait
        def done(self) -> bool:
            return False

        def wait(self, timeout: float) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_lro(SimpleNamespace(poll_interval_s=0.01), Interrupted(), "deployment ep/demo", console=Console(),
                 timeout_s=60, resume="amlft deploy --run r", delete="amlft teardown --run r")
    err = capsys.readouterr().err
    assert "deployment ep/demo continues in Azure" in err
    assert "resume: amlft deploy --run r" in err and "delete: amlft teardown --run r" in err


# -- 10.5 scoring errors -------------------------------------------------------------------------------
def test_invoke_and_bench_explain_scoring_errors_and_bench_counts_them_by_kind(home, capsys):
    import json

    import requests

    from amlft.scoring_errors import explain

    code, out = cli(capsys, "run", "--profile", FLAGSHIP, "--rehearse", "--keep")
    assert code == 0, out
    # Requests at one virtual instant are in flight together; the limit is 2 x max_concurrent (1) x instances (1).
    code, out = cli(capsys, "invoke", "--fault", "scoring_throttled")
    assert code == 0, out  # the 1st of the burst
    code, out = cli(capsys, "bench", "--requests", "5", "--concurrency", "1", "--warmup", "0", "--out", "b")
    doc = json.loads((home / "b" / "results.json").read_text())
    level = doc["targets"][0]["levels"][0]
    assert level["summary"]["errors_by_kind"] == {"throttled": 4}  # the 2nd is fine, the 3rd onwards are not
    errors = [r["error"] for r in level["requests"] if not r["ok"]]
    assert all("HTTP 429: more requests than 2 x max_concurrent_requests_per_instance" in e for e in errors)
    assert all("send fewer requests at once" in e and "x-request-id" in e for e in errors)
    assert "throttled 4" in (home / "b" / "report.md").read_text()
    code, out = cli(capsys, "invoke")
    assert code != 0 and "HTTP 429" in out and "x-request-id" in out

    # The fake on its own: 408, 424 with the model's status/reason, 401 on a bad key, 404 without traffic.
    rec = RunRecord.load()
    deploy = rec.output("deploy")
    rehearsal.stop_all()
    fake = FakeAzureML(rehearsal.fake_state_path(home / ".amlft"))
    key = fake.state["endpoints"][deploy["endpoint_name"]]["keys"]["primaryKey"]
    chat = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {}}}
    auth = {"Authorization": f"Bearer {key}"}
    with fake:
        fake.remove_fault("scoring_throttled")
        for fault, status, phrase in (("scoring_timeout", 408, "raise endpoint.request_timeout_ms"),
                                      ("model_error", 424, "model answered 500: torch.OutOfMemoryError")):
            fake.add_fault(fault)
            r = requests.post(deploy["scoring_uri"], json=chat, headers=auth, timeout=5)
            assert r.status_code == status and r.headers["x-request-id"], fault
            assert phrase in explain(r.status_code, r.headers)
            fake.remove_fault(fault)
        bad = requests.post(deploy["scoring_uri"], json=chat, headers={"Authorization": "Bearer nope"}, timeout=5)
        assert bad.status_code == 401 and "current key" in explain(401, bad.headers)
        routed = requests.post(deploy["scoring_uri"], json=chat, timeout=5,
                               headers={**auth, "azureml-model-deployment": "nope"})
        assert routed.status_code == 404 and "no deployment takes traffic" in explain(404, routed.headers)
    code, out = cli(capsys, "teardown")
    assert code == 0 and "left running: none" in out


# -- 10.6 validation the service enforces -------------------------------------------------------------------
def test_the_fake_refuses_what_the_service_refuses(tmp_path):
    import requests

    with FakeAzureML(tmp_path / "f.json") as fake:
        ep_url = _arm(fake, "onlineEndpoints/ep-v")
        good = {"location": fake.location, "properties": {"authMode": "Key"}}
        for body, why in (({"properties": {"authMode": "Key"}}, "location"),
                          ({"location": fake.location, "properties": {}}, "properties.authMode"),
                          ({"location": fake.location, "properties": {"authMode": "Basic"}}, "'Basic' is not one of")):
            r = requests.put(ep_url, json=body, timeout=5)
            assert r.status_code == 400 and why in r.json()["error"]["message"], body
        assert requests.put(ep_url, json=good, timeout=5).status_code == 201
        fake.advance(600)
        dep_url = _arm(fake, "onlineEndpoints/ep-v/deployments/d")
        base = {"location": fake.location, "properties": {"instanceType": "Standard_NC6s_v3"}}
        r = requests.put(dep_url, json=base, timeout=5)
        assert r.status_code == 400 and "properties.endpointComputeType" in r.json()["error"]["message"]
        r = requests.put(dep_url, json={**base, "properties": {**base["properties"],
                                                                 "endpointComputeType": "Serverless"}}, timeout=5)
        assert r.status_code == 400 and "'Serverless' is not one of" in r.json()["error"]["message"]
        assert len(fake.state["rejected"]) == 5


def test_a_component_not_replicated_to_the_region_is_refused(tmp_path):
    from azure.core.exceptions import HttpResponseError

    with FakeAzureML(tmp_path / "f.json") as fake:
        reg = fake.registry_client()
        stale = reg.components.get("chat_completion_pipeline", version="0.0.81")
        assert reg.components.get("chat_completion_pipeline", label="latest").version == "0.0.82"
        from azure.ai.ml import dsl

        @dsl.pipeline(None, name="ft", default_compute=fake.cluster_name)
        def pipeline():
            stale(compute_finetune=fake.cluster_name)

        with pytest.raises(HttpResponseError, match="is not replicated to region 'eastus'"):
            fake.ml_client().jobs.create_or_update(pipeline(), experiment_name="t")


def test_amlft_never_sends_a_request_the_service_would_refuse(home, capsys):
    code, out = cli(capsys, "run", "--profile", FLAGSHIP, "--rehearse")
    assert code == 0, out
    rehearsal.stop_all()
    state = FakeAzureML(rehearsal.fake_state_path(home / ".amlft")).state
    assert state["jobs"] and state["endpoints"] and state["deployments"]  # it did create all three
    assert state.get("rejected", []) == []
