"""Serving benchmark: amlft's local scoring server vs `mlflow models serve`, same model, same run.

    .venv/bin/python scripts/bench_serving.py                       # tiny model, logged to a temp MLflow store
    .venv/bin/python scripts/bench_serving.py --model-dir DIR \\
        --tracking-uri sqlite:///.amlft/mlflow.db --model-uri models:/NAME/1   # a registered model
    .venv/bin/python scripts/bench_serving.py --servers amlft          # amlft's server alone

For each server and each concurrency (1 and 8) it sends the same greedy chat requests (same
prompts, same max tokens) from that many closed-loop clients, and reports latency p50/p95
and requests/s; the last line is the throughput ratio at the highest concurrency (the
issue's target: >= 2x at 8). Both servers get the same number of torch threads.

Why amlft is faster: concurrent requests are batched into one left-padded `generate`
call (see amlft/backends/local/engines/scheduler.py); mlflow's scoring server runs one pipeline
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
from typing import Any

import requests

import _benchlib

REPO = Path(__file__).resolve().parents[1]


SERVER_CHOICES = ("amlft", "mlflow")
NAMES = {"amlft": "amlft local", "mlflow": "mlflow models serve"}


def prompts(n: int) -> list[list[dict[str, str]]]:
    from amlft.resources import sample_chat_dir

    rows = [json.loads(line) for line in (sample_chat_dir() / "test_sft.jsonl").read_text().splitlines() if line]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows[:n]]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process and its children (mlflow serves from a child)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    except psutil.Error:
        return 0.0


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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="transformers folder (default: build the tiny model)")
    ap.add_argument("--tracking-uri", help="MLflow store holding --model-uri (default: log to a temp store)")
    ap.add_argument("--model-uri", help="e.g. models:/NAME/1")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=48, help="requests per (server, concurrency) cell")
    ap.add_argument("--rounds", type=int, default=2, help="each cell is split into this many interleaved rounds")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for each server (each mlflow worker too)")
    ap.add_argument("--mlflow-workers", type=int, default=os.cpu_count() or 1,
                    help="`mlflow models serve --workers` (default: one per core, as its docs advise for CPU serving)")
    ap.add_argument("--servers", nargs="+", choices=SERVER_CHOICES, default=list(SERVER_CHOICES),
                    help="which servers to run")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (model, MLflow store, server logs)")
    return ap.parse_args()


class Fleet:
    """The servers under test, started side by side and always stopped (even on Ctrl-C)."""

    def __init__(self, args: argparse.Namespace, work: Path, model_dir: Path, key: str) -> None:
        self.args, self.work, self.model_dir, self.key = args, work, model_dir, key
        self.handles: dict[str, tuple[Any, Any]] = {}  # name -> (module with launch/stop, ServerHandle)
        self.mlflow_proc: subprocess.Popen[bytes] | None = None
        self.mlflow_port = free_port()

    def start_mlflow(self, tracking: str | None, model_uri: str) -> None:
        args = self.args
        env = dict(os.environ, MLFLOW_TRACKING_URI=tracking or "", OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
                   # mlflow execs `uvicorn` by name: the venv's bin must be on PATH
                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        log = self.work / "mlflow-serve.log"
        print(f"starting mlflow models serve {model_uri} ...", file=sys.stderr)
        with open(log, "wb") as logf:
            self.mlflow_proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                 "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", str(args.mlflow_workers)],
                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_ready(f"http://127.0.0.1:{self.mlflow_port}/ping", self.mlflow_proc, 300, log)

    def start_amlft(self, name: str) -> None:
        from amlft.backends.local import server as module

        print(f"starting {NAMES[name]} ...", file=sys.stderr)
        self.handles[NAMES[name]] = (module, module.launch(
            self.model_dir, key=self.key, max_concurrency=max(self.args.concurrency), max_queue=64,
            log_path=self.work / f"{name}-server.log", threads=self.args.threads))

    def senders(self) -> dict[str, Callable[[requests.Session, list[dict[str, str]]], str]]:
        args, key = self.args, self.key

        def amlft_sender(handle: Any) -> Callable[[requests.Session, list[dict[str, str]]], str]:
            def send_amlft(session: requests.Session, msgs: list[dict[str, str]]) -> str:
                r = session.post(handle.scoring_uri, headers={"Authorization": f"Bearer {key}"}, timeout=300,
                                 json={"input_data": {"input_string": [msgs], "parameters": {
                                     "do_sample": False, "max_new_tokens": args.max_tokens}}})
                r.raise_for_status()
                return str(r.json()["output"])
            return send_amlft

        def send_mlflow(session: requests.Session, msgs: list[dict[str, str]]) -> str:
            r = session.post(f"http://127.0.0.1:{self.mlflow_port}/invocations", timeout=300,
                             json={"messages": msgs, "max_tokens": args.max_tokens, "temperature": 0.0})
            r.raise_for_status()
            payload = r.json()
            payload = payload[0] if isinstance(payload, list) else payload
            return str(payload["choices"][0]["message"]["content"])

        servers: dict[str, Callable[[requests.Session, list[dict[str, str]]], str]] = {}
        if self.mlflow_proc is not None:
            servers[NAMES["mlflow"]] = send_mlflow
        for name, (_, handle) in self.handles.items():
            servers[name] = amlft_sender(handle)
        return servers

    def stats(self, name: str) -> dict[str, float]:
        """Batching counters of an amlft server (zeros for mlflow, which has none), and the CPU
        seconds the server's processes have used: on a shared machine, CPU per request is the
        comparison that the other jobs' load disturbs least."""
        out: dict[str, float] = {"batched_rows": 0, "batches": 0}
        pid = self.mlflow_proc.pid if self.mlflow_proc is not None else None
        if name in self.handles:
            port, pid = self.handles[name][1].port, self.handles[name][1].pid
            out.update(requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["stats"])
        out["cpu_s"] = cpu_seconds(pid) if pid else 0.0
        return out

    def stop(self) -> None:
        for module, handle in self.handles.values():
            module.stop(handle.pid)
        if self.mlflow_proc is not None:
            # mlflow runs uvicorn as its child: signal the whole session it was started in
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.mlflow_proc.pid, signal.SIGTERM)
            try:
                self.mlflow_proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.mlflow_proc.pid, signal.SIGKILL)


