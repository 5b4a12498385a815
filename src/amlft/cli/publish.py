"""`amlft publish`: push a run's fine-tuned model (and optionally its data) to the Hugging Face Hub."""

from __future__ import annotations

import click

from amlft.cli.common import json_option


@click.command("publish")
@click.option("--repo-id", required=True, metavar="OWNER/NAME", help="Model repo to create or update on the Hub.")
@click.option("--run", "run_id", metavar="ID", help="Publish this run (default: the most recent one here).")
@click.option("--private/--public", default=True, show_default=True,
              help="Visibility of a repo amlft creates. Existing repos keep theirs; a public one needs --public.")
@click.option("--adapter-only", is_flag=True, help="Upload only the LoRA adapter and its config.")
@click.option("--merged", is_flag=True, help="Upload the merged full model (default when the run registered one).")
@click.option("--dataset-repo-id", metavar="OWNER/NAME",
              help="Also push the prepared train/test data, with a dataset card, to this dataset repo.")
@click.option("--model-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Publish this model folder instead of the run's (needed for Azure runs: download the model "
                   "with `az ml model download` first).")
@click.option("--dry-run", is_flag=True, help="Write the card and the exact upload list to --out; no network, no token.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR", help="Where --dry-run writes.")
@json_option
def publish_cmd(repo_id: str, run_id: str | None, private: bool, adapter_only: bool, merged: bool,
                dataset_repo_id: str | None, model_dir: str | None, dry_run: bool, out_dir: str | None,
                json_mode: bool) -> None:
    """Publish the fine-tuned model to the Hugging Face Hub, with a model card written from the run.

    Uploads the merged weights (or, with --adapter-only, the LoRA adapter), tokenizer,
    generation config and a model card - base model, data and its validation counts,
    hyper-parameters, before/after evaluation, usage snippet, limitations, provenance - in
    one commit. The repo is private unless you pass --public. The token comes from HF_TOKEN
    or `hf auth login`, is checked for write access first, and is never printed.

    \b
    amlft publish --repo-id me/tiny-chat --dry-run --out publish-preview
    amlft publish --repo-id me/tiny-chat
    amlft publish --repo-id me/tiny-chat-lora --adapter-only --dataset-repo-id me/tiny-chat-data
    """
    from amlft.cli.common import finish, make_console
    from amlft.errors import ConfigError
    from amlft.hub.plan import plan_publish, write_dry_run
    from amlft.records import RunRecord

    console = make_console(json_mode)
    if adapter_only and merged:
        raise ConfigError("--adapter-only and --merged exclude each other.", hint="Pick one (or neither for the default).")
    mode = "adapter" if adapter_only else "merged" if merged else None
    if dry_run and not out_dir:
        raise ConfigError("--dry-run needs --out DIR (where the card and the file list are written).",
                          hint="e.g. amlft publish --repo-id me/model --dry-run --out publish-preview")
    if out_dir and not dry_run:
        raise ConfigError("--out only applies to --dry-run.", hint="Add --dry-run, or drop --out to publish.")
    record = RunRecord.load(run_id)
    plan = plan_publish(record, repo_id=repo_id, private=private, mode=mode, model_dir=model_dir,
                        dataset_repo_id=dataset_repo_id)
    for warning in plan.warnings:
        console.warn(warning)
    for repo in plan.repos():
        console.table([{"file": f.path_in_repo, "bytes": f.size, "from": f.note or f.source or ""} for f in repo.files],
                      title=f"{'datasets/' if repo.repo_type == 'dataset' else ''}{repo.repo_id} "
                            f"({'private' if private else 'public'}, {len(repo.files)} files)")
    console.result(run_id=record.run_id, repo_id=repo_id, private=private, mode=plan.mode,
                   files=[f.path_in_repo for f in plan.model.files],
                   dataset_repo_id=dataset_repo_id)

    if dry_run:
        written = write_dry_run(plan, out_dir or ".")
        console.info(f"dry run: nothing uploaded; card in {written['card']}, upload list in {written['files']}")
        console.result(dry_run=True, written=written)
        finish(console)
        return

    from amlft.hub.publish import hub_endpoint, publish_plan
    from amlft.hub.token import find_token

    token = find_token()
    with record.step("publish"):
        result = publish_plan(plan, token=token, console=console, endpoint=hub_endpoint())
        record.set_output("publish", repo_id=repo_id, commit_url=result["commit_url"], private=private,
                          mode=plan.mode, repo_url=result["repo_url"], files=[f.path_in_repo for f in plan.model.files],
                          dataset_repo_id=result.get("dataset_repo_id"),
                          dataset_commit_url=result.get("dataset_commit_url"))
    console.info(f"published {repo_id}: {result['repo_url']}")
    console.result(dry_run=False, **result)
    finish(console)
