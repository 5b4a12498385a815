"""`amlft runs` and `amlft profile`: what runs exist here, and what a profile may contain."""

from __future__ import annotations

import json

import click

from amlft.cli.common import finish, json_option, make_console


@click.command("runs")
@click.option("--show", "show_id", metavar="ID", help="Print one run record in full.")
@json_option
def runs_cmd(show_id: str | None, json_mode: bool) -> None:
    """List the runs in this directory (newest first) and what each left running."""
    from amlft.records import RunRecord, list_runs

    console = make_console(json_mode)
    if show_id:
        rec = RunRecord.load(show_id)
        if json_mode:
            console.result(**rec.data)
        else:
            click.echo(json.dumps(rec.data, indent=2, ensure_ascii=False))
        finish(console)
        return
    runs = list_runs()
    console.table([{"run": r["run_id"], "backend": r.get("backend"), "rehearse": r.get("rehearse"),
                    "status": r.get("status"), "created": r.get("created_at"),
                    "live": ", ".join(r.get("live_resources") or []) or "-"} for r in runs])
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