def measure(fleet: Fleet, chats: list[list[dict[str, str]]]) -> tuple[dict[str, dict[int, dict[str, float]]], int]:
    """Check the servers agree on greedy outputs, then time every (server, concurrency) cell."""
    args, servers = fleet.args, fleet.senders()
    with requests.Session() as s:
        outputs = {name: [send(s, c).strip() for c in chats[:4]] for name, send in servers.items()}
    first = next(iter(outputs.values()))
    same = min(sum(x == y for x, y in zip(first, out, strict=True)) for out in outputs.values())
    print(f"identical greedy outputs on {same}/4 warm-up prompts across {', '.join(outputs)}", file=sys.stderr)
    if same < len(first):  # timing servers that answer differently would compare different work
        for name, out in outputs.items():
            print(f"  {name}: {out!r}", file=sys.stderr)
        raise SystemExit("bench_serving: the servers' greedy outputs differ; not timing them.")
    # Cells are interleaved (every server at one concurrency, then again, ...) so that a change in
    # the machine's load during the run (it may be shared) hits all servers alike.
    raw: dict[tuple[str, int], tuple[list[float], float, float, float, float]] = {}
    for c in args.concurrency:
        for rnd in range(args.rounds):
            for name, send in servers.items():
                print(f"  {name}: concurrency {c}, round {rnd + 1}/{args.rounds} ...", file=sys.stderr)
                before = fleet.stats(name)
                lat, wall = run_load(send, chats, c, args.requests // args.rounds)
                after = fleet.stats(name)
                prev = raw.get((name, c), ([], 0.0, 0, 0, 0.0))
                raw[(name, c)] = (prev[0] + lat, prev[1] + wall,
                                  prev[2] + after["batched_rows"] - before["batched_rows"],
                                  prev[3] + after["batches"] - before["batches"],
                                  prev[4] + after["cpu_s"] - before["cpu_s"])
    results: dict[str, dict[int, dict[str, float]]] = {}
    for (name, c), (lat, wall, rows, batches, cpu) in raw.items():
        results.setdefault(name, {})[c] = summarize(lat, wall)
        results[name][c]["cpu_ms_per_req"] = cpu * 1000 / max(1, len(lat))
        if name in fleet.handles:
            results[name][c]["mean_batch"] = rows / max(1, batches)
    return results, same


def report(args: argparse.Namespace, model_dir: Path, results: dict[str, dict[int, dict[str, float]]],
           same: int) -> None:
    print(f"\nmodel {model_dir} | max_tokens {args.max_tokens} | {args.requests} requests per cell | "
          f"torch threads {args.threads} | {os.cpu_count()} CPUs | load avg {os.getloadavg()[0]:.1f}")
    print(f"{'server':<22}{'conc':>5}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>9}{'mean batch':>12}{'CPU ms/req':>12}")
    for name, by_c in results.items():
        for c, r in by_c.items():
            batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
            print(f"{name:<22}{c:>5}{r['p50_ms']:>10.0f}{r['p95_ms']:>10.0f}{r['rps']:>9.2f}{batch:>12}"
                  f"{r['cpu_ms_per_req']:>12.1f}")
    top, new, ratios = max(args.concurrency), NAMES["amlft"], {}
    for peer, label in ((NAMES["mlflow"], "target >= 2x"),):
        if new in results and peer in results:
            for c in args.concurrency:
                ratios[f"{peer} @ {c}"] = results[new][c]["rps"] / results[peer][c]["rps"]
            print(f"throughput ratio vs {peer} at concurrency {top}: {ratios[f'{peer} @ {top}']:.2f}x ({label})")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "ratios": ratios, "outputs_identical": f"{same}/4",
                                        "max_tokens": args.max_tokens, "threads": args.threads,
                                        "loadavg": os.getloadavg()[0]}, indent=2))


