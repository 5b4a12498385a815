"""A missing extra ends every verb with an instruction to install it, never a traceback (issue 12.6).

Each CLI test runs `amlft` in a subprocess whose import system pretends one optional package
is not installed: a sys.meta_path finder raises ModuleNotFoundError for it (as Python does for
an absent module) and importlib.util.find_spec answers None for it. The exit code, the absence
of a traceback and the named extra are what a user without the extra sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amlft.errors import MissingDependency
from amlft.extras import EXTRA_OF, needs_extra, require

ROOT = Path(__file__).resolve().parents[1]
LOCAL = str(ROOT / "jobs" / "local-demo.yml")
AZURE = str(ROOT / "jobs" / "phi4-mini-ultrachat.yml")
SAMPLE = ROOT / "src" / "amlft" / "resources" / "sample_chat"
TORCH_PIN = "pip install torch==2.13.0"

# argv[1] = comma-separated top-level packages to hide; the rest is amlft's command line
BOOTSTRAP = """
import importlib.util, sys
hidden = set(sys.argv.pop(1).split(","))

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
for mod in [m for m in sys.modules if m.split(".", 1)[0] in hidden]:
    del sys.modules[mod]
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".", 1)[0] in hidden else _find_spec(name, package))
from amlft.cli.main import main
sys.exit(main())
"""


def amlft_without(hidden: str, *args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AMLFT_HOME=str(home), PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-c", BOOTSTRAP, hidden, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def assert_names_extra(out: subprocess.CompletedProcess[str], extra: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    assert "is not installed" in text, text
    assert f"amlft[{extra}]" in text, text
    if extra == "local":
        assert TORCH_PIN in text, text


def assert_works(out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Traceback" not in text and "not installed" not in text, text


# -------------------------------------------------------------------- an Azure run at each stage
STAGES = ("submit", "wait", "register", "deploy")


@pytest.fixture(scope="module")
def azure_stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """AMLFT_HOME snapshots of one rehearsed Azure run after submit, wait, register and deploy."""
    base = tmp_path_factory.mktemp("azure-stages")
    home = base / "home"
    env = dict(os.environ, AMLFT_HOME=str(home), PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    snapshots: dict[str, Path] = {}
    for verb in STAGES:
        args = [verb, "--rehearse"] + (["--profile", AZURE] if verb == "submit" else [])
        out = subprocess.run([sys.executable, "-m", "amlft.cli.main", *args], capture_output=True, text=True,
                             cwd=base, env=env, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        snapshots[verb] = base / f"after-{verb}"
        shutil.copytree(home, snapshots[verb])
    return snapshots


def _home_after(azure_stages: dict[str, Path], stage: str, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(azure_stages[stage], home)
    return home


# -------------------------------------------------------------------- verbs that need `local` (torch)
@pytest.mark.parametrize("verb", ["check", "submit", "run"])
def test_local_verbs_without_torch_name_the_pinned_local_extra(verb: str, tmp_path: Path) -> None:
    out = amlft_without("torch", verb, "--profile", LOCAL, home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "local")


def test_local_verbs_without_psutil_name_the_local_extra(tmp_path: Path) -> None:
    """The local backend itself needs psutil (process tracking): the backend import is routed."""
    out = amlft_without("psutil", "check", "--profile", LOCAL, home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "local")
    assert "The local backend" in out.stderr


# -------------------------------------------------------------------- verbs that need `azure`
@pytest.mark.parametrize("verb", ["auth", "check", "data", "submit"])
def test_azure_verbs_without_the_sdk_name_the_azure_extra(verb: str, tmp_path: Path) -> None:
    out = amlft_without("azure", verb, "--profile", AZURE, "--rehearse", home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "azure")


@pytest.mark.parametrize(("verb", "stage"), [("wait", "submit"), ("register", "wait"), ("deploy", "register"),
                                             ("invoke", "deploy"), ("teardown", "deploy")])
def test_later_azure_steps_without_the_sdk_name_the_azure_extra(verb: str, stage: str, tmp_path: Path,
                                                                azure_stages: dict[str, Path]) -> None:
    out = amlft_without("azure", verb, "--rehearse", home=_home_after(azure_stages, stage, tmp_path), cwd=tmp_path)
    assert_names_extra(out, "azure")


def test_endpoint_show_without_the_sdk_names_the_azure_extra(tmp_path: Path, azure_stages: dict[str, Path]) -> None:
    out = amlft_without("azure", "endpoint", "show", "--rehearse",
                        home=_home_after(azure_stages, "deploy", tmp_path), cwd=tmp_path)
    assert_names_extra(out, "azure")


def test_rehearse_without_responses_names_the_rehearse_extra(tmp_path: Path) -> None:
    out = amlft_without("responses", "auth", "--profile", AZURE, "--rehearse", home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "rehearse")


# -------------------------------------------------------------------- data, bench, publish, export
def test_data_prepare_from_the_hub_without_datasets_names_the_data_extra(tmp_path: Path) -> None:
    out = amlft_without("datasets", "data", "prepare", "HuggingFaceH4/ultrachat_200k", "--out", "prepared",
                        home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "data")


def test_data_prepare_with_a_tokenizer_without_transformers_names_the_local_extra(tmp_path: Path) -> None:
    out = amlft_without("transformers", "data", "prepare", str(SAMPLE / "train_sft.jsonl"), "--out", "prepared",
                        "--tokenizer", "gpt2", "--max-seq-length", "100", home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "local")


def test_data_validate_needs_no_extra(tmp_path: Path) -> None:
    out = amlft_without("torch,transformers,datasets,pyarrow,azure", "data", "validate",
                        str(SAMPLE / "train_sft.jsonl"), home=tmp_path / "home", cwd=tmp_path)
    assert_works(out)
    assert "valid" in out.stdout


def test_data_validate_of_parquet_without_pyarrow_names_the_data_extra(tmp_path: Path) -> None:
    (tmp_path / "chat.parquet").write_bytes(b"PAR1")
    out = amlft_without("pyarrow", "data", "validate", str(tmp_path / "chat.parquet"),
                        home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "data")


def test_run_data_step_of_a_hub_dataset_without_datasets_names_the_data_extra(tmp_path: Path) -> None:
    profile = tmp_path / "hub-data.yml"
    profile.write_text(Path(LOCAL).read_text(encoding="utf-8").replace(
        "source: amlft:sample_chat", "source: HuggingFaceH4/ultrachat_200k"), encoding="utf-8")
    out = amlft_without("datasets", "data", "--profile", str(profile), home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "data")


def test_bench_with_a_tokenizer_without_transformers_names_the_local_extra(tmp_path: Path) -> None:
    out = amlft_without("transformers", "bench", "--base-url", "http://127.0.0.1:9/v1", "--tokenizer",
                        str(tmp_path), "--requests", "1", "--warmup", "0", "--out", "bench",
                        home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "local")


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A folder shaped like a transformers model (enough for planning a publish or an export)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in {"config.json": '{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
                       "model.safetensors": "x", "tokenizer.json": "{}", "tokenizer_config.json": "{}"}.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_publish_without_huggingface_hub_names_the_hub_extra(tmp_path: Path, model_folder: Path,
                                                             azure_stages: dict[str, Path]) -> None:
    out = amlft_without("huggingface_hub", "publish", "--repo-id", "me/tiny", "--model-dir", str(model_folder),
                        home=_home_after(azure_stages, "deploy", tmp_path), cwd=tmp_path)
    assert_names_extra(out, "hub")


def test_export_without_onnxruntime_genai_names_the_onnx_extra(tmp_path: Path, model_folder: Path) -> None:
    out = amlft_without("onnxruntime_genai", "export", "--model-dir", str(model_folder), "--out", "onnx",
                        home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "onnx")


def test_export_without_torch_names_the_pinned_local_extra(tmp_path: Path, model_folder: Path) -> None:
    """The builder reads the weights with torch: its absence gets the pinned torch command, not a bare extra."""
    out = amlft_without("torch", "export", "--model-dir", str(model_folder), "--out", "onnx",
                        home=tmp_path / "home", cwd=tmp_path)
    assert_names_extra(out, "local")
    assert "'torch'" in out.stderr


@pytest.mark.parametrize("hidden", ["starlette", "uvicorn"])
def test_local_deploy_without_the_server_packages_names_the_local_extra(hidden: str, tmp_path: Path,
                                                                        model_folder: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Said by `amlft deploy` itself, before a detached server is started (not buried in the server's log)."""
    from amlft.config import Profile
    from amlft.records import RunRecord

    home = tmp_path / "home"
    monkeypatch.setenv("AMLFT_HOME", str(home))
    rec = RunRecord.create(backend="local", profile=Profile.from_yaml(Path(LOCAL)).to_dict(), profile_path=LOCAL)
    rec.set_output("register", model_dir=str(model_folder), name="local-demo-ft", version="1")
    out = amlft_without(hidden, "deploy", "--run", rec.run_id, home=home, cwd=tmp_path)
    assert_names_extra(out, "local")
    assert f"The local scoring server needs the Python package '{hidden}'" in out.stderr
    assert "pid" not in RunRecord.load(rec.run_id).output("deploy")  # nothing was started


