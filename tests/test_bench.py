"""`amlft bench` against real HTTP servers.

`FakeEndpoint` is a small stdlib server speaking both scoring contracts (Azure ML /score
and OpenAI /v1/chat/completions with SSE streaming). It is a test double for error
behaviour a real server cannot be made to produce on demand: 500s on a schedule, hanging
before the headers, stalling mid-stream. The slow test at the end runs the real local
scoring server with a tiny model.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from amlft.bench import metrics
from amlft.bench.client import parse_sse_line
from amlft.cli.main import main
from amlft.serving import parse_azureml_request

KEY = "bench-test-key-9f8e7d6c5b4a"


class FakeEndpoint:
    """Both contracts over real HTTP; fails on a schedule keyed by arrival order (1-based)."""

    def __init__(self, *, key: str | None = KEY, delay_s: float = 0.01, chunk_delay_s: float = 0.002,
                 usage: bool = True, fail: set[int] | None = None, fail_every: int = 0,
                 hang: set[int] | None = None, stall: set[int] | None = None, hang_s: float = 1.2,
                 cut: set[int] | None = None, no_finish: set[int] | None = None,
                 refuse: tuple[str, ...] = (), fail_status: int = 500) -> None:
        self.key, self.delay_s, self.chunk_delay_s, self.usage = key, delay_s, chunk_delay_s, usage
        self.fail, self.fail_every, self.fail_status = fail or set(), fail_every, fail_status
        self.cut, self.no_finish = cut or set(), no_finish or set()  # streams cut before [DONE] / finish_reason
        self.refuse = refuse  # request fields answered with a 400 naming them, as strict servers do
        self.hang, self.stall, self.hang_s = hang or set(), stall or set(), hang_s
        self.lock = threading.Lock()
        self.count = 0
        self.inflight = 0
        self.max_inflight = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.count += 1
                    n = fake.count
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                    fake.bodies.append(body)
                    fake.auth_headers.append(self.headers.get("Authorization"))
                self.released = False
                try:
                    self._answer(n, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of the test
                finally:
                    self.release()

            def release(self) -> None:
                """No longer in flight: called before the answer's last bytes, since the client
                sends its next request as soon as it has them (before this thread runs on)."""
                with fake.lock:
                    if not self.released:
                        fake.inflight -= 1
                        self.released = True

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.release()
                self.wfile.write(data)

            def _answer(self, n: int, body: dict[str, Any]) -> None:
                if fake.key and self.headers.get("Authorization") != f"Bearer {fake.key}":
                    return self._send(401, {"error": "bad key"})
                if n in fake.hang:
                    time.sleep(fake.hang_s)
                refused = [f for f in fake.refuse if f in body or f in body.get("input_data", {}).get("parameters", {})]
                if refused:
                    return self._send(400, {"error": {"message": f"{refused[0]} is not supported"}})
                if n in fake.fail or (fake.fail_every and n % fake.fail_every == 0):
                    # echoes the header back, as careless servers do: bench must still not store the key
                    return self._send(fake.fail_status, {"error": {"message": "model crashed",
                                                      "request": {"authorization": self.headers.get("Authorization")}}})
                time.sleep(fake.delay_s)
                if self.path == "/score":
                    _msgs, params = parse_azureml_request(body)
                    words = [f"w{i}" for i in range(int(params.get("max_new_tokens", 8)))]
                    return self._send(200, {"output": " ".join(words)})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "no route"})
                words = [f"w{i} " for i in range(int(body["max_tokens"]))]
                usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
                if not body.get("stream"):
                    payload = {"choices": [{"message": {"role": "assistant", "content": "".join(words)}}]}
                    return self._send(200, dict(payload, usage=usage) if fake.usage else payload)
                return _write_stream(self, fake, n, words, usage)

        return Handler


def _write_stream(handler: BaseHTTPRequestHandler, fake: FakeEndpoint, n: int, words: list[str],
                  usage: dict[str, Any]) -> None:
    """An OpenAI SSE answer, one word per chunk; cut or finish-less on the fake's schedule."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    handler.wfile.write(b": keep-alive comment\n\n")
    for i, w in enumerate(words):
        last = i == len(words) - 1 and n not in fake.no_finish
        chunk = {"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": "length" if last else None}]}
        handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.flush()
        if i == 0 and n in fake.stall:
            time.sleep(fake.hang_s)
        if i == 0 and n in fake.cut:
            return  # the connection closes mid-answer: no finish_reason, no [DONE]
        time.sleep(fake.chunk_delay_s)
    if fake.usage:
        handler.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
    handler.release()  # type: ignore[attr-defined]
    handler.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key reaches bench the way a user's would (--api-key-env); default --out lands in tmp_path."""
    monkeypatch.setenv("BENCH_KEY", KEY)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def prompts(tmp_path: Path) -> str:
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps(["What is LoRA?", {"messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": "Name a GPU."}]},
                             {"prompt": "Say hi."}]))
    return str(p)


def bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `amlft bench ... --json`; returns (exit code, the JSON result, everything printed)."""
    code = 0
    try:
        main(["bench", *args, "--json"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, json.loads(out), out + err


def load_results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def assert_consistent(level: dict[str, Any]) -> None:
    """The invariants a user relies on when reading any level of any report."""
    s, rows = level["summary"], level["requests"]
    assert s["requests"] == len(rows) == s["successes"] + s["errors"]
    assert s["errors"] == sum(s["errors_by_kind"].values())
    assert s["successes"] == sum(r["ok"] for r in rows)
    if s["successes"]:
        assert s["latency_min_s"] <= s["latency_p50_s"] <= s["latency_p95_s"] <= s["latency_p99_s"] <= s["latency_max_s"]
        ok_lat = sorted(r["latency_s"] for r in rows if r["ok"])
        assert s["latency_max_s"] == ok_lat[-1] and s["latency_min_s"] == ok_lat[0]
    # throughput is count over wall time, and the wall time is the span the raw timings cover
    span = max(r["start_s"] + r["latency_s"] for r in rows)
    assert span <= s["wall_s"] <= span + 1.0
    assert s["requests_per_s"] == pytest.approx(s["requests"] / s["wall_s"])
    assert s["output_tokens_per_s"] == pytest.approx(
        sum(r["output_tokens"] for r in rows if r["ok"]) / s["wall_s"])


# --------------------------------------------------------------------------- happy paths
def test_openai_streaming_numbers_are_consistent(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 prompts: str) -> None:
    out = tmp_path / "out"
    with FakeEndpoint(delay_s=0.05) as fake:
        code, res, printed = bench(capsys, "--base-url", fake.url + "/v1", "--api-key-env", "BENCH_KEY",
                                   "--model", "tiny", "--prompts", prompts, "--concurrency", "1,3",
                                   "--requests", "9", "--warmup", "1", "--max-new-tokens", "6", "--out", str(out))
        assert code == 0, printed
        # exactly what was asked for: 1 warmup + 9 per level, greedy, capped, streamed, with the key
        assert fake.count == 1 + 9 * 2
        assert fake.max_inflight == 3
        assert all(b["temperature"] == 0 and b["max_tokens"] == 6 and b["stream"] and b["model"] == "tiny"
                   for b in fake.bodies)
        assert set(fake.auth_headers) == {f"Bearer {KEY}"}
    doc = load_results(out)
    (target,) = doc["targets"]
    assert target["status"] == "ok" and [lv["concurrency"] for lv in target["levels"]] == [1, 3]
    assert len(target["warmup"]) == 1
    for level in target["levels"]:
        assert_consistent(level)
        s = level["summary"]
        assert s["requests"] == 9 and s["errors"] == 0 and s["tokens_source"] == "usage"
        assert s["output_tokens"] == 9 * 6 and s["streamed"] == 9
        for r in level["requests"]:
            assert 0 < r["ttft_s"] <= r["latency_s"] and r["tpot_s"] > 0 and r["streamed"]
        assert s["ttft_p50_s"] <= s["latency_p50_s"]
        # the workload cycles through the prompts file in order
        assert [r["prompt"] for r in level["requests"]] == [i % 3 for i in range(9)]
    assert doc["workload"]["conversations"] == 3 and len(doc["workload"]["sha256"]) == 64
    # the JSON result carries the same headline numbers
    assert res["ok"] and res["bench"]["targets"][0]["levels"][1]["requests"] == 9
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["concurrency"], r["requests"], r["tokens_source"]) for r in rows] == [("1", "9", "usage"), ("3", "9", "usage")]
    md = (out / "report.md").read_text()
    assert "### Concurrency 1" in md and "### Concurrency 3" in md and "![Latency distribution" in md
    assert "Highest throughput" in md
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the key is never shown or written
    assert KEY not in printed
    assert all(KEY not in p.read_text(errors="ignore") for p in out.iterdir() if p.suffix != ".png")


def test_azureml_contract_and_estimated_tokens_are_labelled(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            prompts: str) -> None:
    out = tmp_path / "out"
    with FakeEndpoint() as fake:
        code, _res, printed = bench(capsys, "--base-url", fake.url + "/score", "--api-key-env", "BENCH_KEY",
                                   "--prompts", prompts, "--concurrency", "2", "--requests", "4", "--warmup", "0",
                                   "--max-new-tokens", "8", "--temperature", "0.7", "--out", str(out))
        assert code == 0, printed
        params = [b["input_data"]["parameters"] for b in fake.bodies]
        assert params[0] == {"do_sample": True, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8}
        assert fake.count == 4
    (level,) = load_results(out)["targets"][0]["levels"]
    assert_consistent(level)
    s = level["summary"]
    assert load_results(out)["targets"][0]["target"]["contract"] == "azureml"
    assert s["ttft_p50_s"] is None and s["streamed"] == 0  # /score does not stream
    assert s["tokens_source"] == "estimate"
    # "w0 w1 ... w7" is 23 characters: ~6 tokens at 4 characters per token, labelled as estimated everywhere
    assert {r["output_tokens"] for r in level["requests"]} == {round(23 / 4)}
    assert "estimated" in (out / "report.md").read_text() and "~" in (out / "report.md").read_text()
    assert next(csv.DictReader((out / "results.csv").open()))["tokens_source"] == "estimate"
    assert "estimated" in printed


# --------------------------------------------------------------------------- errors
def test_500s_and_timeouts_are_counted_by_kind_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         prompts: str) -> None:
    out = tmp_path / "out"
    # arrivals 4, 8, 12 answer 500; 6 hangs before answering; 9 stalls after its first token
    with FakeEndpoint(fail_every=4, hang={6}, stall={9}, hang_s=2.0) as fake:
        code, _res, printed = bench(capsys, "--base-url", fake.url + "/v1/", "--api-key-env", "BENCH_KEY",
                                   "--prompts", prompts, "--concurrency", "2", "--requests", "12", "--warmup", "0",
                                   "--timeout", "0.4", "--max-new-tokens", "4", "--out", str(out))
    assert code == 0, printed
    target = load_results(out)["targets"][0]
    (level,) = target["levels"]
    assert_consistent(level)
    s = level["summary"]
    assert s["errors_by_kind"] == {"http_500": 3, "timeout": 2}
    assert s["successes"] == 7 and target["status"] == "errors" and "5 of 12" in target["reason"]
    timeouts = [r for r in level["requests"] if r["error_kind"] == "timeout"]
    assert all(0.35 < r["latency_s"] < 1.5 for r in timeouts)  # cut at the timeout, not the 2 s hang
    assert all(r["status"] == 500 and "model crashed" in r["error"] for r in level["requests"]
               if r["error_kind"] == "http_500")
    assert "http_500 3" in (out / "report.md").read_text()
    assert "Bearer ***" in (out / "results.json").read_text() and KEY not in (out / "results.json").read_text()


def test_failing_targets_are_marked_and_the_others_still_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             prompts: str) -> None:
    out = tmp_path / "out"
    with FakeEndpoint() as good, FakeEndpoint(fail_every=1) as broken:
        dead = FakeEndpoint()
        dead_url = dead.url  # bound and closed: connection refused
        dead.server.server_close()
        targets = tmp_path / "targets.yml"
        targets.write_text(
            f"- {{name: good, base_url: '{good.url}/v1', api_key_env: BENCH_KEY}}\n"
            f"- {{name: dead, base_url: '{dead_url}/v1'}}\n"
            f"- {{name: nokey, base_url: '{good.url}/v1', api_key_env: AMLFT_TEST_UNSET_VAR}}\n"
            f"- {{name: broken, base_url: '{broken.url}/score', api_key_env: BENCH_KEY}}\n")
        code, res, printed = bench(capsys, "--targets", str(targets), "--prompts", prompts, "--concurrency", "1,2",
                                   "--requests", "4", "--warmup", "1", "--out", str(out))
        assert broken.count == 1  # its warmup failed, so nothing more was sent to it
        assert good.count == 1 + 8
    assert code == 0, printed
    status = {t["target"]["name"]: (t["status"], t["reason"]) for t in load_results(out)["targets"]}
    assert status["good"] == ("ok", None)
    assert status["dead"][0] == "failed" and "connection" in status["dead"][1]
    assert status["nokey"][0] == "failed" and "AMLFT_TEST_UNSET_VAR" in status["nokey"][1]
    assert status["broken"][0] == "failed" and "http_500" in status["broken"][1]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["target"], r["status"]) for r in rows] == [("good", "ok"), ("good", "ok"), ("dead", "failed"),
                                                         ("nokey", "failed"), ("broken", "failed")]
    md = (out / "report.md").read_text()
    assert "| dead |" in md and "failed" in md
    assert [t["status"] for t in res["bench"]["targets"]] == ["ok", "failed", "failed", "failed"]


def test_every_target_failing_exits_nonzero_with_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         prompts: str) -> None:
    with FakeEndpoint(fail_every=1) as broken:
        code, res, _ = bench(capsys, "--base-url", broken.url + "/v1", "--api-key-env", "BENCH_KEY", "--prompts",
                             prompts, "--concurrency", "1", "--requests", "3", "--warmup", "0",
                             "--out", str(tmp_path / "out"))
    assert code == 1 and res["ok"] is False and "Every target failed" in res["message"]
    level = load_results(tmp_path / "out")["targets"][0]["levels"][0]
    assert_consistent(level)
    assert level["summary"]["errors_by_kind"] == {"http_500": 3}


def test_rates_count_successes_and_errors_have_their_own_column(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 prompts: str) -> None:
    """Most requests answered 503: the table's rate is successes/s, the 503s are counted apart."""
    out = tmp_path / "out"
    with FakeEndpoint(fail=set(range(2, 9)), fail_status=503) as fake:
        code, res, printed = bench(capsys, "--base-url", fake.url + "/v1", "--api-key-env", "BENCH_KEY",
                                   "--prompts", prompts, "--concurrency", "1", "--requests", "8", "--warmup", "0",
                                   "--out", str(out))
    assert code == 0, printed
    (level,) = load_results(out)["targets"][0]["levels"]
    assert_consistent(level)
    s = level["summary"]
    assert s["successes"] == 1 and s["errors_by_kind"] == {"http_503": 7}
    assert s["successes_per_s"] == pytest.approx(1 / s["wall_s"])
    assert s["errors_per_s"] == pytest.approx(7 / s["wall_s"])
    lines = (out / "report.md").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| target | requests"))
    names = [c.strip() for c in lines[at].strip("|").split("|")]
    cells = [c.strip() for c in lines[at + 2].strip("|").split("|")]
    assert "req/s" not in names and float(cells[names.index("ok/s")]) == pytest.approx(s["successes_per_s"], abs=0.01)
    assert cells[names.index("errors")] == "7 (http_503 7)"
    (summary,) = res["bench"]["targets"]
    assert summary["levels"][0]["successes_per_s"] == pytest.approx(s["successes_per_s"])


