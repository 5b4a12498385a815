"""VM sizes: GPUs per node, vCPU quota family, a dated price table, allow-list parsing.

Why a built-in table: `--dry-run` must validate a job with no network, and `check` prints
what the run will cost before anything bills. Live answers (`compute.list_sizes()`,
`compute.list_usage()`) win whenever a workspace is reachable; prices are overridable
per profile (`prices:`) because list prices drift and differ by region and agreement.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

# Approximate Linux pay-as-you-go list prices, USD/hour, East US. Dated so nobody mistakes
# them for a quote; `prices:` in a profile overrides any entry.
PRICE_TABLE_DATE = "2025-06-01"


@dataclass(frozen=True)
class Sku:
    name: str
    gpus: int
    gpu: str
    vcpus: int
    family: str  # the quota family as compute.list_usage() names it
    usd_per_hour: float


_SKUS = [
    Sku("Standard_NC6s_v3", 1, "V100 16GB", 6, "standardNCSv3Family", 3.06),
    Sku("Standard_NC12s_v3", 2, "V100 16GB", 12, "standardNCSv3Family", 6.12),
    Sku("Standard_NC24s_v3", 4, "V100 16GB", 24, "standardNCSv3Family", 12.24),
    Sku("Standard_NC24rs_v3", 4, "V100 16GB", 24, "standardNCSv3Family", 13.46),
    Sku("Standard_ND40rs_v2", 8, "V100 32GB", 40, "standardNDSv2Family", 22.03),
    Sku("Standard_NC24ads_A100_v4", 1, "A100 80GB", 24, "standardNCADSA100v4Family", 3.67),
    Sku("Standard_NC48ads_A100_v4", 2, "A100 80GB", 48, "standardNCADSA100v4Family", 7.35),
    Sku("Standard_NC96ads_A100_v4", 4, "A100 80GB", 96, "standardNCADSA100v4Family", 14.69),
    Sku("Standard_ND96asr_v4", 8, "A100 40GB", 96, "standardNDASv4_A100Family", 27.20),
    Sku("Standard_ND96amsr_A100_v4", 8, "A100 80GB", 96, "standardNDAMSv4_A100Family", 32.77),
    Sku("Standard_NC4as_T4_v3", 1, "T4", 4, "standardNCASv3_T4Family", 0.53),
    Sku("Standard_NC64as_T4_v3", 4, "T4", 64, "standardNCASv3_T4Family", 4.35),
    Sku("Standard_NC40ads_H100_v5", 1, "H100 94GB", 40, "standardNCadsH100v5Family", 6.98),
    Sku("Standard_NC80adis_H100_v5", 2, "H100 94GB", 80, "standardNCadsH100v5Family", 13.96),
    Sku("Standard_ND96isr_H100_v5", 8, "H100 80GB", 96, "standardNDSH100v5Family", 98.32),
]
SKUS: dict[str, Sku] = {s.name.lower(): s for s in _SKUS}

# Tesla K80 sizes (retired): the fallback deny-list when a model publishes no allow-list.
K80_SKUS = ("standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r")


def normalize(sku: str) -> str:
    """'nc24ads_a100_v4' and 'Standard_NC24ads_A100_v4' name the same size."""
    s = sku.strip()
    return s if s.lower().startswith("standard_") else f"Standard_{s}"


def lookup(sku: str | None) -> Sku | None:
    return SKUS.get(normalize(sku).lower()) if sku else None


def gpus_per_node(sku: str) -> int | None:
    s = lookup(sku)
    return s.gpus if s else None


def known_gpu_skus() -> list[str]:
    return [s.name for s in _SKUS]


def parse_sku_list(value: Any) -> list[str]:
    """An allow-list from a model tag: a Python-literal list string ("['Standard_NC6s_v3', ...]"),
    a comma-separated string, or an actual list. Returns the names as given."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            return [str(v).strip() for v in parsed if str(v).strip()]
        text = text.strip("[]")
    return [p.strip().strip("'\"") for p in text.split(",") if p.strip().strip("'\"")]


def sku_allowed(sku: str, allow_list: list[str]) -> bool:
    """Case-insensitive, tolerant of a missing 'Standard_' prefix on either side."""
    want = normalize(sku).lower()
    return any(normalize(a).lower() == want for a in allow_list)


def price_per_hour(sku: str | None, overrides: dict[str, float] | None = None) -> float | None:
    """USD/hour for one node/instance: the profile's `prices:` first, then the built-in table."""
    if not sku:
        return None
    for k, v in (overrides or {}).items():
        if normalize(k).lower() == normalize(sku).lower():
            return float(v)
    s = lookup(sku)
    return s.usd_per_hour if s else None


def cost_summary(*, cluster_sku: str | None, num_nodes: int, endpoint_sku: str | None, instance_count: int,
                 overrides: dict[str, float] | None = None) -> dict[str, Any]:
    """The cost block recorded in outputs.check.cost and printed by check and the run summary."""
    node = price_per_hour(cluster_sku, overrides)
    inst = price_per_hour(endpoint_sku, overrides)
    cluster_h = round(node * num_nodes, 2) if node is not None else None
    ep_h = round(inst * instance_count, 2) if inst is not None else None
    ep_day = round(ep_h * 24, 2) if ep_h is not None else None
    src = "profile prices" if overrides else f"built-in list prices of {PRICE_TABLE_DATE}"
    parts = [
        f"training {num_nodes} x {cluster_sku or '?'} = " + (f"${cluster_h:.2f}/h" if cluster_h is not None else "price unknown"),
        f"endpoint {instance_count} x {endpoint_sku or '?'} = "
        + (f"${ep_h:.2f}/h (${ep_day:.2f}/day if kept)" if ep_h is not None else "price unknown"),
    ]
    return {"summary": "; ".join(parts) + f" [{src}; add `prices:` to the profile for yours]",
            "cluster_usd_per_hour": cluster_h, "endpoint_usd_per_hour": ep_h,
            "endpoint_usd_per_day": ep_day, "price_table_date": PRICE_TABLE_DATE}
