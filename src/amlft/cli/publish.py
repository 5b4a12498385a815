"""`amlft publish` (placeholder until the publish module lands)."""

import click


@click.command("publish")
def publish_cmd() -> None:
    """Publish the fine-tuned model to the Hugging Face Hub (not implemented yet)."""
    raise click.ClickException("not implemented yet")
