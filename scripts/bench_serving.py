"""Serving benchmark: amlft's local scoring server vs `mlflow models serve`, same model, same run.

    .venv/bin/python scripts/bench_serving.py                       # tiny model, logged to a temp MLflow store
    .venv/bin/python scripts/bench_serving.py --model-dir DIR \\
        --tracking-uri sqlite:///.amlft/mlflow.db --model-uri models:/NAME/1   # a registered model

For each server and each concurrency (1 and 8) it sends the same greedy chat requests (same
prompts, same max tokens) from that many closed-loop clients, and reports latency p50/p95
and requests/s; the last line is the throughput ratio at the highest concurrency (the
issue's target: >= 2x at 8). Both servers get the same number of torch threads.

Why amlft is faster: concurrent requests are batched into one left-padded `generate`
call (see amlft/backends/local/generation.py); mlflow's scoring server runs one pipeline
call per request. Outputs are checked to be identical before anything is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def prompts(n: int) -> list[list[dict[str, str]]]:
    from amlft.resources import sample_chat_dir

    rows = [json.loads(line) for line in (sample_chat_dir() / "test_sft.jsonl").read_text().splitlines() if line]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_to_mlflow(model_dir: Path, store: Path) -> tuple[str, str]:
    """Register the folder with the mlflow.transformers flavor (llm/v1/chat) in a throwaway store."""
    import mlflow
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tracking = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment(experiment_name="bench-serving")
    with mlflow.start_run():
        mlflow.transformers.log_model(
            transformers_model={"model": AutoModelForCausalLM.from_pretrained(model_dir),
                                "tokenizer": AutoTokenizer.from_pretrained(model_dir)},
            name="model", task="llm/v1/chat", registered_model_name="bench-tiny",
            # explicit, because mlflow's inferred requirements import torchvision, which is not installed
            pip_requirements=[f"transformers=={transformers.__version__}", f"torch=={torch.__version__}"])
    return tracking, "models:/bench-tiny/1"


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); log:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server not ready after {timeout}s; log:\n{log.read_text()[-3000:]}")


def run_load(send: Callable[[requests.Session, list[dict[str, str]]], str], chats: list[list[dict[str, str]]],
             concurrency: int, total: int) -> tuple[list[float], float]:
    """`concurrency` closed-loop clients share `total` requests; returns the latencies and the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                send(session, chats[i % len(chats)])
                with lock:
                    latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    from amlft.percentiles import percentiles

    p50, p95 = percentiles(latencies, (50, 95)) or (0.0, 0.0)
    return {"p50_ms": p50 * 1000, "p95_ms": p95 * 1000, "rps": len(latencies) / wall, "n": len(latencies)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="transformers folder (default: build the tiny model)")
    ap.add_argument("--tracking-uri", help="MLflow store holding --model-uri (default: log to a temp store)")
    ap.add_argument("--model-uri", help="e.g. models:/NAME/1")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=48, help="requests per (server, concurrency) cell")
    ap.add_argument("--rounds", type=int, default=2, help="each cell is split into this many interleaved rounds")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for each server")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (model, MLflow store, server logs)")
    args = ap.parse_args()

    from amlft.backends.local.server import launch, stop

    work = Path(tempfile.mkdtemp(prefix="amlft-bench-serving-"))
    model_dir = args.model_dir
    if model_dir is None:
        from amlft.backends.local.tiny import build_tiny_model

        print("building the tiny model ...", file=sys.stderr)
        model_dir = build_tiny_model(work / "tiny")
    if args.model_uri:
        tracking, model_uri = args.tracking_uri, args.model_uri
    else:
        print("logging it with mlflow.transformers ...", file=sys.stderr)
        tracking, model_uri = log_to_mlflow(model_dir, work)

    chats = prompts(16)
    key = secrets.token_urlsafe(24)
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking or "", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               # mlflow execs `uvicorn` by name: the venv's bin must be on PATH
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    mlflow_port = free_port()
    mlflow_log = work / "mlflow-serve.log"
    print(f"starting mlflow models serve {model_uri} ...", file=sys.stderr)
    with open(mlflow_log, "wb") as logf:
        mlflow_proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle = None
    try:
        wait_ready(f"http://127.0.0.1:{mlflow_port}/ping", mlflow_proc, 300, mlflow_log)
        print("starting amlft's server ...", file=sys.stderr)
        handle = launch(model_dir, key=key, max_concurrency=max(args.concurrency), max_queue=64,
                        log_path=work / "amlft-server.log", threads=args.threads)

        def send_amlft(session: requests.Session, msgs: list[dict[str, str]]) -> str:
            r = session.post(handle.scoring_uri, headers={"Authorization": f"Bearer {key}"}, timeout=300,
                             json={"input_data": {"input_string": [msgs], "parameters": {
                                 "do_sample": False, "max_new_tokens": args.max_tokens}}})
            r.raise_for_status()
            return str(r.json()["output"])

        def send_mlflow(session: requests.Session, msgs: list[dict[str, str]]) -> str:
            r = session.post(f"http://127.0.0.1:{mlflow_port}/invocations", timeout=300,
                             json={"messages": msgs, "max_tokens": args.max_tokens, "temperature": 0.0})
            r.raise_for_status()
            payload = r.json()
            payload = payload[0] if isinstance(payload, list) else payload
            return str(payload["choices"][0]["message"]["content"])

        servers: dict[str, Callable[..., str]] = {"mlflow models serve": send_mlflow, "amlft local": send_amlft}
        with requests.Session() as s:
            a, m = [send_amlft(s, c) for c in chats[:4]], [send_mlflow(s, c) for c in chats[:4]]
        same = sum(x.strip() == y.strip() for x, y in zip(a, m, strict=True))
        print(f"identical greedy outputs on {same}/4 warm-up prompts", file=sys.stderr)

        # Cells are interleaved (both servers at one concurrency, then again, ...) so that a change in
        # the machine's load during the run (it may be shared) hits both servers alike.
        raw: dict[tuple[str, int], tuple[list[float], float, int, int]] = {}
        for c in args.concurrency:
            for rnd in range(args.rounds):
                for name, send in servers.items():
                    print(f"  {name}: concurrency {c}, round {rnd + 1}/{args.rounds} ...", file=sys.stderr)
                    before = requests.get(f"http://127.0.0.1:{handle.port}/health", timeout=5).json()["stats"]
                    lat, wall = run_load(send, chats, c, args.requests // args.rounds)
                    after = requests.get(f"http://127.0.0.1:{handle.port}/health", timeout=5).json()["stats"]
                    prev = raw.get((name, c), ([], 0.0, 0, 0))
                    raw[(name, c)] = (prev[0] + lat, prev[1] + wall,
                                      prev[2] + after["batched_rows"] - before["batched_rows"],
                                      prev[3] + after["batches"] - before["batches"])
        results: dict[str, dict[int, dict[str, float]]] = {}
        for (name, c), (lat, wall, rows, batches) in raw.items():
            results.setdefault(name, {})[c] = summarize(lat, wall)
            if name == "amlft local":
                results[name][c]["mean_batch"] = rows / max(1, batches)
    finally:
        if handle is not None:
            stop(handle.pid)
        # mlflow runs uvicorn as its child: signal the whole session it was started in
        with contextlib.suppress(ProcessLookupError):
            os.killpg(mlflow_proc.pid, signal.SIGTERM)
        try:
            mlflow_proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mlflow_proc.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nmodel {model_dir} | max_tokens {args.max_tokens} | {args.requests} requests per cell | "
          f"torch threads {args.threads} | {os.cpu_count()} CPUs | load avg {os.getloadavg()[0]:.1f}")
    print(f"{'server':<22}{'conc':>5}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>9}{'mean batch':>12}")
    for name, by_c in results.items():
        for c, r in by_c.items():
            batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
            print(f"{name:<22}{c:>5}{r['p50_ms']:>10.0f}{r['p95_ms']:>10.0f}{r['rps']:>9.2f}{batch:>12}")
    top = max(args.concurrency)
    ratio = results["amlft local"][top]["rps"] / results["mlflow models serve"][top]["rps"]
    print(f"\nthroughput ratio at concurrency {top}: {ratio:.2f}x (target >= 2x)")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "ratio": ratio, "outputs_identical": f"{same}/4",
                                        "max_tokens": args.max_tokens, "threads": args.threads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
