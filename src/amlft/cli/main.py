"""`amlft` entry point: a lazily-loaded command group and the one error funnel.

Commands are imported only when invoked (or when --help lists them, which imports only
these light click modules), so `amlft --help` never pays for azure.ai.ml or torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from amlft.version import __version__

# command name -> "module:attribute"; order is the order shown in --help.
# A new command is one line here plus its module in amlft/cli/.
COMMANDS: dict[str, str] = {
    "run": "amlft.cli.lifecycle:run_cmd",
    "auth": "amlft.cli.lifecycle:auth_cmd",
    "check": "amlft.cli.lifecycle:check_cmd",
    "data": "amlft.cli.data:data_group",
    "submit": "amlft.cli.lifecycle:submit_cmd",
    "wait": "amlft.cli.lifecycle:wait_cmd",
    "register": "amlft.cli.lifecycle:register_cmd",
    "deploy": "amlft.cli.lifecycle:deploy_cmd",
    "invoke": "amlft.cli.lifecycle:invoke_cmd",
    "bench": "amlft.cli.bench:bench_cmd",
    "publish": "amlft.cli.publish:publish_cmd",
    "export": "amlft.cli.export:export_cmd",
    "teardown": "amlft.cli.lifecycle:teardown_cmd",
    "endpoint": "amlft.cli.endpoint:endpoint_group",
    "runs": "amlft.cli.runs:runs_cmd",
    "profile": "amlft.cli.runs:profile_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=90)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="amlft")
def cli() -> None:
    """Fine-tune a chat model, register it, deploy it, test it - and tear it all down.

    With no Azure workspace, `amlft run` does the whole lifecycle on this machine
    (local backend, offline demo profile). Add `--profile jobs/phi4-mini-ultrachat.yml`
    to run it on Azure ML, or `--rehearse` to rehearse the Azure flow offline against
    an in-process fake of the Azure ML REST API.

    Steps act on the most recent run in this directory unless --run ID names another.
    """
    from amlft.testing.rehearsal import install

    install()  # --rehearse: the CLI plugs the fake into the Azure backend's seam (backends never import testing)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry: run click with our own error funnel."""
    from amlft.cli.common import reset_console
    from amlft.errors import EXIT_INTERRUPTED, AmlftError

    reset_console()
    try:
        return cli.main(args=argv, prog_name="amlft", standalone_mode=False)
    except click.exceptions.Abort:  # click's form of Ctrl-C
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except AmlftError as exc:
        _report(exc, json_requested="--json" in (sys.argv[1:] if argv is None else argv))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ModuleNotFoundError as exc:  # backstop: a heavy import that missed `needs_extra`
        err = _missing_extra(exc, sys.argv[1:] if argv is None else argv)
        if err is None:
            raise
        _report(err, json_requested="--json" in (sys.argv[1:] if argv is None else argv))
        sys.exit(err.exit_code)


def _missing_extra(exc: ModuleNotFoundError, args: list[str]) -> Any:
    """A MissingDependency for an optional package (one in EXTRA_OF) that escaped; None for anything else."""
    from amlft.extras import extra_for, missing_dependency

    extra = extra_for(exc.name or "")
    if extra is None:  # amlft's own module or an unknown package: a bug, keep the traceback
        return None
    verb = next((a for a in args if not a.startswith("-")), "")
    return missing_dependency(exc, extra=extra, purpose=f"`amlft {verb}`" if verb else "amlft")


def _report(exc: Any, *, json_requested: bool) -> None:
    """Print an AmlftError once: JSON on stdout in --json mode, else message + hint on stderr."""
    import json

    from amlft.cli.common import current_console

    console = current_console()
    if console is not None and console.json_mode:
        console.result(ok=False, **exc.to_dict())
        console.emit_result()
    else:  # the cause and the fix first, then details such as a log tail
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        if getattr(exc, "details", None):
            click.echo(exc.details, err=True)
    if console is None and json_requested:  # failed before the command built its console
        click.echo(json.dumps({"ok": False, **exc.to_dict()}))


if __name__ == "__main__":  # pragma: no cover
    main()
