"""Model and tokenizer references fail early, fast and clearly (issue 11.6), tested from the CLI:
an unreachable hub model fails `amlft check` (not minutes into `wait`), a tokenizer folder that
does not exist says "folder not found", and an offline hub tokenizer fails without touching the
network (no retry storm). A counting HTTP server stands in for the Hub at HF_ENDPOINT.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
HUB_MODEL = "someone/never-downloaded-model-7b"


class _Hub:
    """An HTTP server answering every request with one status code, counting the requests."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        hub = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub_503(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Hub]:
    hub = _Hub(503)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()


def _cli_process(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The CLI in a fresh process: huggingface_hub reads HF_HUB_OFFLINE/HF_ENDPOINT once, at import."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "amlft.cli.main", *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env})
    return out.returncode, out.stdout + out.stderr


def _cli(*args: str) -> tuple[int, str]:
    from amlft.cli.main import cli

    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def _hub_profile(tmp_path: Path, hub_id: str = HUB_MODEL) -> Path:
    text = (REPO / "jobs" / "local-demo.yml").read_text().replace("  build: tiny ", f"  hub_id: {hub_id} #", 1)
    p = tmp_path / "hub-model.yml"
    p.write_text(text)
    return p


def test_check_fails_at_once_for_a_hub_model_that_is_offline_and_not_cached(tmp_path: Path, hub_503: _Hub) -> None:
    # conftest sets HF_HUB_OFFLINE=1; the Hub stand-in must not even be asked
    code, out = _cli("check", "--profile", str(_hub_profile(tmp_path)))
    assert code != 0
    assert HUB_MODEL in out and "HF_HUB_OFFLINE" in out and "not in the local Hugging Face cache" in out
    assert hub_503.requests == []


def test_check_fails_for_an_unreachable_hub_with_one_request_and_no_retries(
        tmp_path: Path, hub_503: _Hub) -> None:
    code, out = _cli_process("check", "--profile", str(_hub_profile(tmp_path)),
                             env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_503.url})
    assert code != 0
    assert HUB_MODEL in out and "503" in out
    probes = [r for r in hub_503.requests if HUB_MODEL in r]
    assert len(probes) == 1 and "config.json" in probes[0]  # one probe, no retry storm


def test_check_fails_when_nothing_listens_at_the_hub_address(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out = _cli_process("check", "--profile", str(_hub_profile(tmp_path)),
                             env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert code != 0 and "cannot reach the Hugging Face Hub" in out and HUB_MODEL in out


def test_a_tokenizer_folder_that_does_not_exist_says_folder_not_found(tmp_path: Path) -> None:
    src = tmp_path / "chat.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    missing = tmp_path / "no-such-tokenizer"
    code, out = _cli_process("data", "validate", str(src), "--max-seq-length", "64", "--tokenizer", str(missing),
                             env={})
    assert code != 0
    assert "folder not found" in out and str(missing) in out


def test_an_offline_hub_tokenizer_fails_without_any_request(hub_503: _Hub) -> None:
    from amlft.errors import ConfigError
    from amlft.model_refs import load_tokenizer

    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE") as err:
        load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", what="data.tokenizer")
    assert "data.tokenizer Qwen/Qwen2.5-0.5B-Instruct" in err.value.message
    assert hub_503.requests == []  # offline means no network at all, so no retries to wait through


def test_a_missing_hub_repo_is_named_as_such(tmp_path: Path) -> None:
    hub = _Hub(404, {"X-Error-Code": "RepoNotFound"})  # what huggingface.co answers for an unknown repo
    try:
        code, out = _cli_process("check", "--profile", str(_hub_profile(tmp_path, "owner/typo-in-name")),
                                 env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url})
        assert code != 0 and "owner/typo-in-name does not exist on the Hugging Face Hub" in out
        assert len([r for r in hub.requests if "typo-in-name" in r]) == 1
    finally:
        hub.close()


def test_folder_or_hub_id() -> None:
    from amlft.model_refs import looks_like_folder

    assert not looks_like_folder("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert all(looks_like_folder(p) for p in ("./tok", "../a/b", "/abs/tok", "~/tok", "a/b/c"))
