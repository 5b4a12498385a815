"""Does the live workspace still look like what infra/main.bicep deploys?

People deploy the infrastructure once and then drift: someone deletes the cluster, or
raises its minimum node count "to make it start faster" and it bills around the clock.
`amlft check` reports that before anything is submitted. Expected values come from the
Bicep parameters file the user deployed with (found at runtime), falling back to the
template's own defaults, so the check follows the user's infrastructure, not ours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amlft.extras import needs_extra

# Keep in step with the parameter defaults in infra/main.bicep (tests/test_infra.py checks it).
INFRA_DEFAULTS: dict[str, Any] = {
    "computeClusterName": "gpu-a100",
    "computeVmSize": "Standard_NC24ads_A100_v4",
    "computeMaxNodes": 1,
    "computeIdleTimeBeforeScaleDown": "PT30M",
}
PARAMETERS_ENV = "AMLFT_INFRA_PARAMETERS"
PARAMETERS_FILE = Path("infra") / "main.parameters.json"
DEPLOY_FIX = ("Deploy the infrastructure: az deployment group create --resource-group <rg> "
              "--template-file infra/main.bicep --parameters infra/main.parameters.json "
              "(see infra/README.md)")


def find_parameters_file(start: Path | None = None) -> Path | None:
    """$AMLFT_INFRA_PARAMETERS, else infra/main.parameters.json here or in a parent folder."""
    explicit = os.environ.get(PARAMETERS_ENV)
    if explicit:
        return Path(explicit)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PARAMETERS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_infra_parameters(path: Path | None) -> dict[str, Any]:
    """The deployment parameters' values over the template defaults.

    Accepts the ARM deploymentParameters format ({"parameters": {name: {"value": v}}}).
    """
    values = dict(INFRA_DEFAULTS)
    if path is None:
        return values
    from amlft.errors import ConfigError

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the infrastructure parameters file {path}: {exc}",
                          hint=f"Fix the file, or point {PARAMETERS_ENV} at the one you deployed with.") from exc
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} has no 'parameters' object (expected the ARM deploymentParameters format).",
                          hint="See infra/main.parameters.json for the expected shape.")
    for name, entry in params.items():
        if isinstance(entry, dict) and "value" in entry:
            values[name] = entry["value"]
    return values


def iso_duration_seconds(text: str) -> int | None:
    """Seconds in an ISO 8601 duration like PT15M or P1DT2H; None when it is not one (or has months/years)."""
    import datetime as dt

    import isodate

    text = str(text).strip().upper()
    if text in ("P", "PT"):  # isodate reads these as zero; they are not durations
        return None
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError):
        return None
    return int(value.total_seconds()) if isinstance(value, dt.timedelta) else None


def _finding(severity: str, code: str, message: str, fix: str) -> dict[str, str]:
    return {"severity": severity, "check": "infra", "code": f"infra.{code}", "message": message, "fix": fix}


def check_workspace_against_infra(ml_client: Any, profile: Any, *,
                                  parameters_path: Path | None = None) -> list[dict[str, str]]:
    """Findings where the live workspace lacks or contradicts what the infrastructure defines.

    Checks the cluster the run will use (the profile's compute.cluster, else the one the
    infrastructure defines): it exists, scales to zero, and scales down when idle no later
    than the infrastructure says. Never raises for what it finds; every problem is a finding.
    """
    with needs_extra("azure", purpose="Checking Azure infrastructure"):
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    path = parameters_path or find_parameters_file()
    expected = load_infra_parameters(path)
    source = str(path) if path else "infra/main.bicep defaults"
    infra_cluster = str(expected["computeClusterName"])
    profile_cluster = getattr(getattr(profile, "compute", None), "cluster", None)
    cluster = profile_cluster or infra_cluster
    findings: list[dict[str, str]] = []

    if path is not None and profile_cluster and profile_cluster != infra_cluster:
        findings.append(_finding(
            "info", "cluster_differs", f"The profile uses compute cluster '{profile_cluster}'; the infrastructure ({source}) "
                    f"defines '{infra_cluster}'.",
            f"Set compute.cluster: {infra_cluster} in the profile, or computeClusterName in {source}."))
    try:
        compute = ml_client.compute.get(cluster)
    except ResourceNotFoundError:
        return [*findings, _finding(
            "error", "cluster_missing", f"The workspace has no compute cluster '{cluster}' (the infrastructure, {source}, "
                     "defines a GPU cluster that scales to zero).", DEPLOY_FIX)]
    except HttpResponseError as exc:
        return [*findings, _finding(
            "warning", "cluster_unreadable", f"Could not read compute cluster '{cluster}' to compare it with the infrastructure "
                       f"(HTTP {exc.status_code}).",
            "Give this identity the AzureML Data Scientist role on the workspace (infra/main.bicep does).")]

    if str(getattr(compute, "type", "")).lower() != "amlcompute":
        findings.append(_finding(
            "error", "not_a_cluster", f"'{cluster}' is a {getattr(compute, 'type', 'compute')}, not a compute cluster (AmlCompute).",
            f"Point compute.cluster at a cluster, or create '{infra_cluster}' with infra/main.bicep."))
        return findings

    min_nodes = int(getattr(compute, "min_instances", 0) or 0)
    if min_nodes > 0:
        findings.append(_finding(
            "warning", "idle_nodes", f"Compute cluster '{cluster}' keeps {min_nodes} node(s) running when idle: it bills "
                       f"around the clock (the infrastructure sets 0).",
            f"az ml compute update --name {cluster} --min-instances 0 (or redeploy infra/main.bicep)."))

    want_idle = iso_duration_seconds(str(expected.get("computeIdleTimeBeforeScaleDown", "")))
    idle = getattr(compute, "idle_time_before_scale_down", None)
    if want_idle is not None and idle is not None and int(idle) > want_idle:
        findings.append(_finding(
            "warning", "scale_down_slow", f"Compute cluster '{cluster}' keeps idle nodes for {int(idle)} s before scaling down; "
                       f"the infrastructure sets {want_idle} s.",
            f"az ml compute update --name {cluster} --idle-time-before-scale-down {want_idle}"))

    want_size = str(expected.get("computeVmSize") or "")
    size = str(getattr(compute, "size", "") or "")
    if cluster == infra_cluster and want_size and size and size.lower() != want_size.lower():
        findings.append(_finding(
            "info", "size_differs", f"Compute cluster '{cluster}' uses {size}; the infrastructure ({source}) defines {want_size}.",
            f"Update computeVmSize in {source} to match, or recreate the cluster."))
    return findings
