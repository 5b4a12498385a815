"""`amlft bench` (placeholder until the bench module lands)."""

import click


@click.command("bench")
def bench_cmd() -> None:
    """Benchmark an endpoint's latency and throughput (not implemented yet)."""
    raise click.ClickException("not implemented yet")
