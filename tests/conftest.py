"""Shared test setup: every test gets its own amlft state dir and never touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test writes run records under its own AMLFT_HOME and is offline by construction."""
    home = tmp_path_factory.mktemp("amlft-home")
    monkeypatch.setenv("AMLFT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "HF_TOKEN",
                "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "AMLFT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One untrained tiny chat model per test session (read-only for tests: never write into it).

    No pre-training: serving, bench and publish tests need a real transformers model, not good answers.
    """
    from amlft.backends.local.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), pretrain_steps=0)
