"""Pure logic of the Azure backend: SKUs, allow-lists, names, parameter precedence,
workspace resolution, retirement - no SDK calls, no network."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from amlft.backends.azure import names, pipeline, preflight, skus
from amlft.backends.azure.auth import in_ci, resolve_workspace
from amlft.config import WorkspaceConfig
from amlft.errors import AuthError

SNAP = pipeline.load_snapshot()["inputs"]


# ------------------------------------------------------------------ SKUs
def test_gpu_table_matches_issue_and_tolerates_prefix_and_case():
    assert skus.gpus_per_node("Standard_NC24ads_A100_v4") == 1
    assert skus.gpus_per_node("nc96ads_a100_v4") == 4
    assert skus.gpus_per_node("STANDARD_ND96ISR_H100_V5") == 8
    assert skus.gpus_per_node("Standard_ND40rs_v2") == 8
    assert skus.gpus_per_node("Standard_D4s_v3") is None


def test_allow_list_parsing_python_literal_and_csv():
    assert skus.parse_sku_list("['Standard_NC24ads_A100_v4', 'Standard_ND96asr_v4']") == [
        "Standard_NC24ads_A100_v4", "Standard_ND96asr_v4"]
    assert skus.parse_sku_list("Standard_NC6s_v3, Standard_NC12s_v3") == ["Standard_NC6s_v3", "Standard_NC12s_v3"]
    assert skus.parse_sku_list(["a"]) == ["a"]
    assert skus.parse_sku_list("") == []
    assert skus.sku_allowed("standard_nc24ads_a100_v4", ["Standard_NC24ads_A100_v4"])
    assert not skus.sku_allowed("Standard_NC6s_v3", ["Standard_NC24ads_A100_v4"])


def test_finetune_sku_rules_tag_then_system_metadata_then_k80_fallback():
    tagged = SimpleNamespace(tags={"finetune_compute_allow_list": "['Standard_NC24ads_A100_v4']"}, _system_metadata=None)
    assert preflight.finetune_allow_list(tagged) == ["Standard_NC24ads_A100_v4"]
    assert "not in the model's fine-tune allow-list" in preflight.finetune_sku_problem(
        "Standard_NC6s_v3", preflight.finetune_allow_list(tagged))
    meta = SimpleNamespace(tags={}, _system_metadata={"finetune_compute_allow_list": ["Standard_NC6s_v3"]})
    assert preflight.finetune_allow_list(meta) == ["Standard_NC6s_v3"]
    assert preflight.finetune_sku_problem("standard_nc6s_v3", ["Standard_NC6s_v3"]) is None
    bare = SimpleNamespace(tags={}, _system_metadata=None)
    assert preflight.finetune_allow_list(bare) is None
    assert "K80" in preflight.finetune_sku_problem("Standard_NC12", None)
    assert preflight.finetune_sku_problem("Standard_NC24ads_A100_v4", None) is None


def test_cost_uses_profile_prices_over_the_dated_table():
    c = skus.cost_summary(cluster_sku="Standard_NC24ads_A100_v4", num_nodes=2, endpoint_sku="Standard_NC6s_v3",
                          instance_count=1)
    assert c["cluster_usd_per_hour"] == pytest.approx(7.34)
    assert c["endpoint_usd_per_day"] == pytest.approx(3.06 * 24)
    assert c["price_table_date"] == skus.PRICE_TABLE_DATE and "/day if kept" in c["summary"]
    c2 = skus.cost_summary(cluster_sku="Standard_NC24ads_A100_v4", num_nodes=1, endpoint_sku="NC6s_v3",
                           instance_count=2, overrides={"Standard_NC6s_v3": 1.0})
    assert c2["endpoint_usd_per_hour"] == 2.0 and "profile prices" in c2["summary"]


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("name,ok", [("abc", True), ("ab", False), ("a" * 32, True), ("a" * 33, False),
                                     ("1abc", False), ("abc-", False), ("ab_c", False), ("my-end-1", True)])
def test_endpoint_name_rules(name, ok):
    assert (names.name_problem(name, what="Endpoint") is None) is ok


def test_generated_endpoint_names_are_valid_and_distinct():
    a = names.endpoint_name_for_run("phi3-mini-ultrachat-20250101-120000-ab12")
    b = names.endpoint_name_for_run("phi3-mini-ultrachat-20250101-120000-ab13")
    assert a != b
    for n in (a, b, names.endpoint_name_for_run("x.y_z" * 20)):
        assert names.name_problem(n, what="Endpoint") is None, n


def test_registered_model_name_replaces_slashes():
    assert names.registered_model_name("Phi-3-mini-4k-instruct", "HuggingFaceH4/ultrachat_200k") == \
        "Phi-3-mini-4k-instruct-HuggingFaceH4-ultrachat_200k"


# ------------------------------------------------------------------ parameters
PHI3_DEFAULTS = repr({"apply_deepspeed": "true", "deepspeed_stage": "2", "apply_lora": "true", "precision": "16",
                      "num_train_epochs": "1", "learning_rate_min": "1e-06", "learning_rate_max": "5e-05",
                      "max_seq_length": "4096"})


def test_precedence_user_over_model_defaults_over_project_defaults():
    m = pipeline.merge_parameters({"num_train_epochs": 5}, PHI3_DEFAULTS, SNAP)
    assert m.values["num_train_epochs"] == 5 and m.sources["num_train_epochs"] == "profile"
    assert m.values["max_seq_length"] == 4096 and m.sources["max_seq_length"] == "model default"
    assert m.values["lr_scheduler_type"] == "cosine" and m.sources["lr_scheduler_type"] == "project default"
    assert m.values["learning_rate"] == 5e-6
    assert m.dropped == ["learning_rate_max", "learning_rate_min"]
    assert m.errors == []


def test_types_follow_the_component_flags_strings_ints_numbers():
    m = pipeline.merge_parameters({"apply_lora": True, "merge_lora_weights": False, "deepspeed_stage": 3,
                                   "precision": 16, "lora_dropout": "0.1", "save_total_limit": 2.0}, None, SNAP)
    v = m.values
    assert v["apply_lora"] == "true" and v["merge_lora_weights"] == "false"
    assert v["deepspeed_stage"] == "3" and v["precision"] == "16"
    assert v["lora_dropout"] == 0.1 and isinstance(v["save_total_limit"], int)


def test_user_unknown_reserved_and_bad_values_are_errors():
    m = pipeline.merge_parameters({"num_train_epoch": 1, "compute_finetune": "x", "optim": "sgd",
                                   "apply_lora": "yes", "num_train_epochs": 1.5}, None, SNAP)
    text = "\n".join(m.errors)
    assert "num_train_epoch is not an input" in text and "did you mean num_train_epochs" in text
    assert "compute_finetune is set by amlft from compute.cluster" in text
    assert "optim must be one of adamw_torch, adafactor" in text
    assert "apply_lora must be true or false" in text
    assert "whole number" in text


def test_display_name_encodes_the_run():
    params = pipeline.merge_parameters({"gradient_accumulation_steps": 4, "save_total_limit": 1}, None, SNAP).values
    name = pipeline.display_name("Phi-3-mini-4k-instruct", "ultrachat_200k", params, gpus_per_node=2, num_nodes=1)
    assert name == "Phi-3-mini-4k-instruct-ultrachat_200k-bs8-cosine-ds2-lora-save_limit1-seqlen-1"


def test_validate_spec_flags_unknown_inputs_and_types():
    spec = pipeline.JobSpec(component="c", model_path="m", cluster="gpu", files={"train_file_path": "t", "bogus_path": "x"},
                            gpus_per_node=1, num_nodes=1, parameters={"num_train_epochs": "three"}, experiment="e",
                            display_name="d", tags={})
    problems = pipeline.validate_spec(spec, SNAP)
    assert any("bogus_path is not an input" in p for p in problems)
    assert any("num_train_epochs must be an integer" in p for p in problems)


# ------------------------------------------------------------------ model retirement
def test_retirement_from_stage_and_dated_tags():
    archived = SimpleNamespace(stage="Archived", tags={"finetune_deprecation_date": "2025-08-30"}, properties={})
    assert "archived" in preflight.retirement(archived) and "2025-08-30" in preflight.retirement(archived)
    future = SimpleNamespace(stage="Production", tags={"retirement_date": "2999-01-01"}, properties={})
    assert preflight.retirement(future) is None
    past = SimpleNamespace(stage="Production", tags={"retirement_date": "2025-01-01"}, properties={})
    assert "2025-01-01" in preflight.retirement(past, today=dt.date(2025, 6, 1))


# ------------------------------------------------------------------ workspace resolution
def test_workspace_precedence_profile_env_config_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"subscription_id": "sub-cfg", "resource_group": "rg-cfg", "workspace_name": "ws-cfg"}))
    env = {"AZURE_SUBSCRIPTION_ID": "sub-env"}
    c = resolve_workspace(WorkspaceConfig(workspace_name="ws-prof"), env=env)
    assert (c.subscription_id, c.resource_group, c.workspace_name) == ("sub-env", "rg-cfg", "ws-prof")
    assert c.sources["workspace_name"] == "profile" and c.sources["subscription_id"] == "$AZURE_SUBSCRIPTION_ID"


def test_missing_subscription_names_every_source_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AuthError) as ei:
        resolve_workspace(WorkspaceConfig(resource_group="rg", workspace_name="ws"), env={"AZURE_SUBSCRIPTION_ID": "None"})
    msg = ei.value.message
    assert "subscription_id" in msg and "profile" in msg and "AZURE_SUBSCRIPTION_ID" in msg and "config.json" in msg


def test_config_json_scope_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(json.dumps(
        {"Scope": "/subscriptions/s1/resourceGroups/r1/providers/Microsoft.MachineLearningServices/workspaces/w1"}))
    c = resolve_workspace(WorkspaceConfig(), env={})
    assert (c.subscription_id, c.resource_group, c.workspace_name) == ("s1", "r1", "w1")


def test_ci_detection_disables_interactive_login():
    assert in_ci({"GITHUB_ACTIONS": "true"}) and in_ci({"CI": "1"})
    assert not in_ci({}) and not in_ci({"CI": "false"})


def test_importing_the_azure_backend_does_not_load_the_sdk():
    import subprocess
    import sys

    code = ("import sys, amlft.backends.azure.backend, amlft.backends.azure.sweep, amlft.cli.lifecycle; "
            "heavy = [m for m in ('azure.ai.ml', 'azure.identity', 'responses') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_workspace_flags_fill_coordinates_and_the_error_names_what_is_missing(tmp_path, monkeypatch):
    """--resource-group/--workspace-name are explicit sources; a missing subscription names every source tried."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AZUREML_"))}
    env["AMLFT_HOME"] = str(tmp_path / ".amlft")
    out = subprocess.run([sys.executable, "-m", "amlft.cli.main", "auth", "--profile",
                          str(Path(__file__).resolve().parents[1] / "jobs" / "phi3-mini-ultrachat.yml"),
                          "--resource-group", "rg-x", "--workspace-name", "ws-x"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "No Azure ML workspace subscription_id found" in out.stderr
    assert "AZURE_SUBSCRIPTION_ID" in out.stderr and "config.json" in out.stderr
    from amlft.records import RunRecord

    ws = RunRecord.load(root=tmp_path / ".amlft").profile["workspace"]
    assert (ws["resource_group"], ws["workspace_name"], ws["subscription_id"]) == ("rg-x", "ws-x", None)
