"""The local backend: every lifecycle step really runs on this machine.

    check     CPU/GPU, free memory and disk versus the model's estimated needs
    data      amlft.data (prepare + validate), unchanged
    submit    LoRA training as a detached process (train_main), recorded before anything waits
    wait      follows its progress file with a live bar; resumes a dead run from its checkpoint
    register  MLflow run + registered model in .amlft/mlflow.db (merged weights + tokenizer)
    deploy    local scoring server (server.launch) with a generated key kept outside the record
    teardown  stops the server (port freed) and any training still running; optionally the model

Like an Azure job, training outlives the command that started it: `amlft wait` can be
Ctrl-C'd and run again, and a crashed or killed training resumes from its last checkpoint
on the next `amlft submit` or `amlft wait`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from amlft.backends.base import EndpointInfo, StepContext
from amlft.backends.local import processes
from amlft.errors import (
    ConfigError,
    JobCanceled,
    RecordError,
    TrainingError,
    WaitTimeout,
)
from amlft.extras import needs_extra
from amlft.records import delete_secrets, load_secret, store_secret

TRAIN_PROCESS = "local.train_process"
SERVER = "local.server"
MODEL = "local.model"
TRAIN_MODULE = "amlft.backends.local.train_main"
DEMO_EVAL_MAX_NEW_TOKENS = 32

def process_running(pid: int | None, *, module: str = TRAIN_MODULE) -> bool:
    """True if pid is alive, not a zombie, and (where /proc tells) really runs `module`."""
    return processes.is_running(pid, module=module)


def kill_process(pid: int, *, timeout_s: float = 10.0) -> bool:
    """Stop a training process (SIGTERM, then SIGKILL); True if it was running."""
    return processes.terminate(pid, module=TRAIN_MODULE, timeout_s=timeout_s)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_progress(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def model_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


class LocalBackend:
    name = "local"

    # -------------------------------------------------------------------- paths
    @staticmethod
    def _train_dir(ctx: StepContext) -> Path:
        return ctx.record.run_dir / "train"

    @staticmethod
    def _state_dir(ctx: StepContext) -> Path:
        return ctx.record.root

    def _base_model(self, ctx: StepContext) -> tuple[str, str]:
        """(model reference to load, what to call it in lineage): a built tiny model, a shipped model,
        a GGUF file (its cached conversion), a folder or a hub id."""
        m = ctx.profile.model
        chosen = [k for k in ("build", "source", "gguf", "path") if getattr(m, k)]
        if len(chosen) > 1:
            raise ConfigError(f"model.{' and model.'.join(chosen)} are both set; the local backend needs one.",
                              hint="Keep one of model.build, model.source, model.gguf, model.path "
                                   "(model.hub_id may stay beside gguf/path to name the base model).")
        if m.build == "tiny":
            return str(self._state_dir(ctx) / "models" / "tiny-chat"), "amlft-tiny-chat"
        gguf = self._gguf_file(ctx)
        if gguf is not None:
            from amlft.backends.local.model_sources import converted_dir, shipped_model

            label = shipped_model(m.source).hub_id if m.source else (m.hub_id or gguf.name)
            return str(converted_dir(gguf, self._state_dir(ctx))), label
        if m.path:
            p = Path(m.path).expanduser()
            if not p.is_dir():
                raise ConfigError(f"model.path {p}: folder not found.",
                                  hint="Point model.path at a transformers model folder or a folder holding one .gguf.")
            if not (p / "config.json").exists():
                raise ConfigError(f"model.path {p} is not a transformers model folder (no config.json) and holds no "
                                  ".gguf file.", hint="Point model.path at a folder saved with save_pretrained().")
            return str(p.resolve()), str(p)
        if m.hub_id:
            return m.hub_id, m.hub_id
        raise ConfigError("The local backend needs model.build: tiny, model.source, model.gguf, model.path or "
                          "model.hub_id.",
                          hint="e.g. model: {source: amlft:smollm2-135m-instruct}, or run jobs/local-demo.yml.")

    def _gguf_file(self, ctx: StepContext) -> Path | None:
        """The GGUF file this profile names (model.source, model.gguf, or the one .gguf in model.path)."""
        from amlft.backends.local.model_sources import gguf_in_folder, locate_shipped

        m = ctx.profile.model
        if m.source:
            return locate_shipped(m.source)
        if m.gguf:
            p = Path(m.gguf).expanduser()
            if not p.is_file():
                raise ConfigError(f"model.gguf {p}: file not found.", hint="Point model.gguf at a .gguf file.")
            return p.resolve()
        if m.path and Path(m.path).expanduser().is_dir() and not (Path(m.path).expanduser() / "config.json").exists():
            found = gguf_in_folder(Path(m.path).expanduser())
            return found.resolve() if found else None
        return None

    # -------------------------------------------------------------------- auth
    def auth(self, ctx: StepContext) -> dict[str, Any]:
        facts = {"backend": "local", "credential": "none needed", "state_dir": str(self._state_dir(ctx)),
                 "python": sys.version.split()[0]}
        ctx.console.info("local backend: no credentials needed; state in " + facts["state_dir"])
        ctx.record.set_output("auth", **facts)
        return facts

    # -------------------------------------------------------------------- check
    def check(self, ctx: StepContext) -> list[dict[str, Any]]:
        from amlft.backends.local import resources
        from amlft.backends.local.export_run import engine_findings
        from amlft.backends.local.trainer import effective_hyperparameters

        findings: list[dict[str, Any]] = engine_findings(ctx.profile.local.engine)
        try:
            hp = effective_hyperparameters(ctx.profile.finetune)
        except ConfigError as exc:
            return [{"severity": "error", "check": "finetune", "message": exc.message, "fix": exc.hint or ""}]
        device_req = ctx.profile.local.device
        gpus = resources.gpus()
        device = "cuda" if gpus and device_req in ("auto", "cuda") else "cpu"
        if device_req == "cuda" and not gpus:
            findings.append({"severity": "error", "check": "device", "message": "local.device is cuda but no CUDA GPU "
                             "is visible to torch.", "fix": "Set local.device: auto (trains on CPU) or install a CUDA torch."})
        cpus = os.cpu_count() or 1
        findings.append({"severity": "info", "check": "device",
                         "message": (f"training on GPU {gpus[0]['name']} ({'bf16' if gpus[0]['bf16'] else 'fp16'})"
                                     if device == "cuda" else f"training on CPU ({cpus} cores, fp32)"), "fix": ""})

        try:
            ref, label = self._base_model(ctx)
            if ref == ctx.profile.model.hub_id:  # not in the cache and no hub: fail now, not minutes into wait
                from amlft.model_refs import check_hub_model

                check_hub_model(ref)
        except ConfigError as exc:
            findings.append({"severity": "error", "check": "model", "message": exc.message, "fix": exc.hint or ""})
            return findings
        if ctx.profile.model.build == "tiny":
            from amlft.backends.local.tiny import DEFAULTS

            h, f, n, v = (DEFAULTS["hidden_size"], DEFAULTS["intermediate_size"], DEFAULTS["num_hidden_layers"],
                          DEFAULTS["vocab_size"])
            params, how = v * h + n * (2 * h * h + 2 * h * h // 2 + 3 * h * f), "tiny build settings"
        elif (gguf := self._gguf_file(ctx)) is not None and not (Path(ref) / "config.json").exists():
            from amlft.backends.local.model_sources import gguf_parameters

            params, how = gguf_parameters(gguf), f"GGUF tensors of {gguf.name}"
        else:
            params, how = resources.count_parameters(ref, trust_remote_code=ctx.profile.model.trust_remote_code)
        if params is None:
            findings.append({"severity": "warning", "check": "model_size",
                             "message": f"cannot estimate the size of {label} offline (not in the local cache)",
                             "fix": "Make sure the hub is reachable, or set model.path to a local folder."})
            ctx.record.set_output("check", device=device, cost={"summary": "local: no cloud cost"})
            return findings
        need = resources.estimate_needs(params, device=device, max_seq_length=hp["max_seq_length"],
                                        batch_size=hp["per_device_train_batch_size"])
        mem_have = gpus[0]["free_bytes"] if device == "cuda" else resources.available_memory_bytes()
        where = "free GPU memory" if device == "cuda" else "available RAM"
        fmt = resources.fmt_bytes
        mem_msg = (f"{label}: {params / 1e6:,.1f}M parameters ({how}); LoRA fine-tune needs about "
                   f"{fmt(need['memory_bytes'])} of {where}, {fmt(mem_have)} available")
        if need["memory_bytes"] > mem_have:
            findings.append({"severity": "error", "check": "memory", "message": mem_msg + " - it will not fit",
                             "fix": "Use a smaller model (e.g. model.hub_id: Qwen/Qwen2.5-0.5B-Instruct or model.build: "
                                    "tiny), lower finetune.max_seq_length / per_device_train_batch_size, close other "
                                    "programs, or fine-tune on Azure (--backend azure)."})
        else:
            findings.append({"severity": "info", "check": "memory", "message": mem_msg, "fix": ""})
        disk_have = resources.free_disk_bytes(self._state_dir(ctx))
        disk_msg = (f"needs about {fmt(need['disk_bytes'])} of disk under {self._state_dir(ctx)} "
                    f"(checkpoints, merged model, registry copy), {fmt(disk_have)} free")
        if need["disk_bytes"] > disk_have:
            findings.append({"severity": "error", "check": "disk", "message": disk_msg,
                             "fix": "Free disk space or point AMLFT_HOME at a bigger disk."})
        else:
            findings.append({"severity": "info", "check": "disk", "message": disk_msg, "fix": ""})
        if device == "cpu" and params > 300e6:
            findings.append({"severity": "warning", "check": "speed",
                             "message": f"{params / 1e9:.1f}B parameters on CPU will train slowly (hours)",
                             "fix": "Use a GPU, a smaller model, or local.max_steps to bound the run."})
        ctx.record.set_output("check", device=device, params=params,
                              memory_needed_bytes=need["memory_bytes"], memory_available_bytes=mem_have,
                              disk_needed_bytes=need["disk_bytes"], disk_free_bytes=disk_have,
                              cost={"summary": "local: no cloud cost (this machine's CPU/GPU time only)",
                                    "cluster_usd_per_hour": 0.0, "endpoint_usd_per_hour": 0.0,
                                    "endpoint_usd_per_day": 0.0, "price_table_date": None})
        return findings

    # -------------------------------------------------------------------- data
    def data(self, ctx: StepContext) -> dict[str, Any]:
        from amlft.data.step import prepare_run_data

        return prepare_run_data(ctx)

    # -------------------------------------------------------------------- submit
    def _ensure_base_model(self, ctx: StepContext) -> str:
        ref, _ = self._base_model(ctx)
        if ctx.profile.model.build == "tiny":
            from amlft.backends.local.tiny import MARKER, build_tiny_model

            if not (Path(ref) / MARKER).exists():
                ctx.console.info(f"building the tiny offline chat model in {ref} (tokenizer + brief pre-training)")
            build_tiny_model(Path(ref), seed=0)
        gguf = self._gguf_file(ctx)
        if gguf is not None:
            from amlft.backends.local.model_sources import convert_gguf, is_converted

            if is_converted(Path(ref)):
                ctx.console.info(f"using {gguf.name} converted earlier: {ref}")
            else:
                with ctx.console.progress(f"converting {gguf.name} to a transformers folder", total=4) as bar:
                    ref = str(convert_gguf(gguf, self._state_dir(ctx),
                                           report=lambda done, total, what: bar.update(done, total=total,
                                                                                      status=what)))
        return ref

    def _start_training(self, ctx: StepContext, *, resume: bool) -> dict[str, Any]:
        from amlft.backends.local.trainer import TrainConfig, effective_hyperparameters, latest_checkpoint

        rec, prof = ctx.record, ctx.profile
        data = rec.output("data")
        if not data.get("train_file") or not Path(data["train_file"]).exists():
            raise RecordError("This run has no prepared training data.", hint="Run `amlft data` first.")
        train_dir = self._train_dir(ctx)
        hp = effective_hyperparameters(prof.finetune)
        if prof.local.max_steps:
            hp["max_steps"] = prof.local.max_steps
        if prof.data.max_seq_length and "max_seq_length" not in prof.finetune:
            hp["max_seq_length"] = prof.data.max_seq_length
        if resume and (train_dir / "config.json").exists():
            spec = TrainConfig.load(train_dir)  # resume with exactly what the interrupted run used
        else:
            model_ref = self._ensure_base_model(ctx)
            spec = TrainConfig(train_dir=str(train_dir), model=model_ref, train_file=data["train_file"],
                               test_file=data.get("test_file"), **hp, device=prof.local.device,
                               batching=prof.local.batching, save_steps=prof.local.save_steps,
                               eval_prompts=prof.local.eval_prompts, threads=prof.local.threads,
                               trust_remote_code=prof.model.trust_remote_code,
                               eval_max_new_tokens=DEMO_EVAL_MAX_NEW_TOKENS,
                               general_questions=prof.model.build != "tiny",  # the tiny model knows no facts
                               replay_prompts=prof.local.replay_prompts, share_prefix=prof.local.share_prefix,
                               fused_lora=prof.local.fused_lora)
            spec.save()
        ckpt = latest_checkpoint(train_dir / "checkpoints")
        log_path = train_dir / "train.log"
        (train_dir / "result.json").unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", TRAIN_MODULE, "--train-dir", str(train_dir)],
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, close_fds=True)
        processes.track(proc)
        name = f"train-{rec.run_id}"
        rec.add_resource(TRAIN_PROCESS, name, pid=proc.pid, billable=False, train_dir=str(train_dir),
                         log_path=str(log_path), state="running")
        if ckpt is not None:
            rec.event(f"training resumed from {ckpt.name}", pid=proc.pid)
            ctx.console.info(f"resuming training from {ckpt.name} (pid {proc.pid})")
        else:
            ctx.console.info(f"training started (pid {proc.pid}); log: {log_path}")
        out = {"pid": proc.pid, "train_dir": str(train_dir), "log_path": str(log_path),
               "resumed_from": ckpt.name if ckpt else None, "base_model": spec.model,
               "hyperparameters": spec.hyperparameters()}
        rec.set_output("submit", **out)
        return out

    def _training_state(self, ctx: StepContext) -> tuple[str, dict[str, Any] | None]:
        """('completed'|'failed'|'running'|'dead'|'none', result)."""
        train_dir = self._train_dir(ctx)
        result_path = train_dir / "result.json"
        result = None
        with contextlib.suppress(OSError, json.JSONDecodeError):
            result = json.loads(result_path.read_text())
        if result and result.get("status") == "Completed":
            return "completed", result
        pid = ctx.record.output("submit").get("pid")
        if pid and process_running(int(pid)):
            return "running", None
        if result and result.get("status") == "Failed":
            return "failed", result
        return ("dead" if pid else "none"), None

    def submit(self, ctx: StepContext) -> dict[str, Any]:
        state, _ = self._training_state(ctx)
        if state == "completed":
            ctx.console.info("training already completed for this run")
            return ctx.record.output("submit")
        if state == "running":
            ctx.console.info(f"training is already running (pid {ctx.record.output('submit')['pid']})")
            return ctx.record.output("submit")
        return self._start_training(ctx, resume=state in ("dead", "failed"))

    # -------------------------------------------------------------------- wait
    def wait(self, ctx: StepContext, *, timeout: float | None = None) -> dict[str, Any]:
        rec = ctx.record
        state, result = self._training_state(ctx)
        if state == "none":
            raise RecordError("This run has not started training.", hint="Run `amlft submit` first.")
        if state in ("dead", "failed") and self._stopped_by_teardown(ctx):
            raise self._canceled(ctx)
        if state == "dead":
            ctx.console.warn("the training process is gone without finishing (killed or crashed): "
                             "resuming from its last checkpoint")
            self._start_training(ctx, resume=True)
        train_dir = self._train_dir(ctx)
        progress_path = train_dir / "progress.jsonl"
        log_path = Path(rec.output("submit").get("log_path") or train_dir / "train.log")
        pid = int(rec.output("submit")["pid"])
        started = time.monotonic()
        if state != "completed":
            try:
                result = self._follow(ctx, pid, progress_path, log_path, timeout=timeout, started=started)
            except KeyboardInterrupt:
                ctx.console.warn(f"stopped waiting; training keeps running in the background (pid {pid}) unless "
                                 f"this run is torn down. Follow it again: amlft wait --run {rec.run_id}; "
                                 f"stop it: amlft teardown --run {rec.run_id}")
                raise
        if result is None:  # completed without a readable result.json: cannot happen unless the file vanished
            raise TrainingError(f"Training of run {rec.run_id} finished but left no result in {train_dir}.",
                                hint=f"Start it again: amlft submit --run {rec.run_id}")
        return self._record_training(ctx, result, duration_s=time.monotonic() - started)

    def _follow(self, ctx: StepContext, pid: int, progress_path: Path, log_path: Path, *,
                timeout: float | None, started: float) -> dict[str, Any]:
        rec = ctx.record
        seen = 0
        last_status_at, last_decile = 0.0, -1
        status = ""
        with ctx.console.progress("training", total=None, unit="steps") as bar:
            while True:
                history = read_progress(progress_path)
                if len(history) != seen and history:
                    h = history[-1]
                    now = time.monotonic()
                    # a new status every 10% or 5 s: plain CI logs print a line per status change
                    decile = 10 * h["step"] // max(h["total_steps"], 1)
                    if now - last_status_at >= 5 or decile != last_decile:
                        status = self._status(history)
                        last_status_at, last_decile = now, decile
                    bar.update(h["step"], total=h["total_steps"], status=status)
                    seen = len(history)
                phase = self._phase(progress_path.parent)  # loading, encoding, evaluating n/total prompts, ...
                if phase:
                    bar.update(status=phase if not history else f"{status}  |  {phase}")
                state, result = self._training_state(ctx)
                if state == "completed":
                    return result or {}
                if state in ("failed", "dead") and self._stopped_by_teardown(ctx):
                    raise self._canceled(ctx)
                if state in ("failed", "dead"):
                    last_ckpt = self._last_checkpoint_name(ctx)
                    rec.update_resource(TRAIN_PROCESS, f"train-{rec.run_id}", state="exited")
                    err = (result or {}).get("error") or "the training process exited without a result"
                    # the cause and the fix first; the log tail after them (exit code 3, as a failed Azure job)
                    raise TrainingError(
                        f"Local training failed: {err}",
                        hint=(result or {}).get("hint") or (
                            f"Fix the cause, then `amlft submit --run {rec.run_id}` (or `amlft wait`) resumes from "
                            + (f"{last_ckpt}." if last_ckpt else "the start (no checkpoint yet).")),
                        details=f"--- last lines of {log_path} ---\n{log_tail(log_path)}")
                if timeout is not None and time.monotonic() - started > timeout:
                    raise WaitTimeout(f"Training still running after {timeout:.0f}s (pid {pid}).",
                                      hint=f"It keeps running: `amlft wait --run {rec.run_id}` follows it again.")
                time.sleep(0.5)

    def _stopped_by_teardown(self, ctx: StepContext) -> bool:
        """Whether a teardown (perhaps from another terminal) stopped this run's training."""
        rec = ctx.record
        with contextlib.suppress(RecordError):
            rec.reload()
        return any(r["name"] == f"train-{rec.run_id}" and r.get("state") in ("stopping", "deleted")
                   and r.get("stopped_by") == "teardown" for r in rec.resources(TRAIN_PROCESS))

    def _canceled(self, ctx: StepContext) -> JobCanceled:
        rid = ctx.record.run_id
        last = self._last_checkpoint_name(ctx)
        return JobCanceled(f"Training of run {rid} was stopped by `amlft teardown` before it finished.",
                           hint=f"`amlft submit --run {rid}` resumes it from "
                                + (f"{last}." if last else "the start (no checkpoint yet)."))

    @staticmethod
    def _phase(train_dir: Path) -> str:
        """The trainer's current non-training phase from status.json ('' while training steps run)."""
        st: dict[str, Any] = {}
        with contextlib.suppress(OSError, json.JSONDecodeError):
            st = json.loads((train_dir / "status.json").read_text())
        if not st or st.get("phase") == "training":
            return ""
        count = f" {st['done']}/{st['total']} {st.get('unit', '')}" if st.get("total") else ""
        return f"{st['phase']}{count} {st.get('detail', '')}".strip()

    @staticmethod
    def _status(history: list[dict[str, Any]], window: int = 10) -> str:
        """Loss and tokens/s over the last few steps (one step alone is too noisy to read)."""
        loss_recent = history[-window:]
        loss = sum(h["loss"] for h in loss_recent) / len(loss_recent)
        start = 0  # a resumed process restarts its clock: measure speed since the last restart only
        for i in range(1, len(history)):
            if history[i]["elapsed_s"] < history[i - 1]["elapsed_s"]:
                start = i
        history = history[start:]
        recent = history[-window:]
        if len(history) > len(recent):
            seconds = recent[-1]["elapsed_s"] - history[-len(recent) - 1]["elapsed_s"]
            rate = sum(h["tokens"] for h in recent) / seconds if seconds > 0 else 0.0
        else:
            rate = sum(h["tokens"] for h in recent) / max(recent[-1]["elapsed_s"], 1e-9)
        return f"loss {loss:.3f}  {rate:,.0f} tok/s"

    def _last_checkpoint_name(self, ctx: StepContext) -> str | None:
        from amlft.backends.local.trainer import latest_checkpoint

        ckpt = latest_checkpoint(self._train_dir(ctx) / "checkpoints")
        return ckpt.name if ckpt else None

    def _record_training(self, ctx: StepContext, result: dict[str, Any], *, duration_s: float) -> dict[str, Any]:
        rec = ctx.record
        with contextlib.suppress(RecordError):
            rec.update_resource(TRAIN_PROCESS, f"train-{rec.run_id}", state="deleted", exit="completed")
        base_ref, base_label = self._base_model(ctx)
        metrics = result["metrics"]
        rec.set_output("train", adapter_dir=result["adapter_dir"], checkpoint_dir=result["checkpoint_dir"],
                       merged_dir=result["merged_dir"], hyperparameters=result["hyperparameters"],
                       metrics=metrics, loss_curve_png=result.get("loss_curve_png"), base_model=base_label,
                       base_model_dir=base_ref if Path(base_ref).exists() else None)
        before, after = result["before"], result["after"]
        rows = [{"metric": f"exact match ({before['n']} held-out prompts)", "before": before["exact_match"],
                 "after": after["exact_match"]},
                {"metric": "held-out loss (assistant tokens)", "before": before["test_loss"],
                 "after": after["test_loss"]}]
        if before.get("general") and after.get("general"):  # a fine-tune must not make the model forget to chat
            rows.append({"metric": f"general questions answered ({after['general']['n']} held-out facts)",
                         "before": before["general"]["accuracy"], "after": after["general"]["accuracy"]})
        b_by_prompt = {a["prompt"]: a for a in before["answers"]}
        examples = [{"prompt": a["prompt"], "reference": a["reference"],
                     "before": b_by_prompt.get(a["prompt"], {}).get("answer"), "after": a["answer"]}
                    for a in after["answers"][:5]]
        rec.set_output("eval", metric="exact_match", n=before["n"], before=before["exact_match"],
                       after=after["exact_match"], loss_before=before["test_loss"], loss_after=after["test_loss"],
                       rows=rows, examples=examples)
        out = {"status": "Completed", "duration_s": round(duration_s, 1), "steps": metrics["steps"],
               "final_loss": metrics["final_loss"], "tokens_per_s": metrics["tokens_per_s"]}
        rec.set_output("wait", **out)
        ctx.console.info(f"training completed: {metrics['steps']} steps, final loss {metrics['final_loss']}, "
                         f"{metrics['tokens_per_s']} tokens/s; loss curve: {result.get('loss_curve_png')}")
        return out

    # -------------------------------------------------------------------- register
    def register(self, ctx: StepContext) -> dict[str, Any]:
        from amlft.backends.local import registry

        rec = ctx.record
        done = rec.output("register")
        state = self._state_dir(ctx)
        if done.get("version") and registry.model_version_exists(state, name=done["name"], version=done["version"]):
            ctx.console.info(f"already registered: {done['model_uri']}")
            return done
        train = rec.output("train")
        if not train.get("merged_dir") or not Path(train["merged_dir"]).exists():
            raise RecordError("This run has no trained model to register.", hint="Run `amlft wait` first.")
        name = model_slug(f"{ctx.profile.name}-ft")
        data = rec.output("data")
        tags = {"amlft_run_id": rec.run_id, "base_model": str(train.get("base_model")),
                "data_hash": str(data.get("data_hash")), "data_source": str(data.get("source")),
                "created_by": "amlft"}
        metrics = dict(train.get("metrics") or {})
        ev = rec.output("eval")
        history = read_progress(Path(train["merged_dir"]).parent / "progress.jsonl")
        card = self._registry_card(name, str(train.get("base_model")), rec.run_id)
        with ctx.console.progress("registering in MLflow", total=None) as bar:
            bar.update(status="logging run and model")
            out = registry.register_model(
                state, name=name, model_dir=Path(train["merged_dir"]), run_name=rec.run_id,
                params=train.get("hyperparameters") or {}, history=history, metrics=metrics, tags=tags,
                artifacts=[Path(p) for p in (train.get("loss_curve_png"),) if p], card_text=card)
        rec.add_resource(MODEL, f"{out['name']}:{out['version']}", billable=False, model_uri=out["model_uri"],
                         tracking_uri=out["tracking_uri"])
        result = {**out, "model_dir": train["merged_dir"], "tags": tags,
                  "eval": {"before": ev.get("before"), "after": ev.get("after")}}
        rec.set_output("register", **result)
        ctx.console.info(f"registered {out['model_uri']} (MLflow run {out['mlflow_run_id']}); browse: "
                         f"mlflow ui --backend-store-uri {out['tracking_uri']}")
        return result

    @staticmethod
    def _registry_card(name: str, base_model: str, run_id: str) -> str:
        """The README stored with the registered model: front matter through huggingface_hub's card API."""
        with needs_extra("hub", purpose="Writing the registered model's card"):
            from huggingface_hub import ModelCard, ModelCardData

        hub_id = base_model.count("/") == 1 and not Path(base_model).exists()  # owner/name, not a local folder
        data = ModelCardData(library_name="transformers", tags=["amlft", "lora"],
                             base_model=base_model if hub_id else None)
        return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n# {{ name }}\n\n"
                                           "LoRA fine-tune of {{ base }} by amlft run {{ run_id }}.\n",
                                           name=name, base=base_model, run_id=run_id))

    # -------------------------------------------------------------------- deploy
    def deploy(self, ctx: StepContext) -> dict[str, Any]:
        from amlft.backends.local.server import is_alive, launch

        rec, ep = ctx.record, ctx.profile.endpoint
        done = rec.output("deploy")
        engine = str(ctx.options.get("engine") or ctx.profile.local.engine)
        if done.get("pid") and is_alive(int(done["pid"]), int(done["port"]), host=done.get("host", ep.host)) \
                and load_secret(rec.run_id, "endpoint_key", root=rec.root):
            if done.get("engine", "transformers") == engine:
                ctx.console.info(f"already serving at {done['scoring_uri']}")
                return done
            self._stop_servers(ctx, why=f"switching engine to {engine}")
        model_dir = rec.output("register").get("model_dir") or rec.output("train").get("merged_dir")
        if not model_dir or not Path(model_dir).exists():
            raise RecordError(f"Run {rec.run_id} has no trained model to serve yet.",
                              hint=f"Finish training first: `amlft wait --run {rec.run_id}` (the local deploy serves the "
                                   "trained model; `amlft register` is optional here).")
        if engine == "onnxruntime-genai":
            model_dir = self._onnx_export(ctx)
        key = secrets.token_urlsafe(32)
        store_secret(rec.run_id, "endpoint_key", key, root=rec.root)
        name = model_slug(ep.name or f"amlft-{rec.run_id}")
        log_path = rec.run_dir / "server.log"

        def record_started(pid: int) -> None:
            # recorded before the readiness wait, so a teardown from another terminal finds it
            rec.add_resource(SERVER, name, pid=pid, port=ep.port or None, host=ep.host, billable=True,
                             log_path=str(log_path))

        handle = launch(Path(model_dir), key=key, host=ep.host, port=ep.port, max_concurrency=ep.max_concurrency,
                        max_queue=ep.max_queue, request_timeout_s=ep.request_timeout_ms / 1000,
                        max_request_bytes=ep.max_request_bytes, log_path=log_path,
                        ready_timeout_s=max(120.0, ep.liveness_initial_delay_s / 2), model_name=name,
                        threads=ctx.profile.local.threads, on_started=record_started, engine=engine)
        rec.add_resource(SERVER, name, pid=handle.pid, port=handle.port, host=handle.host, billable=True,
                         log_path=str(log_path))
        out = {"endpoint_name": name, "deployment_name": ep.deployment_name, "scoring_uri": handle.scoring_uri,
               "openai_base_url": handle.openai_base_url, "contract": "azureml", "pid": handle.pid,
               "port": handle.port, "host": handle.host, "log_path": str(log_path),
               "key_ref": f"secrets/{rec.run_id}.json#endpoint_key", "engine": engine, "model_dir": str(model_dir)}
        rec.set_output("deploy", **out)
        ctx.console.info(f"serving {model_dir} ({engine}) at {handle.scoring_uri} (OpenAI-compatible: "
                         f"{handle.openai_base_url}); key: amlft endpoint credentials --run {rec.run_id} --json")
        return out

    def _onnx_export(self, ctx: StepContext) -> str:
        """The run's int4 CPU export for the onnxruntime-genai engine, built now if it has none."""
        from amlft.backends.local.export_run import export_run, find_export

        found = find_export(ctx.record, precision="int4", execution_provider="cpu")
        if found is None:
            ctx.console.info("the onnxruntime-genai engine serves an ONNX export; exporting (int4, cpu) first")
            found = export_run(ctx.record, ctx.console, precision="int4", execution_provider="cpu")
        return str(found["path"])

    def _stop_servers(self, ctx: StepContext, *, why: str) -> None:
        from amlft.backends.local.server import stop

        for res in ctx.record.resources(SERVER, live_only=True):
            if stop(int(res["pid"])):
                ctx.console.info(f"stopped the scoring server pid {res['pid']} ({why})")
            ctx.record.mark_deleted(SERVER, res["name"])

    def endpoint(self, ctx: StepContext) -> EndpointInfo:
        """The run's scoring server, only if its process runs and answers /health."""
        rec = ctx.record
        d = rec.output("deploy")
        if not d.get("scoring_uri"):
            raise RecordError(f"Run {rec.run_id} has no local endpoint.", hint=f"Run `amlft deploy --run {rec.run_id}`.")
        live = rec.resources(SERVER, live_only=True)
        redeploy = f"Deploy it again: amlft deploy --run {rec.run_id}"
        if not live:
            raise RecordError(f"The local endpoint of run {rec.run_id} was torn down.", hint=redeploy)
        problem = self._server_problem(ctx, live[-1])
        if problem:
            raise RecordError(f"The local endpoint of run {rec.run_id} is not serving: {problem}.",
                              hint=f"{redeploy}; or clean up with `amlft teardown --run {rec.run_id}`.")
        return EndpointInfo(scoring_uri=d["scoring_uri"], openai_base_url=d.get("openai_base_url"),
                            contract="azureml", name=d.get("endpoint_name", "local"))

    @staticmethod
    def _server_problem(ctx: StepContext, res: dict[str, Any]) -> str | None:
        """None when the server runs and answers /health; else why not. A server whose process is
        gone is marked deleted in the record, so nothing lists it as live again."""
        from amlft.backends.local.server import MODULE, is_alive

        pid = int(res["pid"])
        if not process_running(pid, module=MODULE):
            ctx.record.mark_deleted(SERVER, res["name"], exit="process gone")
            return f"its server process (pid {pid}) is gone"
        if res.get("port") is None:
            return f"its server (pid {pid}) is still starting"
        if not is_alive(pid, int(res["port"]), host=res.get("host", "127.0.0.1")):
            return f"its server (pid {pid}) does not answer /health on port {res['port']}"
        return None

    def endpoint_key(self, ctx: StepContext) -> str:
        key = load_secret(ctx.record.run_id, "endpoint_key", root=ctx.record.root)
        if not key:
            raise RecordError(f"No endpoint key stored for run {ctx.record.run_id}.",
                              hint="The endpoint was torn down or never deployed: amlft deploy.")
        return key

    # -------------------------------------------------------------------- teardown
    def teardown(self, ctx: StepContext, *, delete_model: bool = False) -> dict[str, Any]:
        from amlft.backends.local.server import stop

        rec = ctx.record
        stopped: list[str] = []
        for res in rec.resources(SERVER, live_only=True):
            if stop(int(res["pid"])):
                stopped.append(f"{SERVER}:{res['name']} (pid {res['pid']}, port {res['port']})")
            rec.mark_deleted(SERVER, res["name"])
        for res in rec.resources(TRAIN_PROCESS, live_only=True):
            if process_running(int(res["pid"])):
                # said before the kill, so a `wait` in another terminal reports "canceled", not "crashed"
                rec.update_resource(TRAIN_PROCESS, res["name"], state="stopping", stopped_by="teardown")
            if kill_process(int(res["pid"])):
                stopped.append(f"{TRAIN_PROCESS}:{res['name']} (pid {res['pid']})")
                rec.event("training process stopped by teardown; `amlft submit` resumes it from its checkpoint")
            rec.mark_deleted(TRAIN_PROCESS, res["name"])
        delete_secrets(rec.run_id, root=rec.root)
        deleted_models: list[str] = []
        if delete_model:
            from amlft.backends.local import registry

            for res in rec.resources(MODEL, live_only=True):
                name, _, version = res["name"].rpartition(":")
                if registry.delete_model_version(self._state_dir(ctx), name=name, version=version):
                    deleted_models.append(res["name"])
                rec.mark_deleted(MODEL, res["name"])
        for s in stopped:
            ctx.console.info(f"stopped {s}")
        for m in deleted_models:
            ctx.console.info(f"deleted registered model {m}")
        out = {"stopped": stopped, "deleted_models": deleted_models}
        rec.set_output("teardown", **out)
        return out

    def left_running(self, ctx: StepContext) -> list[str]:
        """Servers and training processes of this run that are alive now; the gone ones are
        marked in the record (a server as deleted, a training process as exited)."""
        rec = ctx.record
        left = []
        for res in rec.resources(SERVER, live_only=True):
            problem = self._server_problem(ctx, res)
            where = f"local scoring server pid {res['pid']}" + (f" on port {res['port']}" if res.get("port") else "")
            if problem is None:
                left.append(where)
            elif "gone" not in problem:
                left.append(f"{where} ({problem.split(') ', 1)[-1]})")
        for res in rec.resources(TRAIN_PROCESS, live_only=True):
            if process_running(int(res["pid"])):
                left.append(f"local training pid {res['pid']}")
            elif res.get("state") == "running":
                rec.update_resource(TRAIN_PROCESS, res["name"], state="exited")
        return left

    # -------------------------------------------------------------------- dry run
    def dry_run(self, ctx: StepContext, *, export_path: str | None = None) -> dict[str, Any]:
        """What `submit` would train, checked without training: hyper-parameters, model, data
        (prepared and validated into the dry run's own folder) and this machine's resources."""
        from amlft.backends.local.trainer import effective_hyperparameters
        from amlft.data.step import prepare_run_data
        from amlft.errors import PreflightError

        if export_path:
            raise ConfigError("--export writes an Azure ML job; the local backend has none to write.",
                              hint="Drop --export, or dry-run the Azure profile (--backend azure).")
        hp = effective_hyperparameters(ctx.profile.finetune)
        if ctx.profile.local.max_steps:
            hp["max_steps"] = ctx.profile.local.max_steps
        _, label = self._base_model(ctx)
        findings = self.check(ctx)
        data = prepare_run_data(ctx)  # raises DataError, naming the file and row, on data that cannot train
        rows = [{"severity": f.get("severity", "error"), "check": f.get("check"), "message": f["message"]}
                for f in findings]
        ctx.console.table(rows, title="Dry-run findings")
        if any(f.get("severity", "error") == "error" for f in findings):
            raise PreflightError(findings)
        ctx.console.info(f"would fine-tune {label} on {data['train_file']} with "
                         + ", ".join(f"{k}={v}" for k, v in sorted(hp.items())))
        ctx.console.info("dry run OK: nothing was trained (run `amlft submit` to start)")
        return {"model": label, "hyperparameters": hp, "train_file": data["train_file"],
                "test_file": data.get("test_file"), "counts": data.get("counts"), "findings": findings}


__all__ = ["LocalBackend"]
