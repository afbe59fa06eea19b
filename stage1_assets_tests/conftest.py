"""Shared fixtures: the real embedded model (loaded once per session) and a tiny random model.

The tiny model is a real Gemma 3 architecture with random weights and the embedded tokenizer:
it exercises mechanics fast. Anything that asserts model *behaviour* uses the real model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stage1_assets.core import model_loader
from stage1_assets.resources import DEFAULT_MODELS_DIR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    path, _ = model_loader.materialize_embedded(Path(DEFAULT_MODELS_DIR))
    return path


@pytest.fixture(scope="session")
def real_model() -> model_loader.LoadedModel:
    return model_loader.load_model(models_dir=Path(DEFAULT_MODELS_DIR), device="cpu")


def make_tiny_model_dir(target: Path, embedded_dir: Path, name_or_path: str = "tiny-base") -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(embedded_dir)
    config.update(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16, "layer_types": ["sliding_attention", "full_attention"]}
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.config._name_or_path = name_or_path
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        shutil.copy(embedded_dir / name, target / name)
    shutil.copy(embedded_dir / "generation_config.json", target / "generation_config.json")
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-base", embedded_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> model_loader.LoadedModel:
    return model_loader.load_model(source=str(tiny_model_dir), device="cpu")
