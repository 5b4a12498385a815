"""`amlft runs` and `amlft profile`: what runs exist here, and what a profile may contain."""

from __future__ import annotations

import json
from typing import Any

import click

from amlft.cli.common import finish, json_option, make_console


def _check_live(console: Any, summaries: list[dict[str, Any]]) -> None:
    """Replace each run's recorded live resources by a live check (process + /health locally,
    a GET on Azure); the check marks what is gone in the record."""
    from amlft.lifecycle import live_check

    for s in summaries:
        if s.get("unreadable") or not s.get("live_resources"):
            continue
        s["live_resources"] = live_check(s["run_id"], console=console)


@click.command("runs")
@click.option("--show", "show_id", metavar="ID", help="Print one run record in full (its outcome first).")
@click.option("--no-check", is_flag=True, help="Show what the records say, without checking that resources are alive.")
@json_option
def runs_cmd(show_id: str | None, no_check: bool, json_mode: bool) -> None:
    """List the runs in this directory (newest first): outcome, last step, and what is still running.

    What is shown as live is checked first: the process and its /health locally, a GET on Azure.
    """
    from amlft.records import RunRecord, list_runs

    console = make_console(json_mode)
    if show_id:
        if not no_check:
            _check_live(console, [RunRecord.load(show_id).summary()])
        rec = RunRecord.load(show_id)
        if json_mode:
            console.result(**rec.data, outcome=rec.outcome)
        else:
            reason = rec.data.get("outcome_reason")
            click.echo(f"# run {rec.run_id}: {rec.outcome}" + (f" ({reason})" if reason else "")
                       + f"; last step {rec.data.get('status')}", err=True)
            click.echo(json.dumps({"outcome": rec.outcome, **rec.data}, indent=2, ensure_ascii=False))
        finish(console)
        return
    runs = list_runs()
    if not no_check:
        _check_live(console, runs)
    console.table([{"run": r["run_id"], "backend": r.get("backend"), "rehearse": r.get("rehearse"),
                    "outcome": r.get("outcome"), "last step": r.get("status"), "created": r.get("created_at"),
                    "live": ", ".join(r.get("live_resources") or []) or "-"} for r in runs])
    for r in runs:
        if r.get("unreadable"):
            console.warn(f"run record {r['run_id']} is unreadable: {r.get('error')}; "
                         f"`amlft teardown --run {r['run_id']}` stops what can be salvaged from it")
    if not runs:
        console.info("no runs here yet: start one with `amlft run`")
    console.result(runs=runs)
    finish(console)


@click.group("profile")
def profile_group() -> None:
    """Inspect run profiles (jobs/*.yml)."""


@profile_group.command("schema")
def profile_schema() -> None:
    """Print the JSON schema of a run profile (every field, its type and default)."""
    from amlft.config import Profile

    click.echo(json.dumps(Profile.model_json_schema(), indent=2))


@profile_group.command("show")
@click.argument("path", required=False)
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE")
def profile_show(path: str | None, overrides: tuple[str, ...]) -> None:
    """Validate a profile and print it with every default filled in."""
    import yaml

    from amlft.config import Profile, resolve_profile_path

    p = resolve_profile_path(path)
    click.echo(f"# {p}")
    click.echo(yaml.safe_dump(Profile.from_yaml(p, overrides=list(overrides)).to_dict(), sort_keys=False))
