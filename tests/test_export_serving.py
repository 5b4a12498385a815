"""A fine-tuned run served by either engine, and what its export costs in quality.

A run as a local fine-tune leaves it, deployed and kept; then, from the CLI:
redeploy it with the onnxruntime-genai engine (it exports first), switch back to
transformers, tear down and redeploy with ORT (the export is reused, nothing retrained),
and evaluate fp32 and int4 exports beside the before/after rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from amlft.cli.main import main
from amlft.hashing import file_sha256
from amlft.records import RunRecord
from amlft.serving import score

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
GREEDY = {"do_sample": False, "max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory: pytest.TempPathFactory) -> Any:  # yields (record, its AMLFT_HOME)
    """A run as a local fine-tune leaves it (trained tiny model registered, held-out data, before/after
    evaluation), deployed with the default engine and kept."""
    import os
    import shutil

    from amlft.backends.local.tiny import build_tiny_model
    from amlft.config import Profile
    from amlft.resources import sample_chat_dir

    home = tmp_path_factory.mktemp("amlft-home-serving")
    saved = os.environ.get("AMLFT_HOME")
    os.environ["AMLFT_HOME"] = str(home)
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-ft"), pretrain_steps=20)
    profile = Profile.from_yaml(REPO / "jobs" / "local-demo.yml", overrides=["local.eval_prompts=8"]).to_dict()
    rec = RunRecord.create(backend="local", profile=profile, profile_path="jobs/local-demo.yml")
    data = rec.run_dir / "data"
    data.mkdir(parents=True)
    shutil.copy(sample_chat_dir() / "test_sft.jsonl", data / "test_sft.jsonl")
    rec.set_output("data", test_file=str(data / "test_sft.jsonl"))
    rec.set_output("train", merged_dir=str(model), base_model="amlft-tiny-chat")
    rec.set_output("register", model_dir=str(model), name="local-demo-ft", version="1",
                   model_uri="models:/local-demo-ft/1")
    rec.set_output("eval", rows=[{"metric": "exact match (8 held-out prompts)", "before": 0.0, "after": 0.5},
                                 {"metric": "held-out loss (assistant tokens)", "before": 6.3, "after": 3.1}])
    try:
        main(["deploy", "--run", rec.run_id])
    except SystemExit as exc:
        assert not exc.code, "deploy failed"
    yield rec, str(home)
    os.environ["AMLFT_HOME"] = str(home)
    try:
        main(["teardown", "--run", rec.run_id])
    except SystemExit as exc:
        assert not exc.code, "teardown failed"
    if saved is None:
        os.environ.pop("AMLFT_HOME", None)
    else:
        os.environ["AMLFT_HOME"] = saved


def _served(rec: RunRecord) -> tuple[dict[str, Any], str]:
    from amlft.records import load_secret

    rec.reload()
    return rec.output("deploy"), str(load_secret(rec.run_id, "endpoint_key"))


def test_redeploy_with_either_engine_without_retraining(kept_run: tuple[RunRecord, str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rec, home = kept_run
    monkeypatch.setenv("AMLFT_HOME", home)
    first, _ = _served(rec)
    assert first["engine"] == "transformers"
    trained = file_sha256(Path(first["model_dir"]) / "model.safetensors")

    code, out, err = run_cli(["deploy", "--run", rec.run_id, "--engine", "onnxruntime-genai"], capsys)
    assert code == 0, err
    assert "exporting (int4, cpu) first" in out and "building ONNX (int4, cpu)" in out, "export shown with progress"
    assert f"stopped the scoring server pid {first['pid']}" in out, "the kept transformers server made way"
    dep, key = _served(rec)
    assert dep["engine"] == "onnxruntime-genai" and dep["pid"] != first["pid"]
    assert Path(dep["model_dir"]) == rec.run_dir / "exports" / "onnx-int4-cpu"
    assert (Path(dep["model_dir"]) / "genai_config.json").is_file()
    prompt = [{"role": "user", "content": "Classify this item: pear"}]
    ort_text = score(dep["scoring_uri"], key, prompt, GREEDY)
    assert isinstance(ort_text, str) and ort_text
    with requests.post(f"{dep['openai_base_url']}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"messages": prompt, "max_tokens": 16, "temperature": 0, "stream": True},
                       stream=True, timeout=30) as r:
        events = [e for e in r.content.decode().split("\n\n") if e]
    assert r.status_code == 200 and events[-1] == "data: [DONE]"
    streamed = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if json.loads(e[6:]).get("choices"))
    assert streamed == ort_text
    assert requests.post(dep["scoring_uri"], json={}, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401

    code, out, err = run_cli(["deploy", "--run", rec.run_id, "--engine", "transformers"], capsys)
    assert code == 0, err
    back, key = _served(rec)
    assert back["engine"] == "transformers" and isinstance(score(back["scoring_uri"], key, prompt, GREEDY), str)

    code, _, err = run_cli(["teardown", "--run", rec.run_id], capsys)
    assert code == 0, err
    code, out, err = run_cli(["deploy", "--run", rec.run_id, "--engine", "onnxruntime-genai"], capsys)
    assert code == 0, err
    assert "building ONNX" not in out, "the recorded export is reused"
    again, key = _served(rec)
    assert score(again["scoring_uri"], key, prompt, GREEDY) == ort_text
    assert file_sha256(Path(first["model_dir"]) / "model.safetensors") == trained, "nothing was retrained"
    code, _, err = run_cli(["teardown", "--run", rec.run_id], capsys)
    assert code == 0, err


def test_export_evaluation_sits_beside_before_and_after(kept_run: tuple[RunRecord, str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rec, home = kept_run
    monkeypatch.setenv("AMLFT_HOME", home)
    code, out, err = run_cli(["export", "--run", rec.run_id, "--precision", "fp32", "--evaluate", "--json"], capsys)
    assert code == 0, err
    fp32 = json.loads(out)["export"]["eval"]
    rec.reload()
    ev = rec.output("eval")
    exact = ev["rows"][0]
    assert exact["metric"].startswith("exact match")
    # fp32 ONNX is the fine-tuned model's own function: the same greedy tokens
    assert fp32["token_agreement"] >= 0.95 and fp32["n"] == 8 and 0.0 <= exact["onnx-fp32-cpu"] <= 1.0
    assert exact["before"] == 0.0 and exact["after"] == 0.5, "before/after are kept"
    assert "evaluating onnx-fp32-cpu" in err

    code, out, err = run_cli(["export", "--run", rec.run_id, "--precision", "int4", "--evaluate"], capsys)
    assert code == 0, err
    rec.reload()
    rows = rec.output("eval")["rows"]
    agreement = next(r for r in rows if r["metric"] == "greedy token agreement with the PyTorch model")
    assert 0.0 <= agreement["onnx-int4-cpu"] <= 1.0 and agreement["onnx-fp32-cpu"] >= 0.95
    assert all({"before", "after", "onnx-fp32-cpu", "onnx-int4-cpu"} <= set(r) for r in rows)
    assert "onnx-int4-cpu" in out and "before" in out, "the table is printed"

    code, _, err = run_cli(["export", "--model-dir", str(rec.run_dir), "--evaluate", "--out", "x"], capsys)
    assert code == 2 and "--evaluate needs a run" in err