def test_streams_cut_short_are_truncated_stream_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       prompts: str) -> None:
    out = tmp_path / "out"
    # arrival 2 closes after its first token (no finish_reason, no [DONE]); 4 ends [DONE] without a finish_reason
    with FakeEndpoint(cut={2}, no_finish={4}) as fake:
        code, _res, printed = bench(capsys, "--base-url", fake.url + "/v1", "--api-key-env", "BENCH_KEY",
                                   "--prompts", prompts, "--concurrency", "1", "--requests", "5", "--warmup", "0",
                                   "--max-new-tokens", "4", "--out", str(out))
    assert code == 0, printed
    (level,) = load_results(out)["targets"][0]["levels"]
    assert_consistent(level)
    assert level["summary"]["errors_by_kind"] == {"truncated_stream": 2}
    bad = [r for r in level["requests"] if not r["ok"]]
    assert [r["index"] for r in bad] == [1, 3]
    assert "[DONE]" in bad[0]["error"] and "finish_reason" in bad[1]["error"]
    assert "truncated_stream 2" in (out / "report.md").read_text()


def test_ignore_eos_asks_for_fixed_lengths_where_the_target_accepts_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], prompts: str) -> None:
    args = ("--prompts", prompts, "--concurrency", "1", "--requests", "2", "--warmup", "0", "--max-new-tokens", "5",
            "--ignore-eos", "--api-key-env", "BENCH_KEY")
    with FakeEndpoint() as vllm_like:  # accepts both fields
        code, _, printed = bench(capsys, "--base-url", vllm_like.url + "/v1", *args, "--out", str(tmp_path / "a"))
        assert code == 0, printed
        assert all(b["ignore_eos"] is True and b["min_tokens"] == 5 and b["max_tokens"] == 5 for b in vllm_like.bodies)
    with FakeEndpoint(refuse=("min_tokens",)) as strict:  # like amlft's own server: min_tokens is refused
        code, _, printed = bench(capsys, "--base-url", strict.url + "/v1", *args, "--out", str(tmp_path / "b"))
        assert code == 0, printed
        assert strict.bodies[0]["min_tokens"] == 5  # the probe; then ignore_eos alone
        assert all(b["ignore_eos"] is True and "min_tokens" not in b for b in strict.bodies[1:])
        assert len(strict.bodies) == 3
        assert load_results(tmp_path / "b")["targets"][0]["levels"][0]["summary"]["errors"] == 0
    with FakeEndpoint() as score:
        code, _, printed = bench(capsys, "--base-url", score.url + "/score", *args, "--out", str(tmp_path / "c"))
        assert code == 0, printed
        assert all(b["input_data"]["parameters"] == {"do_sample": False, "max_new_tokens": 5, "ignore_eos": True}
                   for b in score.bodies)
    with FakeEndpoint(refuse=("ignore_eos",)) as refusing:
        code, res, printed = bench(capsys, "--base-url", refusing.url + "/v1", *args, "--out", str(tmp_path / "d"))
    assert code == 1 and "ignore_eos" in res["message"]
    assert load_results(tmp_path / "d")["settings"]["ignore_eos"] is True


