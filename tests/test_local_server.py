"""The local scoring server: both contracts, streaming, auth, limits, batching, launch/stop.

Most tests run the real HTTP server (uvicorn) in a thread of this process around one real
engine on the tiny model, so they cost milliseconds each; one test launches the detached
process the way `amlft deploy` does. The contract tests take the `engine` fixture, which is
parametrised over ENGINE_FACTORIES: a second engine joins them by adding an entry there.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from amlft.errors import DeploymentError, ServiceError
from amlft.serving import build_azureml_request, score

KEY = "test-key-5f2c9a7e1b"
GREEDY = {"temperature": 0.0, "top_p": 1.0, "do_sample": False, "max_new_tokens": 24}
CHATS = [
    [{"role": "user", "content": "Classify this item: helicopter"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Category for trowel, please."}],
    [{"role": "user", "content": "Here is a word: ferry. Which category?"}],
    [{"role": "user", "content": "hello"}],
]


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def _transformers_engine(model_dir: Path, options: Any) -> Any:
    from amlft.backends.local.engines import create_engine

    return create_engine("transformers", model_dir, options)


_EXPORTS: dict[Path, Path] = {}


def exported(model_dir: Path, precision: str = "fp32") -> Path:
    """The model as an `amlft export` folder (once per session), named like the model so /v1/models agrees."""
    if model_dir not in _EXPORTS:
        import tempfile

        from amlft.console import Console
        from amlft.export.onnx import export_onnx
        from amlft.export.sources import resolve_model_source

        out = Path(tempfile.mkdtemp(prefix="amlft-ort-")) / model_dir.name
        export_onnx(resolve_model_source(model_dir), out, precision=precision, console=Console(quiet=True))
        _EXPORTS[model_dir] = out
    return _EXPORTS[model_dir]


def _ortgenai_engine(model_dir: Path, options: Any) -> Any:
    from amlft.backends.local.engines import create_engine

    return create_engine("onnxruntime-genai", exported(model_dir), options)


# engine name -> factory(transformers model folder, EngineOptions) -> a loaded GenerationEngine
ENGINE_FACTORIES: dict[str, Callable[[Path, Any], Any]] = {"transformers": _transformers_engine,
                                                           "onnxruntime-genai": _ortgenai_engine}


@pytest.fixture(scope="module", params=sorted(ENGINE_FACTORIES))
def engine(request: pytest.FixtureRequest, model_dir: Path) -> Iterator[Any]:
    import torch

    from amlft.backends.local.engines import EngineOptions

    threads = torch.get_num_threads()  # one thread, as the server picks for a tiny model; restored after
    eng = ENGINE_FACTORIES[request.param](model_dir, EngineOptions(max_concurrency=4, max_queue=8, threads=1))
    yield eng
    eng.close(1.0)
    torch.set_num_threads(threads)


def _serve(engine: Any, **limits: Any) -> Any:
    from amlft.backends.local.server import InProcessServer, Settings

    return InProcessServer(engine, KEY, Settings(**{"request_timeout_s": 30.0, "max_request_bytes": 8192,
                                                    "drain_s": 2.0, **limits}))


@pytest.fixture(scope="module")
def base(engine: Any) -> Iterator[str]:
    srv = _serve(engine)
    yield srv.url
    srv.close()


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- contracts ----------------------------------------------------------------------------
@pytest.mark.slow
def test_score_accepts_nested_and_flat_input_string_and_matches_openai(base: str) -> None:
    messages = CHATS[0]
    nested = score(f"{base}/score", KEY, messages, GREEDY, contract="azureml")  # the client sends nested
    flat = requests.post(f"{base}/score", json=build_azureml_request(messages, GREEDY, nested=False),
                         headers=_auth(), timeout=30)
    assert flat.status_code == 200 and flat.json() == {"output": nested}
    assert isinstance(nested, str)
    via_openai = score(f"{base}/v1", KEY, messages, GREEDY, contract="openai")
    assert via_openai == nested  # same greedy generation behind both contracts


@pytest.mark.slow
def test_openai_client_completion_usage_and_stream(base: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    msgs = CHATS[1]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens >= 1 and full.usage.prompt_tokens > 5
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert full.choices[0].finish_reason in ("stop", "length")

    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2, "text arrives in several chunks"
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len(client.models.list().data) == 1


@pytest.mark.slow
def test_raw_sse_framing_ends_with_done(base: str) -> None:
    body = {"messages": CHATS[3], "max_tokens": 8, "temperature": 0, "stream": True}
    with requests.post(f"{base}/v1/chat/completions", json=body, headers=_auth(), stream=True, timeout=30) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
        raw = r.content.decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.slow
def test_models_and_health(base: str, model_dir: Path) -> None:
    models = requests.get(f"{base}/v1/models", headers=_auth(), timeout=5).json()
    assert models["data"][0]["id"] == model_dir.name
    health = requests.get(f"{base}/health", timeout=5)  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert KEY not in health.text


@pytest.mark.slow
def test_ready_and_content_parts_joined_in_order(base: str) -> None:
    ready = requests.get(f"{base}/ready", timeout=5)  # no key needed, like /health
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    parts = [{"type": "text", "text": "Classify this item:"}, {"type": "text", "text": "helicopter"}]
    as_parts = _chat(base, [{"role": "user", "content": parts}], max_tokens=12)
    as_text = _chat(base, [{"role": "user", "content": "Classify this item:\nhelicopter"}], max_tokens=12)
    assert as_parts.status_code == 200, as_parts.text
    assert as_parts.json()["choices"][0]["message"] == as_text.json()["choices"][0]["message"]


@pytest.mark.slow
def test_health_answers_while_loading_and_ready_only_once_loaded(engine: Any) -> None:
    from amlft.backends.local.server import InProcessServer

    srv = InProcessServer(None, KEY)  # as the process is while the model loads
    try:
        assert requests.get(f"{srv.url}/health", timeout=5).json()["status"] == "loading"
        ready = requests.get(f"{srv.url}/ready", timeout=5)
        assert ready.status_code == 503 and ready.headers["Retry-After"] and ready.json()["status"] == "loading"
        early = requests.post(f"{srv.url}/score", json=build_azureml_request(CHATS[0], GREEDY), headers=_auth(),
                              timeout=5)
        assert early.status_code == 503 and "loading" in early.json()["error"]["message"]
        srv.state.engine, srv.state.model_name = engine, engine.model_name
        assert requests.get(f"{srv.url}/ready", timeout=5).status_code == 200
        assert requests.post(f"{srv.url}/score", json=build_azureml_request(CHATS[0], dict(GREEDY, max_new_tokens=2)),
                             headers=_auth(), timeout=30).status_code == 200
    finally:
        srv.close()


def _chat(base: str, messages: list[dict[str, Any]], **fields: Any) -> requests.Response:
    return requests.post(f"{base}/v1/chat/completions", headers=_auth(), timeout=30,
                         json={"messages": messages, "temperature": 0, **fields})


@pytest.mark.slow
def test_ignore_eos_min_tokens_and_stop_fix_the_output_length(base: str) -> None:
    full = _chat(base, CHATS[0], max_tokens=16, ignore_eos=True).json()
    assert full["usage"]["completion_tokens"] == 16 and full["choices"][0]["finish_reason"] == "length"
    text = full["choices"][0]["message"]["content"]
    # a string the greedy output reaches once, halfway
    stop = next(text[i:i + 2] for i in range(len(text) // 2, len(text) - 2) if text.count(text[i:i + 2]) == 1)
    cut = _chat(base, CHATS[0], max_tokens=16, ignore_eos=True, stop=[stop]).json()
    kept = cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "stop" and text.startswith(kept) and stop not in kept
    assert cut["usage"]["completion_tokens"] < 16

    # min_tokens: a stop string (like end-of-sequence) cannot end the output before it
    late = _chat(base, CHATS[0], max_tokens=16, ignore_eos=True, stop=[stop], min_tokens=16).json()
    assert late["usage"]["completion_tokens"] == 16 and late["choices"][0]["message"]["content"] == text

    # streamed: the same text, and the stop string never reaches the client
    body = {"messages": CHATS[0], "temperature": 0, "max_tokens": 16, "ignore_eos": True, "stop": stop,
            "stream": True}
    with requests.post(f"{base}/v1/chat/completions", json=body, headers=_auth(), stream=True, timeout=30) as r:
        events = [e[6:] for e in r.content.decode().split("\n\n") if e]
    pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert "".join(pieces) == kept


def test_min_tokens_masks_end_of_sequence_for_short_rows() -> None:
    import torch

    from amlft.backends.local.engines import GenRequest, make_params
    from amlft.backends.local.engines.transformers_engine import RowControl

    class Engine:  # what RowControl reads of its engine
        def __init__(self) -> None:
            self.eos_ids, self.context_length = {2}, 64

    rows = [GenRequest(make_params(where="", limit=64, max_new_tokens=8, min_tokens=m), deadline=0.0,
                       prompt_ids=[5, 6]) for m in (3, 0)]
    control = RowControl(Engine(), rows, width=2)  # type: ignore[arg-type]
    scores = control.min_tokens(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 10))  # 2 tokens so far
    assert scores[0, 2] == float("-inf") and scores[1, 2] == 0 and scores[0, 3] == 0


def test_key_is_read_once_and_removed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from amlft.backends.local.server import KEY_ENV, read_key

    monkeypatch.setenv(KEY_ENV, KEY)
    assert read_key() == KEY
    assert KEY_ENV not in os.environ and read_key() == ""


# ---- auth and limits ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("path,method", [("/score", "POST"), ("/v1/chat/completions", "POST"),
                                         ("/v1/models", "GET")])
@pytest.mark.parametrize("headers", [{}, _auth("wrong-key"), {"Authorization": KEY}],
                         ids=["no-key", "wrong-key", "no-bearer"])
def test_401_without_or_with_wrong_key(base: str, path: str, method: str, headers: dict[str, str]) -> None:
    body = build_azureml_request(CHATS[0], GREEDY) if path == "/score" else {"messages": CHATS[0]}
    r = requests.request(method, base + path, json=body if method == "POST" else None, headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "wrong-key" not in r.text


@pytest.mark.slow
def test_openai_client_with_wrong_key_is_refused(base: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="tiny", messages=CHATS[0], max_tokens=4)
    with pytest.raises(ServiceError) as err:
        score(f"{base}/score", "nope", CHATS[0], GREEDY)
    assert err.value.status == 401


@pytest.mark.slow
def test_413_when_body_exceeds_limit(base: str) -> None:
    huge = [{"role": "user", "content": "x" * 10_000}]
    r = requests.post(f"{base}/score", json=build_azureml_request(huge, GREEDY), headers=_auth(), timeout=10)
    assert r.status_code == 413
    assert "8192" in r.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("path,body,field", [
    ("/score", b"{not json", "JSON"),
    ("/score", {"inputs": "hi"}, "input_data"),
    ("/score", {"input_data": {"input_string": []}}, "input_data.input_string"),
    ("/score", {"input_data": {"input_string": [{"role": "robot", "content": "x"}]}}, "input_data.input_string[0].role"),
    ("/score", {"input_data": {"input_string": [{"role": "user", "content": 3}]}}, "input_data.input_string[0].content"),
    ("/score", {"input_data": {"input_string": CHATS[0], "parameters": {"max_new_tokens": "ten"}}},
     "input_data.parameters.max_new_tokens"),
    ("/score", {"input_data": {"input_string": CHATS[0], "parameters": {"top_p": 1.5}}}, "input_data.parameters.top_p"),
    ("/score", {"input_data": {"input_string": CHATS[0], "parameters": {"beams": 4}}}, "input_data.parameters.beams"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": CHATS[0], "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"messages": CHATS[0], "n": 3}, "n=3"),
    ("/v1/chat/completions", {"messages": CHATS[0], "tools": []}, "tools"),
    ("/v1/chat/completions", {"messages": CHATS[0], "max_tokens": 10**6}, "max_new_tokens"),
])
def test_400_names_the_bad_field(base: str, path: str, body: Any, field: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(base + path, data=data, headers={**_auth(), "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400
    assert field in r.json()["error"]["message"]


# ---- batching ------------------------------------------------------------------------------
def test_sampling_rules_and_batch_keys() -> None:
    from amlft.backends.local.engines import make_params

    default = make_params(where="", limit=64)
    assert not default.do_sample and default.max_new_tokens == 64  # unasked: greedy, capped by the server
    assert not make_params(where="", temperature=0, do_sample=True, limit=64).do_sample  # temperature 0 = greedy
    assert make_params(where="", temperature=0.7, limit=64).do_sample
    off = make_params(where="", temperature=0.7, top_p=0.5, do_sample=False, limit=64)
    assert off.batch_key() == make_params(where="", max_new_tokens=5, limit=64).batch_key()
    assert make_params(where="", temperature=0.7, limit=64).batch_key() != \
        make_params(where="", temperature=0.9, limit=64).batch_key()


@pytest.mark.slow
def test_batched_greedy_equals_unbatched(engine: Any, base: str) -> None:
    from amlft.backends.local.engines import GenRequest, make_params

    if not hasattr(engine, "generate_batch"):
        pytest.skip("the engine does not batch through BatchScheduler.generate_batch")

    def req(msgs: list[dict[str, str]], n: int) -> Any:
        return GenRequest(make_params(where="", max_new_tokens=n, limit=4096), deadline=time.monotonic() + 60,
                          prompt_ids=engine.encode(msgs))

    alone = [req(m, 10 + 4 * i) for i, m in enumerate(CHATS)]
    for r in alone:
        engine.generate_batch([r])
    together = [req(m, 10 + 4 * i) for i, m in enumerate(CHATS)]  # different lengths and budgets
    engine.generate_batch(together)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == \
           [(r.text, r.completion_tokens, r.finish_reason) for r in alone]
    assert len({len(r.prompt_ids) for r in together}) > 1, "prompts of different lengths were left-padded"

    # Through HTTP: concurrent requests share generate calls and still get their own answers.
    before = engine.health()["stats"]
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = score(f"{base}/score", KEY, CHATS[i % 4], dict(GREEDY, max_new_tokens=10 + 4 * (i % 4)))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [results[i] for i in range(8)] == [alone[i % 4].text for i in range(8)]
    if type(engine).__name__ == "TransformersEngine":
        # Only where one generate call outlasts the callers' arrival gap do concurrent requests
        # reliably meet in a batch: the ORT engine finishes a tiny-model request first, so there
        # the count depends on timing (seen: 8 of 8 alone in one CI run) and is not asserted.
        assert engine.health()["stats"]["batches"] - before["batches"] < 8, "some requests were batched together"


# ---- overload, timeout ---------------------------------------------------------------------
@pytest.mark.slow
def test_overload_503_timeout_504_and_slot_freed(model_dir: Path) -> None:
    from amlft.backends.local.engines import EngineOptions
    from amlft.backends.local.engines.transformers_engine import TransformersEngine

    eng = TransformersEngine(model_dir, EngineOptions(max_concurrency=1, max_queue=0))
    forward = eng.model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:  # a big model on a small machine
        time.sleep(0.02)
        return forward(*args, **kwargs)

    eng.model.forward = slow_forward
    srv = _serve(eng, request_timeout_s=1.0)
    url = srv.url
    try:
        slow_body = {"messages": CHATS[0], "max_tokens": 300, "ignore_eos": True, "temperature": 0}
        outcome: dict[str, Any] = {}

        def slow() -> None:
            t0 = time.monotonic()
            r = requests.post(f"{url}/v1/chat/completions", json=slow_body, headers=_auth(), timeout=30)
            outcome.update(status=r.status_code, seconds=time.monotonic() - t0, body=r.json())

        t = threading.Thread(target=slow)
        t.start()
        for _ in range(200):
            if requests.get(f"{url}/health", timeout=5).json()["running"] == 1:
                break
            time.sleep(0.01)
        t0 = time.monotonic()
        busy = requests.post(f"{url}/score", json=build_azureml_request(CHATS[1], GREEDY), headers=_auth(),
                             timeout=30)
        assert busy.status_code == 503 and time.monotonic() - t0 < 0.5, "refused at once, not queued"
        assert busy.headers.get("Retry-After")
        t.join(30)
        assert outcome["status"] == 504 and 0.9 < outcome["seconds"] < 5
        assert "timeout" in outcome["body"]["error"]["message"]
        for _ in range(100):  # the timed-out generation stops at its next step, freeing the slot
            if requests.get(f"{url}/health", timeout=5).json()["running"] == 0:
                break
            time.sleep(0.02)
        ok = requests.post(f"{url}/score", json=build_azureml_request(CHATS[1], dict(GREEDY, max_new_tokens=4)),
                           headers=_auth(), timeout=30)
        assert ok.status_code == 200
    finally:
        srv.close()
        eng.close(1.0)


# ---- the detached process ------------------------------------------------------------------
def test_launch_refuses_a_folder_without_a_model_and_a_missing_key(tmp_path: Path) -> None:
    from amlft.backends.local.server import launch

    with pytest.raises(DeploymentError, match=r"no config\.json"):
        launch(tmp_path, key=KEY, log_path=tmp_path / "server.log")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DeploymentError, match="without a key"):
        launch(tmp_path, key="", log_path=tmp_path / "server.log")
    assert not (tmp_path / "server.log").exists(), "no process was started"


@pytest.mark.slow
def test_launch_stop_is_alive_drains_and_frees_port(model_dir: Path, tmp_path: Path) -> None:
    from amlft.backends.local.server import is_alive, launch, stop

    log_path = tmp_path / "server.log"
    started: list[int] = []
    handle = launch(model_dir, key=KEY, max_concurrency=2, log_path=log_path, model_name="tiny-ft",
                    on_started=started.append)
    try:
        assert started == [handle.pid]
        assert is_alive(handle.pid, handle.port)
        assert requests.get(f"http://127.0.0.1:{handle.port}/ready", timeout=5).json()["status"] == "ready"
        assert KEY not in Path(f"/proc/{handle.pid}/cmdline").read_text(errors="replace")
        assert handle.scoring_uri.endswith("/score") and handle.openai_base_url.endswith("/v1")
        answer = score(handle.scoring_uri, KEY, CHATS[0], GREEDY)
        assert answer == score(handle.openai_base_url, KEY, CHATS[0], GREEDY, contract="openai")
        assert requests.get(f"{handle.openai_base_url}/models", headers=_auth(), timeout=5).json()["data"][0]["id"] \
            == "tiny-ft"
        refused = requests.post(handle.scoring_uri, json={}, headers=_auth("guess-" + KEY), timeout=5)
        assert refused.status_code == 401

        # SIGTERM while a request is generating: it still gets its whole answer.
        result: dict[str, Any] = {}
        body = {"messages": CHATS[2], "max_tokens": 60, "ignore_eos": True, "temperature": 0}
        worker = threading.Thread(target=lambda: result.update(r=requests.post(
            f"{handle.openai_base_url}/chat/completions", json=body, headers=_auth(), timeout=30)))
        worker.start()
        for _ in range(200):
            if requests.get(f"http://127.0.0.1:{handle.port}/health", timeout=5).json()["running"]:
                break
            time.sleep(0.01)
        assert stop(handle.pid) is True
        worker.join(30)
        assert result["r"].status_code == 200
        assert result["r"].json()["usage"]["completion_tokens"] == 60
    finally:
        stop(handle.pid)
    assert not is_alive(handle.pid, handle.port)
    assert stop(handle.pid) is False  # idempotent
    with socket.socket() as s:  # nothing listens there any more...
        assert s.connect_ex(("127.0.0.1", handle.port)) != 0
    with socket.socket() as s:  # ...and a new server can bind it (as every server does, with SO_REUSEADDR)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", handle.port))
    logged = log_path.read_text()
    assert '"POST /score" 200' in logged and '"POST /score" 401' in logged
    assert KEY not in logged and "Authorization" not in logged