def test_loss_curve_without_matplotlib_names_an_extra_that_installs_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from amlft.backends.local.train_main import plot_loss_curve

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    with pytest.raises(MissingDependency) as err:
        plot_loss_curve([{"step": 1, "loss": 2.0}], tmp_path / "loss.png", title="t")
    assert err.value.package == "matplotlib" and "Drawing the loss curve" in err.value.message
    assert err.value.extra == "bench"


# -------------------------------------------------------------------- verbs that need no extra
def test_local_auth_needs_no_torch(tmp_path: Path) -> None:
    assert_works(amlft_without("torch,transformers,peft,mlflow", "auth", "--profile", LOCAL,
                               home=tmp_path / "home", cwd=tmp_path))


def test_runs_and_profile_show_need_no_extra(tmp_path: Path, azure_stages: dict[str, Path]) -> None:
    home = _home_after(azure_stages, "deploy", tmp_path)
    hidden = "torch,transformers,peft,mlflow,azure,datasets,huggingface_hub,onnxruntime_genai"
    runs = amlft_without(hidden, "runs", home=home, cwd=tmp_path)
    assert runs.returncode == 0 and "Traceback" not in runs.stdout + runs.stderr, runs.stdout + runs.stderr
    assert "phi4-mini-ultrachat" in runs.stdout
    # the deployed run's live state cannot be asked without the SDK: the listing says why, per run
    assert "unknown (The Azure backend needs the Python package 'azure'" in runs.stdout
    shown = amlft_without(hidden, "profile", "show", LOCAL, home=home, cwd=tmp_path)
    assert_works(shown)
    assert "local-demo" in shown.stdout