# --------------------------------------------------------------------------- bounds
def test_duration_bounds_each_level(tmp_path: Path, capsys: pytest.CaptureFixture[str], prompts: str) -> None:
    out = tmp_path / "out"
    with FakeEndpoint(delay_s=0.05) as fake:
        code, _, printed = bench(capsys, "--base-url", fake.url + "/v1", "--api-key-env", "BENCH_KEY", "--prompts",
                                 prompts, "--concurrency", "2", "--duration", "0.5", "--warmup", "0", "--no-stream",
                                 "--out", str(out))
    assert code == 0, printed
    (level,) = load_results(out)["targets"][0]["levels"]
    assert_consistent(level)
    rows = level["requests"]
    assert all(r["start_s"] < 0.5 for r in rows)  # nothing new is sent after the deadline
    assert 2 <= len(rows) <= 2 * 0.5 / 0.05 + 2
    assert level["summary"]["wall_s"] < 0.5 + 0.5
    assert not any(r["streamed"] for r in rows) and level["summary"]["tokens_source"] == "usage"

    with FakeEndpoint() as fake:
        bench(capsys, "--base-url", fake.url + "/v1", "--api-key-env", "BENCH_KEY", "--prompts", prompts,
              "--concurrency", "3", "--requests", "5", "--duration", "30", "--warmup", "0", "--out", str(out))
        assert fake.count == 5  # --requests reached first


