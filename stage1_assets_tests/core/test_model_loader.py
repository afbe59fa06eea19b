import json
import time
from pathlib import Path

import pytest

from stage1_assets.core import model_loader
from stage1_assets.core.model_loader import ModelGuardError

from ..conftest import make_tiny_model_dir


@pytest.mark.parametrize(
    "name",
    ["Qwen2.5-0.5B-Instruct", "gemma-3-270m-it", "Llama-2-7b-chat-hf", "zephyr-7b-sft-full", "tulu-2-dpo-7b"],
)
def test_guard_refuses_instruction_tuned_names(tmp_path, tiny_model_dir, name):
    model_dir = tmp_path / name
    model_dir.mkdir()
    (model_dir / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelGuardError, match="contamination guard.*allow_instruction_tuned"):
        model_loader.load_model(source=str(model_dir), device="cpu")


@pytest.mark.parametrize("name", ["gemma-3-270m", "Qwen2.5-0.5B", "digit-model", "pythia-160m", "iterate-7b"])
def test_guard_accepts_base_names(tmp_path, tiny_model_dir, name):
    assert not model_loader.inspect_model(name).refused  # as a hub id
    model_dir = tmp_path / name  # as a local directory with the tiny model's config (a Gemma 3 vocabulary)
    model_dir.mkdir()
    (model_dir / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (model_dir / "generation_config.json").write_text((tiny_model_dir / "generation_config.json").read_text())
    verdict = model_loader.inspect_model(model_dir)
    assert not verdict.refused, verdict.reasons
    model_loader.apply_guard(verdict, allow_instruction_tuned=False, override_reason=None)  # does not raise


def test_guard_refuses_an_adapter_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    verdict = model_loader.inspect_model_dir(tmp_path, "my-adapter")
    assert verdict.refused and "adapter" in verdict.reasons[0]


def test_guard_reads_end_of_turn_eos_from_generation_config(tmp_path, embedded_dir):
    model_dir = make_tiny_model_dir(tmp_path / "quiet-name", embedded_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["eos_token_id"] = [1, 106]  # 106 is <end_of_turn> in the Gemma 3 vocabulary: the -it signature
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    verdict = model_loader.inspect_model_dir(model_dir, "quiet-name")
    assert verdict.refused
    assert any("end_of_turn" in r for r in verdict.reasons)


def test_chat_template_alone_is_noted_not_refused(tmp_path, embedded_dir):
    model_dir = make_tiny_model_dir(tmp_path / "base-with-template", embedded_dir)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}"
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    verdict = model_loader.inspect_model_dir(model_dir, "base-with-template")
    assert not verdict.refused
    assert any("chat template" in n for n in verdict.notes)


def test_embedded_model_is_accepted_and_fingerprint_is_stable(real_model, embedded_dir):
    info = real_model.info
    assert info.name == "gemma-3-270m" and not info.guard.refused
    assert info.parameter_count > 200_000_000
    assert info.fingerprint == model_loader.fingerprint_dir(embedded_dir)
    again = model_loader.load_model(models_dir=embedded_dir.parent, device="cpu")
    assert again.info.fingerprint == info.fingerprint


def test_fingerprint_changes_with_weights(tmp_path, embedded_dir):
    model_dir = make_tiny_model_dir(tmp_path / "tiny-a", embedded_dir)
    before = model_loader.fingerprint_dir(model_dir)
    time.sleep(0.01)
    weights = next(Path(model_dir).glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_loader.fingerprint_dir(model_dir) != before


def test_second_load_reads_the_safetensors_cache(embedded_dir):
    loaded = model_loader.load_model(models_dir=embedded_dir.parent, device="cpu")
    assert not loaded.info.converted_from_gguf
    assert (embedded_dir / "model.safetensors").exists()
    assert json.loads((embedded_dir / "stage1_source.json").read_text())["gguf_sha256"].startswith(
        embedded_dir.name.rsplit("-", 1)[1]
    )
