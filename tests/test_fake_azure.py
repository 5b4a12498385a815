"""The in-process Azure ML fake, driven by the real azure-ai-ml SDK (no stand-in MLClient)."""

from __future__ import annotations

import ast
import http.server
import threading
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml")
pytest.importorskip("responses")

import requests
from azure.ai.ml import Input, dsl
from azure.ai.ml.entities import (
    Data,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineRequestSettings,
    ProbeSettings,
)
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from amlft.testing import FAULTS, FakeAzureML

CHAT = {"input_data": {"input_string": [{"role": "user", "content": "What is LoRA?"}],
                       "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}}}


@pytest.fixture
def fake(tmp_path: Path):
    with FakeAzureML(tmp_path / "fake-azure.json", tick_s=600) as f:
        yield f
    assert not [u for u in f.unhandled if "fake error" in u], f.unhandled


def _submit(fake: FakeAzureML, tmp_path: Path) -> str:
    ml, reg = fake.ml_client(), fake.registry_client()
    model = reg.models.get("Phi-3-mini-4k-instruct", label="latest")
    component = reg.components.get("chat_completion_pipeline", label="latest")
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    asset = ml.data.create_or_update(Data(name="ultrachat-train", version="1", path=str(train), type="uri_file"))

    @dsl.pipeline(name="phi3-ft", default_compute=fake.cluster_name)
    def pipeline(train_file):
        step = component(
            mlflow_model_path=Input(type="mlflow_model", path=model.id),
            train_file_path=train_file, test_file_path=train_file,
            compute_model_import=fake.cluster_name, compute_preprocess=fake.cluster_name,
            compute_finetune=fake.cluster_name, compute_model_evaluation=fake.cluster_name,
            number_of_gpu_to_use_finetuning=1, num_train_epochs=3, apply_lora="true", precision="16",
        )
        return {"trained_model": step.outputs.mlflow_model_folder}

    job = pipeline(train_file=Input(type="uri_file", path=f"azureml:{asset.name}:{asset.version}"))
    job.settings.force_rerun = True
    job.settings.continue_on_step_failure = False
    return ml.jobs.create_or_update(job, experiment_name="amlft-test").name


LEAVES = ["ft_nlp_common_validation", "chat_completion_model_import", "chat_completion_datapreprocess",
          "chat_completion_finetune", "ft_nlp_model_converter"]


def _leaves(ml, name: str) -> list:
    """The job's one child is the pipeline node; its children are the steps (as on the service)."""
    (node,) = list(ml.jobs.list(parent_job_name=name))
    return list(ml.jobs.list(parent_job_name=node.name))


def _wait(ml, name: str, polls: int = 60):
    seen: dict[str, set[str]] = {}
    for _ in range(polls):
        job = ml.jobs.get(name)
        for child in _leaves(ml, name):
            seen.setdefault(child.display_name, set()).add(child.status)
        if job.status in ("Completed", "Failed", "Canceled"):
            return job, seen
    raise AssertionError(f"job {name} never finished: {job.status}")


def _deploy(ml, endpoint: str = "amlft-ep-test", instance_type: str = "Standard_NC6s_v3"):
    ml.online_endpoints.begin_create_or_update(
        ManagedOnlineEndpoint(name=endpoint, auth_mode="key", tags={"amlft-run-id": "r1"})).result()
    ml.models.create_or_update(Model(name="phi3-ultrachat", version="1", type="mlflow_model",
                                     path="azureml://jobs/j1/outputs/trained_model"))
    return ml.online_deployments.begin_create_or_update(ManagedOnlineDeployment(
        name="default", endpoint_name=endpoint, model="azureml:phi3-ultrachat:1", instance_type=instance_type,
        instance_count=1, liveness_probe=ProbeSettings(initial_delay=600),
        request_settings=OnlineRequestSettings(request_timeout_ms=90000)))


def test_registry_model_and_component_as_the_reference_flow_saw_them(fake):
    reg = fake.registry_client("azureml")
    model = reg.models.get("Phi-3-mini-4k-instruct", label="latest")
    assert (model.version, model.stage) == ("15", "Archived")
    assert reg.models.get("Phi-3-mini-4k-instruct", version="15").id == model.id
    assert "Standard_NC24ads_A100_v4" in ast.literal_eval(model.tags["finetune_compute_allow_list"])
    assert "Standard_NC6s_v3" in ast.literal_eval(model.tags["inference_compute_allow_list"])
    assert ast.literal_eval(model.tags["model_specific_defaults"])["apply_lora"] == "true"
    assert [m.version for m in reg.models.list("Phi-3-mini-4k-instruct")] == ["15"]
    with pytest.raises(ResourceNotFoundError):
        reg.models.get("Phi-3-mini-4k-instruct", version="99")

    component = reg.components.get("chat_completion_pipeline", label="latest")
    assert component.version == "0.0.82"
    assert len(component.inputs) == 69 and set(component.outputs) == {"pytorch_model_folder", "mlflow_model_folder"}
    with pytest.raises(Exception, match="unexpected keyword"):
        component(learning_rate_min=1e-6)


def test_compute_sizes_and_usage(fake):
    ml = fake.ml_client()
    cluster = ml.compute.get(fake.cluster_name)
    assert (cluster.size, cluster.min_instances, cluster.provisioning_state) == (
        "Standard_NC24ads_A100_v4", 0, "Succeeded")
    gpus = {s.name: s.gpus for s in ml.compute.list_sizes()}
    assert gpus["Standard_NC24ads_A100_v4"] == 1 and gpus["Standard_ND96amsr_A100_v4"] == 8
    # SDK 1.35 quirk: Usage copies the REST dict as is, so `name` is a dict and the current
    # value sits under the wire name `currentValue` (`current_value` stays None).
    usage = {u.name["value"]: (vars(u)["currentValue"], u.limit) for u in ml.compute.list_usage()}
    assert usage["standardNCADSA100v4Family"] == (0, 96)
    with pytest.raises(ResourceNotFoundError):
        ml.compute.get("no-such-cluster")


def test_data_upload_then_same_content_uploads_nothing(fake, tmp_path):
    ml = fake.ml_client()
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hello"}]}\n')
    first = ml.data.create_or_update(Data(name="train", version="1", path=str(path), type="uri_file"))
    blob_puts = [r for r in fake.requests if r.startswith("PUT") and ".blob.core.windows.net" in r]
    assert blob_puts, "the first upload must write the blob"
    uploaded = next(iter(fake.state["blobs"].values()))
    assert any(b["size"] == path.stat().st_size for b in uploaded.values())

    before = len(fake.requests)
    second = ml.data.create_or_update(Data(name="train", version="2", path=str(path), type="uri_file"))
    again = [r for r in fake.requests[before:] if r.startswith("PUT") and ".blob.core.windows.net" in r]
    assert again == [] and second.path == first.path
    assert sorted(d.version for d in ml.data.list("train")) == ["1", "2"]
    assert ml.data.get("train", version="1").path == first.path
    with pytest.raises(ResourceNotFoundError):
        ml.data.get("train", version="3")


def test_pipeline_job_runs_children_to_completion_on_virtual_clock(fake, tmp_path):
    ml = fake.ml_client()
    name = _submit(fake, tmp_path)
    assert ml.jobs.get(name).status in ("NotStarted", "Running")
    job, seen = _wait(ml, name)
    assert job.status == "Completed"
    assert job.studio_url.startswith("https://ml.azure.com/runs/" + name)
    assert list(seen) == LEAVES
    assert {"Running", "Completed"} <= seen["chat_completion_finetune"]
    finetune = next(c for c in _leaves(ml, name) if c.display_name == "chat_completion_finetune")
    assert ml.jobs.get(finetune.name).status == "Completed"
    logs = ml.jobs._runs_operations.get_run_details(finetune.name).log_files
    text = requests.get(logs["user_logs/std_log.txt"], timeout=5).text
    assert "chat_completion_finetune completed successfully" in text

    model = ml.models.create_or_update(Model(name="phi3-ultrachat", version="1", type="mlflow_model",
                                             path=f"azureml://jobs/{name}/outputs/trained_model",
                                             tags={"job": name}))
    assert ml.models.get("phi3-ultrachat", version="1").tags["job"] == name
    assert model.path == f"azureml://jobs/{name}/outputs/trained_model"


def test_state_persists_across_processes(tmp_path):
    state = tmp_path / "shared.json"
    with FakeAzureML(state, tick_s=600) as first:
        name = _submit(first, tmp_path)
        first.add_fault("container_crash")
    with FakeAzureML(state, tick_s=600) as second:
        assert "container_crash" in second.faults
        job, _ = _wait(second.ml_client(), name)
        assert job.status == "Completed"


def test_cancel(fake, tmp_path):
    ml = fake.ml_client()
    name = _submit(fake, tmp_path)
    ml.jobs.begin_cancel(name).result()
    job, seen = _wait(ml, name)
    assert job.status == "Canceled"
    assert "Completed" not in seen["ft_nlp_model_converter"]


def test_endpoint_deployment_keys_scoring_and_delete(fake):
    ml = fake.ml_client()
    dep = _deploy(ml).result()
    assert dep.provisioning_state == "Succeeded"
    endpoint = ml.online_endpoints.get("amlft-ep-test")
    endpoint.traffic = {"default": 100}
    endpoint = ml.online_endpoints.begin_create_or_update(endpoint).result()
    assert endpoint.traffic == {"default": 100}
    assert endpoint.scoring_uri == "https://amlft-ep-test.eastus.inference.ml.azure.com/score"
    assert [(e.name, e.tags["amlft-run-id"]) for e in ml.online_endpoints.list()] == [("amlft-ep-test", "r1")]
    assert fake.left_running() == ["endpoint:amlft-ep-test", "deployment:amlft-ep-test/default"]

    key = ml.online_endpoints.get_keys("amlft-ep-test").primary_key
    ok = requests.post(endpoint.scoring_uri, json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert ok.status_code == 200 and "rehearsal" in ok.json()["output"]
    assert requests.post(endpoint.scoring_uri, json=CHAT, timeout=5).status_code == 401
    assert "Listening" in ml.online_deployments.get_logs("default", "amlft-ep-test", lines=20)

    ml.online_endpoints.begin_delete("amlft-ep-test").result()
    assert fake.left_running() == []
    with pytest.raises(ResourceNotFoundError):
        ml.online_endpoints.get("amlft-ep-test")


def test_unknown_routes_fail_loudly_and_loopback_passes_through(fake):
    reply = requests.get("https://management.azure.com/subscriptions/x/nothing-here", timeout=5)
    assert reply.status_code == 501 and "GET management.azure.com/subscriptions/x/nothing-here" in reply.text
    assert fake.unhandled == ["GET management.azure.com/subscriptions/x/nothing-here"]

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"local")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        assert requests.get(f"http://127.0.0.1:{server.server_port}/", timeout=5).text == "local"
    finally:
        server.server_close()


# -- faults --------------------------------------------------------------------------------------------
def test_unknown_fault_is_rejected():
    with pytest.raises(ValueError, match="throttle"):
        FakeAzureML(faults=["nope"])
    assert len(FAULTS) == 14 and {"quota_exceeded", "job_not_responding"} <= set(FAULTS)


@pytest.mark.parametrize(("fault", "status"), [("throttle", 429), ("server_error", 500)])
def test_transient_faults_are_retried_to_success(tmp_path, fault, status):
    with FakeAzureML(tmp_path / "f.json", faults=[fault]) as fake:
        ml = fake.ml_client(retry_backoff_factor=0.01)
        assert ml.compute.get(fake.cluster_name).size == "Standard_NC24ads_A100_v4"
        assert ml.compute.get(fake.cluster_name).size == "Standard_NC24ads_A100_v4"
        statuses = [s for _, _, s in fake.log]
        assert statuses.count(status) == 2 and statuses[-1] == 200


def test_the_registry_is_seeded_as_it_is_today_phi3_mini_archived(tmp_path):
    with FakeAzureML(tmp_path / "f.json") as fake:
        reg = fake.registry_client()
        model = reg.models.get("Phi-3-mini-4k-instruct", label="latest")
        assert model.stage == "Archived" and model.tags["finetune_deprecation_date"] == "2025-08-30"
        assert reg.models.get("Phi-4-mini-instruct", label="latest").stage == "Production"


def test_model_retired_fault_retires_the_flagship(tmp_path):
    with FakeAzureML(tmp_path / "f.json", faults=["model_retired"]) as fake:
        reg = fake.registry_client()
        model = reg.models.get("Phi-4-mini-instruct", label="latest")
        assert model.stage == "Archived" and model.tags["finetune_deprecation_date"] == "2025-08-30"
        assert reg.models.get("Phi-3.5-mini-instruct", label="latest").stage == "Production"


def test_cluster_faults(tmp_path):
    with FakeAzureML(tmp_path / "f.json", faults=["cluster_failed", "sku_not_allowed"]) as fake:
        ml = fake.ml_client()
        cluster = ml.compute.get(fake.cluster_name)
        assert cluster.provisioning_state == "Failed"
        assert "AllocationFailed" in str(cluster.provisioning_errors)
        allow = fake.registry_client().models.get("Phi-3-mini-4k-instruct", label="latest").tags
        assert cluster.size not in ast.literal_eval(allow["finetune_compute_allow_list"])


def test_finetune_step_fails_with_a_log(tmp_path):
    with FakeAzureML(tmp_path / "f.json", faults=["finetune_step_fails"], tick_s=600) as fake:
        ml = fake.ml_client()
        job, seen = _wait(ml, _submit(fake, tmp_path))
        assert job.status == "Failed"
        assert "Failed" in seen["chat_completion_finetune"] and seen["ft_nlp_model_converter"] == {"NotStarted"}
        child = next(c for c in _leaves(ml, job.name) if c.status == "Failed")
        assert child.display_name == "chat_completion_finetune"
        details = ml.jobs._runs_operations.get_run_details(child.name)
        assert "CUDA out of memory" in details.error.error.message
        log = requests.get(details.log_files["user_logs/std_log.txt"], timeout=5).text
        assert "torch.OutOfMemoryError" in log and log.index("Traceback") < log.index("OutOfMemoryError")


def test_deployment_quota_fault(tmp_path):
    with FakeAzureML(tmp_path / "f.json", faults=["deployment_quota"]) as fake:
        ml = fake.ml_client()
        with pytest.raises(HttpResponseError, match=r"Not enough quota available for Standard_NC6s_v3.*"
                                                    r"Additional needed: 8"):
            _deploy(ml).result()
        ml.online_endpoints.begin_delete("amlft-ep-test").result()
        assert fake.left_running() == []


def test_container_crash_fault(tmp_path):
    with FakeAzureML(tmp_path / "f.json", faults=["container_crash"]) as fake:
        ml = fake.ml_client()
        with pytest.raises(HttpResponseError, match=r"ResourceNotReady|crashed"):
            _deploy(ml).result()
        assert ml.online_deployments.get("default", "amlft-ep-test").provisioning_state == "Failed"
        assert "Traceback" in ml.online_deployments.get_logs("default", "amlft-ep-test", lines=50)
        ml.online_endpoints.begin_delete("amlft-ep-test").result()
        assert fake.left_running() == []


def test_endpoint_name_taken_fault(tmp_path):
    with FakeAzureML(tmp_path / "f.json", faults=["endpoint_name_taken"]) as fake:
        ml = fake.ml_client()
        with pytest.raises(HttpResponseError, match="already exists in region 'eastus'"):
            ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="amlft-ep", auth_mode="key"))
        assert fake.left_running() == []