def test_ctrl_c_stops_sending_and_keeps_a_report(tmp_path: Path, prompts: str) -> None:
    import _thread

    from amlft.bench.benchmark import benchmark
    from amlft.bench.runner import Settings
    from amlft.bench.targets import TargetSpec
    from amlft.console import Console

    out = tmp_path / "out"
    settings = Settings(concurrency=[2, 4], requests=200, warmup=0, timeout_s=5, max_new_tokens=4)
    with FakeEndpoint(delay_s=0.05) as fake:
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            benchmark([TargetSpec(base_url=fake.url + "/v1", api_key_env="BENCH_KEY")], settings,
                      console=Console(quiet=True), prompts=prompts, out_dir=str(out))
        sent = fake.count
        time.sleep(0.2)
        assert fake.count == sent  # nothing more is sent after Ctrl-C
    (target,) = load_results(out)["targets"]
    assert target["status"] == "interrupted" and [lv["concurrency"] for lv in target["levels"]] == [2]
    assert_consistent(target["levels"][0])
    assert 0 < target["levels"][0]["summary"]["requests"] == sent < 200


# --------------------------------------------------------------------------- input errors
def test_bad_prompts_and_targets_files_name_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["fine", [{"role": "robot", "content": "x"}]]))
    code, res, _ = bench(capsys, "--base-url", "http://127.0.0.1:9/v1", "--prompts", str(bad))
    assert code == 1 and res["error"] == "DataError" and "item 1" in res["message"] and "robot" in res["message"]

    tfile = tmp_path / "t.json"
    tfile.write_text(json.dumps([{"name": "a", "url": "http://x"}]))
    code, res, _ = bench(capsys, "--targets", str(tfile))
    assert code == 2 and "entry 0" in res["message"] and "url: unknown field" in res["message"]

    tfile.write_text(json.dumps([{"name": "a", "base_url": "http://x", "run": "r1"}]))
    code, res, _ = bench(capsys, "--targets", str(tfile))
    assert code == 2 and "exactly one of run or base_url" in res["message"]

    code, res, _ = bench(capsys, "--base-url", "http://x/v1", "--concurrency", "0,2")
    assert code == 2 and "--concurrency" in res["message"]

    code, res, _ = bench(capsys, "--base-url", "http://x/v1", "--run", "r1")
    assert code == 2 and "cannot be combined" in res["message"]

    # a single target that cannot be resolved fails with its own error and hint, before anything is sent
    bad.write_text(json.dumps(["fine"]))
    code, res, _ = bench(capsys, "--base-url", "http://x/v1", "--api-key-env", "AMLFT_TEST_UNSET_VAR", "--prompts",
                         str(bad))
    assert code == 2 and res["error"] == "ConfigError" and "AMLFT_TEST_UNSET_VAR" in res["message"]
    code, res, _ = bench(capsys, "--run", "no-such-run")
    assert code == 2 and res["error"] == "RecordError" and res["hint"]