def main() -> int:
    args = parse_args()
    wanted = list(dict.fromkeys(args.servers))
    work = Path(tempfile.mkdtemp(prefix="amlft-bench-serving-"))
    model_dir = args.model_dir
    if model_dir is None:
        from amlft.backends.local.tiny import build_tiny_model

        print("building the tiny model ...", file=sys.stderr)
        model_dir = build_tiny_model(work / "tiny")
    fleet = Fleet(args, work, model_dir, secrets.token_urlsafe(24))
    try:
        if "mlflow" in wanted:
            tracking, model_uri = args.tracking_uri, args.model_uri
            if not model_uri:
                print("logging it with mlflow.transformers ...", file=sys.stderr)
                tracking, model_uri = log_to_mlflow(model_dir, work)
            fleet.start_mlflow(tracking, model_uri)
        if "amlft" in wanted:
            fleet.start_amlft("amlft")
        results, same = measure(fleet, prompts(16))
    finally:
        fleet.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(args, model_dir, results, same)
    top, new = max(args.concurrency), NAMES["amlft"]
    if new in results:
        _benchlib.emit(_benchlib.summary(
            "serving", amlft=results[new][top]["rps"], unit=f"req/s at concurrency {top}",
            peers={name: by_c[top]["rps"] for name, by_c in results.items() if name != new},
            model=str(model_dir), steps=None, max_tokens=args.max_tokens, threads=args.threads,
            mlflow_workers=args.mlflow_workers, requests_per_cell=args.requests,
            p95_ms={name: round(by_c[top]["p95_ms"]) for name, by_c in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
