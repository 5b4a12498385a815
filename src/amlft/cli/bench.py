"""`amlft bench`: latency and throughput of an endpoint, with a report to paste into a pull request."""

from __future__ import annotations

import click

from amlft.cli.common import finish, json_option, make_console


def _concurrency(value: str) -> list[int]:
    from amlft.errors import ConfigError

    try:
        levels = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        levels = []
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"--concurrency {value!r} is not a list of positive integers.", hint="e.g. --concurrency 1,4,8")
    return sorted(set(levels))


@click.command("bench")
@click.option("--run", "run_id", metavar="RUN_ID", help="Benchmark this run's endpoint (default: the latest run here).")
@click.option("--base-url", metavar="URL",
              help="Benchmark any endpoint: an OpenAI-compatible base URL (…/v1) or an Azure ML scoring URI (…/score).")
@click.option("--api-key-env", metavar="VAR", help="With --base-url: the environment variable holding its key.")
@click.option("--contract", type=click.Choice(["azureml", "openai"]),
              help="Request format (default: the run's; for --base-url, azureml if it ends in /score, else openai).")
@click.option("--model", metavar="NAME", help="Model name sent in OpenAI requests (default: 'default').")
@click.option("--targets", "targets_file", metavar="FILE",
              help="JSON/YAML list of targets to compare, each {name, run} or {name, base_url, contract, model, "
                   "api_key_env}. A failing target is marked failed; the others still run.")
@click.option("--prompts", metavar="FILE",
              help="JSON list of prompts (strings or conversations); default: a seeded sample of the test_gen split.")
@click.option("--max-new-tokens", type=click.IntRange(1, 32768), default=128, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
              help="0 = greedy, so runs are comparable.")
@click.option("--warmup", type=click.IntRange(0, 1000), default=2, show_default=True,
              help="Requests per target sent first and not counted.")
@click.option("--requests", "n_requests", type=click.IntRange(1, 100_000), metavar="N",
              help="Requests per concurrency level [default: 20, or unlimited with --duration].")
@click.option("--concurrency", default="1,4,8", show_default=True, metavar="1,4,8",
              help="Concurrency levels: N users, each with one request in flight.")
@click.option("--duration", type=click.FloatRange(0.1, 86_400), metavar="SECONDS",
              help="Stop sending new requests after this long per level (with --requests: whichever comes first).")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=120.0, show_default=True, metavar="SECONDS",
              help="Per-request timeout; a timed-out request counts as an error of kind 'timeout'.")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Stream OpenAI-contract answers to measure time to first token and time per output token.")
@click.option("--ignore-eos", is_flag=True,
              help="Force every answer to --max-new-tokens tokens (sends ignore_eos, and min_tokens where the "
                   "target accepts it), so runs across engines and commits compare like for like.")
@click.option("--tokenizer", metavar="MODEL_DIR",
              help="Count output tokens with this tokenizer when answers carry no usage (else they are estimated).")
@click.option("--out", "out_dir", metavar="DIR",
              help="Where report.md, results.csv/json and charts go (default: the run's folder, or ./bench-results/).")
@json_option
def bench_cmd(run_id: str | None, base_url: str | None, api_key_env: str | None, contract: str | None,
              model: str | None, targets_file: str | None, prompts: str | None, max_new_tokens: int,
              temperature: float, warmup: int, n_requests: int | None, concurrency: str, duration: float | None,
              timeout: float, stream: bool, ignore_eos: bool, tokenizer: str | None, out_dir: str | None, json_mode: bool) -> None:
    """Benchmark endpoint latency and throughput; writes report.md, results.csv/json and charts.

    \b
    Examples:
      amlft bench                                  # the latest run's endpoint
      amlft bench --run RUN_ID --concurrency 1,2,4 --requests 30
      amlft bench --base-url http://127.0.0.1:8000/v1 --model phi3 --api-key-env VLLM_KEY
      amlft bench --targets targets.yml --prompts prompts.json --out bench/

    Sends only what you ask for: warmup + requests per level (or until --duration), each
    bounded by --timeout. Keys are fetched or read from the environment and never shown.
    """
    from amlft.bench.benchmark import benchmark
    from amlft.bench.runner import Settings
    from amlft.bench.targets import specs_from_flags

    console = make_console(json_mode)
    specs = specs_from_flags(run_id=run_id, base_url=base_url, targets_file=targets_file, contract=contract,
                             model=model, api_key_env=api_key_env)
    settings = Settings(concurrency=_concurrency(concurrency),
                        requests=n_requests if n_requests or duration else 20, duration_s=duration,
                        warmup=warmup, timeout_s=timeout, max_new_tokens=max_new_tokens, temperature=temperature,
                        stream=stream, ignore_eos=ignore_eos)
    benchmark(specs, settings, console=console, prompts=prompts, out_dir=out_dir, tokenizer=tokenizer)
    finish(console)