# --------------------------------------------------------------------------- units
def test_percentiles_interpolate_and_stay_ordered() -> None:
    from amlft.percentiles import percentile

    assert metrics.percentile is percentile  # the one shared definition (statistics.quantiles, inclusive)
    xs = [0.1 * i for i in range(1, 101)]
    assert metrics.percentile(xs, 50) == pytest.approx(5.05)
    assert metrics.percentile(xs, 99) == pytest.approx(9.901)
    assert metrics.percentile([3.0], 95) == 3.0 and metrics.percentile([], 50) is None
    skewed = [0.01] * 97 + [5.0, 9.0, 10.0]
    ps = [metrics.percentile(skewed, q) for q in (50, 95, 99, 100)]
    assert ps == sorted(ps) and ps[-1] == 10.0


def test_sse_lines() -> None:
    assert parse_sse_line(b'data: {"choices": []}\r') == {"choices": []}
    assert parse_sse_line("data: [DONE]") == "[DONE]"
    assert parse_sse_line(": comment") is None and parse_sse_line("") is None and parse_sse_line("event: x") is None


def test_token_counter_prefers_usage_then_estimates() -> None:
    counter = metrics.TokenCounter()
    assert counter.count("abcdefgh", {"completion_tokens": 7}) == (7, "usage")
    assert counter.count("abcdefgh", None) == (2, "estimate")
    assert counter.count("", None) == (0, "estimate")


