"""Serving engines compared through the server: transformers (PyTorch fp32) vs ONNX Runtime GenAI int4 and fp32.

    .venv/bin/python scripts/bench_engines.py                      # SmolLM2-135M-Instruct (shipped GGUF) + tiny model
    .venv/bin/python scripts/bench_engines.py --run RUN_ID          # a run's fine-tuned model instead of SmolLM2
    .venv/bin/python scripts/bench_engines.py --model-dir DIR --skip-tiny --requests 4

For each model and each engine it launches the real scoring server (the detached process
`amlft deploy` starts, same flags), and for concurrency 1 and 8 sends the same chat prompts
from that many closed-loop streaming clients on the OpenAI route: greedy, `ignore_eos` with a
fixed `max_tokens`, so every engine produces exactly the same number of tokens per request.
It reports output tokens/s, latency p50/p95, time to first token (p50), the server's peak RSS
and the model's size on disk. Servers run as `amlft deploy` runs them (--threads pins all of them
to one thread count). Models are exported (int4 and fp32, CPU) first, outside the timings.

Goal (issue 16): ONNX Runtime GenAI int4 >= 3x the transformers engine's output tokens/s at
concurrency 1, on the same machine in the same run. The last line of output is one JSON object:
{"benchmark", "amlft", "peers": {name: value}, "ratio_vs_best_peer", "unit", "conditions"}.
The machine may be shared: the load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

ENGINES = (("transformers", "transformers", None), ("ort-int4", "onnxruntime-genai", "int4"),
           ("ort-fp32", "onnxruntime-genai", "fp32"))
LABELS = {"transformers": "transformers (PyTorch fp32)", "ort-int4": "onnxruntime-genai int4",
          "ort-fp32": "onnxruntime-genai fp32"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="a transformers folder (default: SmolLM2-135M-Instruct from GGUF)")
    p.add_argument("--run", help="bench this run's fine-tuned model (register.model_dir)")
    p.add_argument("--skip-tiny", action="store_true", help="only the main model, not the tiny one")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=8, help="requests per client count (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (fixed: ignore_eos)")
    p.add_argument("--threads", type=int,
                   help="CPU threads of every server (default: each engine's own choice, as `amlft deploy` runs it: "
                        "transformers takes 1 for a model under 50M parameters, else torch's; ORT GenAI all cores)")
    p.add_argument("--work-dir", type=Path, help="where exports and logs go (default: a temp folder)")
    p.add_argument("--out", type=Path, help="also write the full results as JSON here")
    return p.parse_args()


def prompts(n: int) -> list[list[dict[str, str]]]:
    from amlft.resources import sample_chat_dir

    rows = [json.loads(line) for line in (sample_chat_dir() / "test_sft.jsonl").read_text().splitlines() if line]
    chats = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows if "messages" in r]
    return (chats or [[{"role": "user", "content": "What is the capital of France?"}]])[:n]


def smollm2_dir(state: Path) -> Path:
    from amlft.backends.local.model_sources import convert_gguf, locate_shipped

    said: set[str] = set()

    def report(done: float, total: float, what: str) -> None:
        if what not in said:  # one line per phase, not per megabyte hashed
            said.add(what)
            print(f"  {what}", file=sys.stderr)

    return convert_gguf(locate_shipped("amlft:smollm2-135m-instruct"), state, report=report)


def tiny_dir(work: Path) -> Path:
    from amlft.backends.local.tiny import build_tiny_model

    return build_tiny_model(work / "tiny-model", seed=0)


def run_model(run_id: str) -> tuple[Path, int]:
    from amlft.backends.local.export_run import run_model_dir
    from amlft.records import RunRecord

    rec = RunRecord.load(run_id)
    steps = int(((rec.output("train").get("metrics") or {}).get("steps")) or 0)
    return run_model_dir(rec), steps


def export(model_dir: Path, out: Path, precision: str) -> Path:
    from amlft.console import Console
    from amlft.export.onnx import export_onnx, read_manifest
    from amlft.export.sources import resolve_model_source

    if read_manifest(out) is None:
        export_onnx(resolve_model_source(model_dir), out, precision=precision, console=Console(quiet=True))
    return out


def disk_bytes(folder: Path) -> int:
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".onnx", ".data", ".bin")]
    return sum(p.stat().st_size for p in weights)


class PeakRss:
    """Samples a process's resident memory every 20 ms; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join(1)
        return self.peak


def one_request(session: requests.Session, url: str, key: str, messages: list[dict[str, str]],
                max_tokens: int) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, text = None, 0, ""
    with session.post(f"{url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    return {"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens, "text": text}


def load(url: str, key: str, chats: list[list[dict[str, str]]], *, concurrency: int, n: int,
         max_tokens: int) -> dict[str, Any]:
    """n requests from `concurrency` closed-loop clients; output tokens/s over the wall time."""
    jobs = list(range(n))
    lock = threading.Lock()
    rows: list[dict[str, Any]] = []

    def client() -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    if not jobs:
                        return
                    i = jobs.pop(0)
                row = one_request(s, url, key, chats[i % len(chats)], max_tokens)
                with lock:
                    rows.append(row)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(r["latency"] for r in rows)
    tokens = sum(int(r["tokens"]) for r in rows)
    return {"requests": len(rows), "output_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "p50_latency_s": round(statistics.median(lat), 3),
            "p95_latency_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
            "p50_ttft_s": round(statistics.median(r["ttft"] for r in rows), 3)}