# -------------------------------------------------------------------- the backstop in the CLI funnel
def test_an_unrouted_optional_import_is_still_reported_as_missing_extra() -> None:
    from amlft.cli.main import _missing_extra

    err = _missing_extra(ModuleNotFoundError("No module named 'peft'", name="peft"), ["submit", "--run", "x"])
    assert isinstance(err, MissingDependency)
    assert "`amlft submit`" in err.message and "peft" in err.message
    assert TORCH_PIN in (err.hint or "")
    # amlft's own modules and packages amlft does not know are bugs: no translation, the traceback stays
    assert _missing_extra(ModuleNotFoundError("x", name="amlft.nope"), ["check"]) is None
    assert _missing_extra(ModuleNotFoundError("x", name="left_pad"), ["check"]) is None


# -------------------------------------------------------------------- the helper itself
def test_needs_extra_names_the_extra_of_a_known_package() -> None:
    with pytest.raises(MissingDependency) as err, needs_extra("local", purpose="Serving"):
        raise ModuleNotFoundError("No module named 'azure.ai'", name="azure.ai")
    assert err.value.extra == "azure" and err.value.package == "azure"
    assert "Serving needs the Python package 'azure'" in err.value.message
    assert err.value.hint == "pip install 'amlft[azure]'"


def test_needs_extra_attributes_an_unknown_package_to_the_blocks_extra() -> None:
    with pytest.raises(MissingDependency) as err, needs_extra("onnx", purpose="Exporting"):
        raise ModuleNotFoundError("No module named 'onnx_ir'", name="onnx_ir")
    assert err.value.extra == "onnx" and "amlft[onnx]" in (err.value.hint or "")


def test_needs_extra_keeps_the_traceback_of_a_missing_amlft_module() -> None:
    with pytest.raises(ModuleNotFoundError), needs_extra("local"):
        import amlft.no_such_module  # noqa: F401


def test_needs_extra_local_hint_pins_torch() -> None:
    with pytest.raises(MissingDependency) as err, needs_extra("local"):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    assert (err.value.hint or "").startswith(TORCH_PIN)


def test_require_returns_the_module_or_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    assert require("json", extra="local", purpose="x") is json
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if gguf were not installed
    with pytest.raises(MissingDependency) as err:
        require("gguf", extra="local", purpose="Reading GGUF files")
    assert err.value.extra == "local" and "gguf" in err.value.message


def test_every_extra_named_in_extra_of_exists_in_pyproject() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert set(EXTRA_OF.values()) <= set(declared)