# --------------------------------------------------------------------------- --run on a rehearsed Azure run
def test_run_target_on_a_rehearsed_azure_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--run` finds the endpoint in the record, fetches its key through the SDK (from the in-process
    Azure ML fake), samples prompts from the run's prepared split and records outputs.bench."""
    from amlft.backends.azure.backend import AzureBackend
    from amlft.backends.base import StepContext
    from amlft.config import Profile
    from amlft.console import Console
    from amlft.records import RunRecord
    from amlft.testing.rehearsal import stop_all

    repo = Path(__file__).resolve().parents[1]
    profile = Profile.from_yaml(repo / "jobs" / "phi3-mini-ultrachat.yml")
    record = RunRecord.create(backend="azure", profile=profile.to_dict(), profile_path=None, rehearse=True)
    split = tmp_path / "test_gen.jsonl"
    split.write_text("".join(json.dumps({"prompt": f"q{i}", "prompt_id": str(i), "messages": [
        {"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": "answer"}]}) + "\n"
        for i in range(5)))
    record.set_output("data", invoke_file=str(split))
    record.set_output("register", name="phi3-ft", version="1", model_uri="azureml:phi3-ft:1")
    ctx = StepContext(profile=profile, record=record, console=Console(quiet=True), rehearse=True)
    try:
        backend = AzureBackend()
        backend.deploy(ctx)
        key = backend.endpoint_key(ctx)
        code, _res, printed = bench(capsys, "--run", record.run_id, "--concurrency", "1,2", "--requests", "4",
                                   "--warmup", "1", "--max-new-tokens", "16")
    finally:
        stop_all()
    assert code == 0, printed
    bench_out = RunRecord.load(record.run_id).output("bench")
    out = Path(bench_out["report_dir"])
    assert out.parent.parent == record.run_dir  # default --out: the run's own artefact folder
    (summary,) = bench_out["summary"]["targets"]
    assert summary["status"] == "ok" and [lv["requests"] for lv in summary["levels"]] == [4, 4]
    assert "c=1" in bench_out["summary"]["headline"] and "ok/s" in bench_out["summary"]["headline"]
    doc = load_results(out)
    assert doc["workload"]["conversations"] == 5 and "invoke_file" in doc["workload"]["source"]
    (target,) = doc["targets"]
    assert target["target"]["contract"] == "azureml" and target["target"]["deployment"]
    for level in target["levels"]:
        assert_consistent(level)
        assert level["summary"]["errors"] == 0
    assert key and key not in printed and key not in RunRecord.load(record.run_id).path.read_text()
    assert all(key not in p.read_text(errors="ignore") for p in out.iterdir() if p.suffix != ".png")


# --------------------------------------------------------------------------- the real local server
@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.mark.slow
def test_run_target_on_a_local_run_both_contracts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  tiny_model: Path, prompts: str) -> None:
    """The real local scoring server, started by the local backend's own deploy: `--run` finds it in the
    record with its key, both contracts answer, and the run records outputs.bench."""
    from amlft.backends import get_backend
    from amlft.backends.base import StepContext
    from amlft.config import Profile
    from amlft.console import Console
    from amlft.records import RunRecord

    profile = Profile()
    record = RunRecord.create(backend="local", profile=profile.to_dict(), profile_path=None)
    record.set_output("register", name="tiny", version="1", model_uri=str(tiny_model), model_dir=str(tiny_model))
    ctx = StepContext(profile=profile, record=record, console=Console(quiet=True))
    backend = get_backend("local")
    out = tmp_path / "out"
    try:
        backend.deploy(ctx)
        key = backend.endpoint_key(ctx)
        targets = tmp_path / "targets.yml"
        targets.write_text(f"- {{run: {record.run_id}}}\n- {{run: {record.run_id}, contract: openai, name: oa}}\n")
        code, res, printed = bench(capsys, "--targets", str(targets), "--prompts", prompts, "--concurrency", "1,2",
                                   "--requests", "2", "--warmup", "1", "--max-new-tokens", "4",
                                   "--tokenizer", str(tiny_model), "--out", str(out))
    finally:
        record.reload()  # bench wrote outputs.bench through its own RunRecord object
        backend.teardown(ctx)
    assert code == 0, printed
    assert [t["status"] for t in res["bench"]["targets"]] == ["ok", "ok"]
    score, openai = load_results(out)["targets"]
    assert (score["target"]["contract"], openai["target"]["contract"]) == ("azureml", "openai")
    for t in (score, openai):
        for level in t["levels"]:
            assert_consistent(level)
            assert level["summary"]["errors"] == 0 and all(r["output_tokens"] > 0 for r in level["requests"])
    # /score answers carry no usage, so the given tokenizer counts; the OpenAI stream reports usage and TTFT
    assert {lv["summary"]["tokens_source"] for lv in score["levels"]} == {"tokenizer"}
    assert {lv["summary"]["tokens_source"] for lv in openai["levels"]} == {"usage"}
    assert all(0 < r["ttft_s"] <= r["latency_s"] for lv in openai["levels"] for r in lv["requests"])
    # the server counts what it generated (<= max_new_tokens); greedy decoding answers each prompt identically
    assert all(r["output_tokens"] <= 4 for lv in openai["levels"] for r in lv["requests"])
    answers = {(r["prompt"], r["output_chars"]) for t in (score, openai) for lv in t["levels"] for r in lv["requests"]}
    assert len(answers) == len({p for p, _ in answers})
    saved = RunRecord.load(record.run_id)
    assert saved.output("bench")["report_dir"] == str(out)
    assert [t["name"] for t in saved.output("bench")["summary"]["targets"]] == [record.run_id, "oa"]
    assert key not in printed and key not in saved.path.read_text() and key not in (out / "results.json").read_text()
