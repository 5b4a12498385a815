"""The local backend end to end on the tiny model: build, train, evaluate, register, serve,
invoke, tear down - and a crash mid-train resumed from its checkpoint."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _ctx(*overrides: str) -> Any:
    from amlft.backends.base import StepContext
    from amlft.config import Profile
    from amlft.console import Console
    from amlft.records import RunRecord

    prof = Profile.from_yaml(REPO / "jobs" / "local-demo.yml", overrides=list(overrides))
    rec = RunRecord.create(backend="local", profile=prof.to_dict(), profile_path="jobs/local-demo.yml")
    return StepContext(profile=prof, record=rec, console=Console(quiet=True))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server would: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_tiny_model_loads_with_transformers_and_renders_chat(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from amlft.backends.local.tiny import build_tiny_model

    d = build_tiny_model(tmp_path / "tiny", pretrain_steps=5)
    assert (d / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    enc = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=5)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    assert build_tiny_model(d, pretrain_steps=5) == d  # same settings: reused, not rebuilt


def test_demo_trains_evaluates_registers_serves_invokes_and_tears_down() -> None:
    import mlflow
    from transformers import AutoModelForCausalLM

    from amlft.backends.local.backend import LocalBackend
    from amlft.backends.local.registry import tracking_uri
    from amlft.lifecycle import run_step
    from amlft.records import load_secret

    ctx = _ctx()
    rec = ctx.record
    for step in ("auth", "check", "data", "submit"):
        run_step(ctx, step)
    # the training process is in the record (with its pid) before anything waits on it
    proc = rec.resources("local.train_process")[0]
    assert proc["pid"] == rec.output("submit")["pid"] and proc["billable"] is False
    run_step(ctx, "wait")

    ev = rec.output("eval")
    assert ev["metric"] == "exact_match" and ev["n"] >= 20
    assert ev["before"] <= 0.1 and ev["after"] >= ev["before"] + 0.5, ev  # the fine-tune taught the task
    assert ev["rows"][0]["before"] == ev["before"] and ev["rows"][0]["after"] == ev["after"]
    train = rec.output("train")
    assert train["hyperparameters"]["learning_rate"] == ctx.profile.finetune["learning_rate"]
    assert train["metrics"]["steps"] > 0 and train["metrics"]["tokens_per_s"] > 0
    assert train["metrics"]["final_loss"] < 0.5 * json.loads(
        (Path(train["checkpoint_dir"]).parent / "progress.jsonl").read_text().splitlines()[0])["loss"]
    assert Path(train["loss_curve_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    reg = run_step(ctx, "register")
    assert reg["model_uri"] == f"models:/{reg['name']}/{reg['version']}"
    mlflow.set_tracking_uri(tracking_uri(rec.root))
    mv = mlflow.MlflowClient().get_model_version(reg["name"], reg["version"])
    assert mv.tags["amlft_run_id"] == rec.run_id and mv.tags["data_hash"] == rec.output("data")["data_hash"]
    assert mv.tags["base_model"] == "amlft-tiny-chat"
    run = mlflow.get_run(reg["mlflow_run_id"])
    assert run.data.metrics["steps"] == train["metrics"]["steps"]
    AutoModelForCausalLM.from_pretrained(reg["model_dir"])  # merged weights reload with no hub, no adapter
    assert not (Path(reg["model_dir"]) / "adapter_config.json").exists()

    dep = run_step(ctx, "deploy")
    assert rec.resources("local.server")[0]["pid"] == dep["pid"]
    assert load_secret(rec.run_id, "endpoint_key") and load_secret(rec.run_id, "endpoint_key") not in rec.path.read_text()
    assert not _port_free(dep["port"])
    row = json.loads(Path(rec.output("data")["invoke_file"]).read_text().splitlines()[0])
    ans = run_step(ctx, "invoke")
    assert isinstance(ans["response"], str)
    backend = LocalBackend()
    assert backend.left_running(ctx)

    # an item from the held-out prompts answers in the learned format through the server
    from amlft.serving import score

    info = backend.endpoint(ctx)
    text = score(info.scoring_uri, backend.endpoint_key(ctx), [{"role": "user", "content": "Classify this item: pear"}],
                 {"do_sample": False, "max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0})
    assert text.startswith("Category:"), (text, row)

    out = run_step(ctx, "teardown", delete_model=True)
    assert any("local.server" in s for s in out["stopped"])
    assert _port_free(dep["port"]) and not backend.left_running(ctx)
    assert load_secret(rec.run_id, "endpoint_key") is None
    assert out["deleted_models"] == [f"{reg['name']}:{reg['version']}"]
    assert run_step(ctx, "teardown")["stopped"] == []  # safe to repeat


def test_crash_mid_training_resumes_from_checkpoint() -> None:
    import os
    import signal

    from amlft.backends.local.backend import LocalBackend, process_running, read_progress
    from amlft.backends.local.trainer import TrainConfig, latest_checkpoint
    from amlft.lifecycle import run_step

    ctx = _ctx("local.max_steps=12", "local.save_steps=5", "local.eval_prompts=2")
    rec = ctx.record
    for step in ("data",):
        run_step(ctx, step)
    train_dir = Path(run_step(ctx, "submit")["train_dir"])
    pid = rec.output("submit")["pid"]
    deadline = time.monotonic() + 300
    while not (train_dir / "checkpoints" / "checkpoint-5" / "trainer_state.pt").exists():  # a real crash: SIGKILL
        assert process_running(pid) and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    killed_at = len(read_progress(train_dir / "progress.jsonl"))
    assert 5 <= killed_at < 12
    last = latest_checkpoint(train_dir / "checkpoints")  # checkpoint-5 (or -10 on a very fast machine)
    assert last is not None
    deadline = time.monotonic() + 10
    while process_running(pid):  # reaped
        assert time.monotonic() < deadline
        time.sleep(0.05)

    first_pid = rec.output("submit")["pid"]
    out = run_step(ctx, "submit")  # resumes rather than starting over
    assert out["resumed_from"] == last.name and out["pid"] != first_pid
    run_step(ctx, "wait")
    metrics = rec.output("train")["metrics"]
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == int(last.name.split("-")[1])
    steps = [json.loads(x)["step"] for x in
             (Path(rec.output("submit")["train_dir"]) / "progress.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # no step lost, none counted twice
    assert any("resumed" in e["message"] for e in rec.data["events"])

    # teardown stops a training that is still running
    ctx2 = _ctx("local.max_steps=400", "local.eval_prompts=0", "local.share_prefix=false", "local.fused_lora=false")
    run_step(ctx2, "data")
    submitted = run_step(ctx2, "submit")
    pid = submitted["pid"]
    assert process_running(pid)
    spec = TrainConfig.load(Path(submitted["train_dir"]))  # the profile's local knobs reach the trainer
    assert (spec.share_prefix, spec.fused_lora, spec.max_steps) == (False, False, 400)
    out = LocalBackend().teardown(ctx2)
    assert any(str(pid) in s for s in out["stopped"]) and not process_running(pid)