def bench_engine(name: str, engine: str, folder: Path, args: argparse.Namespace, work: Path,
                 chats: list[list[dict[str, str]]]) -> dict[str, Any]:
    from amlft.backends.local.server import launch, stop

    key = secrets.token_urlsafe(24)
    handle = launch(folder, key=key, max_concurrency=max(args.concurrency), max_queue=64, engine=engine,
                    threads=args.threads, log_path=work / f"{folder.name}-{name}.log", ready_timeout_s=600,
                    request_timeout_s=600)
    rss = PeakRss(handle.pid)
    try:
        url = handle.openai_base_url
        with requests.Session() as s:  # warm-up: first-call allocations stay out of the timings
            one_request(s, url, key, chats[0], 8)
        results = {}
        for c in args.concurrency:
            results[str(c)] = load(url, key, chats, concurrency=c, n=max(args.requests, c), max_tokens=args.max_tokens)
            print(f"  {LABELS[name]:<28} c={c}: {results[str(c)]['tokens_per_s']:>7.1f} tok/s  "
                  f"p50 {results[str(c)]['p50_latency_s']:.2f}s  p95 {results[str(c)]['p95_latency_s']:.2f}s  "
                  f"TTFT {results[str(c)]['p50_ttft_s']:.3f}s  (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    finally:
        stop(handle.pid)
    return {"engine": engine, "model_bytes": disk_bytes(folder), "peak_rss_bytes": rss.stop(),
            "by_concurrency": results}


def bench_model(label: str, model_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"{label}: exporting int4 and fp32 (not timed)", file=sys.stderr)
    folders = {"transformers": model_dir,
               "ort-int4": export(model_dir, work / f"{label}-onnx-int4", "int4"),
               "ort-fp32": export(model_dir, work / f"{label}-onnx-fp32", "fp32")}
    chats = prompts(16)
    out = {}
    for name, engine, _ in ENGINES:
        out[name] = bench_engine(name, engine, folders[name], args, work, chats)
    return out


def table(label: str, res: dict[str, Any], concurrency: list[int]) -> str:
    lines = [f"\n{label}", f"{'engine':<28} {'c':>2} {'tok/s':>7} {'p50 s':>6} {'p95 s':>6} {'TTFT s':>7} "
             f"{'peak RSS MB':>11} {'disk MB':>8}"]
    for name, r in res.items():
        for c in concurrency:
            m = r["by_concurrency"][str(c)]
            lines.append(f"{LABELS[name]:<28} {c:>2} {m['tokens_per_s']:>7.1f} {m['p50_latency_s']:>6.2f} "
                         f"{m['p95_latency_s']:>6.2f} {m['p50_ttft_s']:>7.3f} {r['peak_rss_bytes'] / 1e6:>11.0f} "
                         f"{r['model_bytes'] / 1e6:>8.1f}")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its servers
    load_before = os.getloadavg()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    steps = 0
    if args.run:
        main_dir, steps = run_model(args.run)
        main_label = f"run {args.run}"
    elif args.model_dir:
        main_dir, main_label = args.model_dir, args.model_dir.name
    else:
        main_dir, main_label = smollm2_dir(work / "state"), "SmolLM2-135M-Instruct"
    models = {main_label: main_dir}
    if not args.skip_tiny:
        models["tiny"] = tiny_dir(work)
    results = {label: bench_model(label.replace(" ", "-"), d, args, work) for label, d in models.items()}
    load_after = os.getloadavg()
    for label, res in results.items():
        print(table(label, res, args.concurrency), file=sys.stderr)
    main_res = results[main_label]
    c1 = str(min(args.concurrency))
    ours = main_res["ort-int4"]["by_concurrency"][c1]["tokens_per_s"]
    peers = {LABELS["transformers"]: main_res["transformers"]["by_concurrency"][c1]["tokens_per_s"]}
    conditions = {"cores": os.cpu_count(), "threads": args.threads or "engine default",
                  "load_average": {"before": [round(x, 2) for x in load_before],
                                   "after": [round(x, 2) for x in load_after]},
                  "model": main_label, "steps": steps, "concurrency": int(c1), "max_tokens": args.max_tokens,
                  "requests": args.requests, "decoding": "greedy, ignore_eos (fixed output length)",
                  "through": "amlft scoring server, OpenAI route, streaming"}
    if args.out:
        args.out.write_text(json.dumps({"results": results, "conditions": conditions}, indent=2))
    print(json.dumps({"benchmark": "serving engines: output tokens/s at concurrency 1",
                      "amlft": ours, "peers": peers, "ratio_vs_best_peer": round(ours / max(peers.values()), 2),
                      "unit": "output tokens/s", "conditions": conditions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
