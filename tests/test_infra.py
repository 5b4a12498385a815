"""infra/: the Bicep template parses and deploys what amlft relies on (a cluster that scales
to zero, an identity GitHub can federate into, the roles it needs); the parameters file fits
the template; and `amlft check`'s infra comparison works through the real SDK (against the
in-process Azure ML fake)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"


@pytest.fixture(scope="module")
def bicep() -> dict[str, Any]:
    pycep = pytest.importorskip("pycep", reason="pycep-parser is a dev dependency: pip install -e '.[dev]'")
    return pycep.BicepParser().parse(file_path=INFRA / "main.bicep")


@pytest.fixture(scope="module")
def parameters() -> dict[str, Any]:
    doc = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    return {name: entry["value"] for name, entry in doc["parameters"].items()}


def _by_type(bicep: dict[str, Any], rtype: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, r["config"]) for name, r in bicep["resources"].items() if r["type"] == rtype]


def _one(bicep: dict[str, Any], rtype: str) -> tuple[str, dict[str, Any]]:
    found = _by_type(bicep, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {[n for n, _ in found]}"
    return found[0]


def _ref(expr: Any) -> tuple[str, str] | None:
    """`storage.id` as parsed by pycep -> ("storage", "id")."""
    try:
        operands = expr["operator"]["operands"]
        return operands["operand_1"], operands["operand_2"] if isinstance(operands["operand_2"], str) else "..."
    except (TypeError, KeyError):
        return None


def _render(template: str, values: dict[str, Any]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), template)


# ------------------------------------------------------------------ the template
def test_workspace_with_its_storage_key_vault_and_application_insights(bicep: dict[str, Any]) -> None:
    storage, _ = _one(bicep, "Microsoft.Storage/storageAccounts")
    vault, vault_cfg = _one(bicep, "Microsoft.KeyVault/vaults")
    insights, _ = _one(bicep, "Microsoft.Insights/components")
    ws_name, ws = _one(bicep, "Microsoft.MachineLearningServices/workspaces")
    props = ws["properties"]
    assert _ref(props["storageAccount"]) == (storage, "id")
    assert _ref(props["keyVault"]) == (vault, "id")
    assert _ref(props["applicationInsights"]) == (insights, "id")
    assert ws["name"] == "workspaceName" and ws_name == "workspace"
    assert vault_cfg["properties"]["enableRbacAuthorization"] is True


def test_gpu_cluster_scales_to_zero_and_down_when_idle(bicep: dict[str, Any]) -> None:
    _, cluster = _one(bicep, "Microsoft.MachineLearningServices/workspaces/computes")
    assert cluster["parent"] == "workspace"
    assert cluster["properties"]["computeType"] == "AmlCompute"
    scale = cluster["properties"]["properties"]["scaleSettings"]
    assert scale["minNodeCount"] == 0
    params = bicep["parameters"]
    max_param = params[scale["maxNodeCount"]]
    assert {"type": "min_value", "argument": 1} in max_param["decorators"]
    idle_default = params[scale["nodeIdleTimeBeforeScaleDown"]]["default"]
    from amlft.backends.azure.infra_check import iso_duration_seconds

    assert 0 < iso_duration_seconds(idle_default) <= 30 * 60


def test_federated_credential_trusts_the_repository_environment_the_workflows_use(
        bicep: dict[str, Any], parameters: dict[str, Any]) -> None:
    identity, _ = _one(bicep, "Microsoft.ManagedIdentity/userAssignedIdentities")
    _, fed = _one(bicep, "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials")
    assert fed["parent"] == identity
    variables = bicep["variables"]
    props = fed["properties"]
    assert variables[props["issuer"]]["value"] == "https://token.actions.githubusercontent.com"
    assert props["audiences"] == ["api://AzureADTokenExchange"]
    subject = variables[props["subject"]]["value"]
    assert subject == "repo:${githubRepository}:environment:${githubEnvironment}"
    assert bicep["parameters"]["githubRepository"]["default"] is None  # must be given: no accidental trust
    # GitHub's subject for a job in environment E of repo O/R is exactly "repo:O/R:environment:E"
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", parameters["githubRepository"])
    rendered = _render(subject, {**{k: v["default"] for k, v in bicep["parameters"].items()}, **parameters})
    assert rendered == f"repo:{parameters['githubRepository']}:environment:azureml"
    for workflow in ("finetune.yml", "sweep.yml"):
        wf = yaml.safe_load((ROOT / ".github" / "workflows" / workflow).read_text(encoding="utf-8"))
        assert [job["environment"] for job in wf["jobs"].values()] == [parameters["githubEnvironment"]]


def test_the_github_identity_gets_the_roles_amlft_needs(bicep: dict[str, Any]) -> None:
    identity, _ = _one(bicep, "Microsoft.ManagedIdentity/userAssignedIdentities")
    roles = bicep["variables"]["roleIds"]["value"]
    assignments = {}
    for _, cfg in _by_type(bicep, "Microsoft.Authorization/roleAssignments"):
        role_key = cfg["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        role_id = roles[_ref(role_key)[1]]
        principal = cfg["properties"]["principalId"]["operator"]["operands"]["operand_1"]
        assert principal == identity and cfg["properties"]["principalType"] == "ServicePrincipal"
        assignments[role_id] = cfg.get("scope", "resourceGroup")
    assert assignments[DATA_SCIENTIST] == "workspace"  # jobs, models, endpoints - not computes
    assert assignments[roles["storageBlobDataContributor"]] == "storage"  # data upload to the datastore
    outputs = bicep["outputs"]
    assert _ref(outputs["githubClientId"]["value"])[0] == identity  # what goes into AZURE_CLIENT_ID


def test_parameters_file_fits_the_template(bicep: dict[str, Any], parameters: dict[str, Any]) -> None:
    declared = bicep["parameters"]
    assert set(parameters) <= set(declared), f"unknown parameters: {set(parameters) - set(declared)}"
    required = {name for name, p in declared.items() if p["default"] is None}
    assert required <= set(parameters), f"required parameters missing: {required - set(parameters)}"
    for name, value in parameters.items():
        for deco in declared[name]["decorators"]:
            kind, arg = deco["type"], deco.get("argument")
            if kind == "min_length":
                assert len(value) >= arg, name
            elif kind == "max_length":
                assert len(value) <= arg, name
            elif kind == "min_value":
                assert value >= arg, name
            elif kind == "allowed":
                assert value in arg, name
    assert re.fullmatch(r"[a-z0-9]+", parameters.get("namePrefix", declared["namePrefix"]["default"]))


def test_infra_check_defaults_match_the_template(bicep: dict[str, Any]) -> None:
    from amlft.backends.azure.infra_check import INFRA_DEFAULTS

    for name, value in INFRA_DEFAULTS.items():
        assert bicep["parameters"][name]["default"] == value, name


def test_readme_gives_the_deploy_command_and_the_idle_cost() -> None:
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    command = re.search(r"az deployment group create[^`]*?(?=\n```)", text, re.S)
    assert command, "infra/README.md must show the az deployment group create command"
    for part in ("--template-file infra/main.bicep", "--parameters infra/main.parameters.json",
                 "githubRepository="):
        assert part in command.group(0)
    assert re.search(r"(?i)idle", text) and "$" in text


# ------------------------------------------------------------------ amlft check vs the live workspace
def _params_file(tmp_path: Path, **values: Any) -> Path:
    path = tmp_path / "main.parameters.json"
    path.write_text(json.dumps({"parameters": {k: {"value": v} for k, v in values.items()}}))
    return path


@pytest.fixture
def fake(tmp_path: Path):
    pytest.importorskip("azure.ai.ml")
    from amlft.testing import FakeAzureML

    with FakeAzureML(tmp_path / "fake.json") as f:
        yield f


def _profile(cluster: str | None = None) -> Any:
    from amlft.config import Profile

    return Profile.from_dict({"backend": "azure", "compute": {"cluster": cluster}})


def test_matching_workspace_has_no_findings(fake: Any, tmp_path: Path) -> None:
    from amlft.backends.azure.infra_check import check_workspace_against_infra

    # the shipped parameters file, the shipped profile's cluster and the fake's workspace agree
    profile = _profile(yaml.safe_load((ROOT / "jobs" / "phi3-mini-ultrachat.yml").read_text())["compute"]["cluster"])
    params = INFRA / "main.parameters.json"
    assert check_workspace_against_infra(fake.ml_client(), profile, parameters_path=params) == []
    assert check_workspace_against_infra(fake.ml_client(), _profile(), parameters_path=None) == []


def test_missing_cluster_is_an_error_with_the_deploy_command(fake: Any, tmp_path: Path) -> None:
    from amlft.backends.azure.infra_check import check_workspace_against_infra

    params = _params_file(tmp_path, computeClusterName="gpu-h100")
    (finding,) = check_workspace_against_infra(fake.ml_client(), _profile(), parameters_path=params)
    assert finding["severity"] == "error" and finding["check"] == "infra"
    assert "no compute cluster 'gpu-h100'" in finding["message"]
    assert "az deployment group create" in finding["fix"]


def test_drifted_cluster_warns_about_idle_billing(fake: Any, tmp_path: Path) -> None:
    from amlft.backends.azure.infra_check import check_workspace_against_infra

    with fake._store.transaction() as st:  # someone raised min nodes in the portal
        st["computes"][fake.cluster_name]["min_nodes"] = 1
    params = _params_file(tmp_path, computeClusterName="gpu-h100", computeIdleTimeBeforeScaleDown="PT15M")
    findings = check_workspace_against_infra(fake.ml_client(), _profile(fake.cluster_name), parameters_path=params)
    by_severity = {(f["severity"], f["message"].split(" ")[0]) for f in findings}
    assert ("info", "The") in by_severity  # profile cluster != infra cluster
    messages = " | ".join(f["message"] for f in findings)
    assert "keeps 1 node(s) running when idle" in messages
    assert "1800 s before scaling down; the infrastructure sets 900 s" in messages
    assert all(f["fix"] for f in findings)


def test_parameters_file_is_found_from_the_repo_and_overridable(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from amlft.backends.azure.infra_check import find_parameters_file, load_infra_parameters
    from amlft.errors import ConfigError

    monkeypatch.delenv("AMLFT_INFRA_PARAMETERS", raising=False)
    assert find_parameters_file(ROOT / "src" / "amlft") == INFRA / "main.parameters.json"
    assert find_parameters_file(tmp_path) is None
    assert load_infra_parameters(None)["computeClusterName"] == "gpu-a100"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv("AMLFT_INFRA_PARAMETERS", str(bad))
    assert find_parameters_file(tmp_path) == bad
    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_infra_parameters(bad)
