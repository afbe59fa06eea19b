"""The contamination guard itself (stage1_assets/core/guard.py), on the layouts people point at models with.

Every test calls the guard: hub ids, Hugging Face cache snapshots (``models--org--name/snapshots/<hash>``),
plain directories, GGUF files and PEFT adapters. No weights are loaded except in the one override test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from stage1_assets.core import guard, model_loader
from stage1_assets.core.guard import FAMILIES_FILE, GuardVerdict, ModelGuardError, inspect_adapter, inspect_model

ROOT = Path(__file__).resolve().parents[2]
FAMILY_DATA = json.loads(FAMILIES_FILE.read_text(encoding="utf-8"))


def _bench():
    """bench/guard_verdicts.py, which also lays out HF cache snapshots for these tests."""
    name = "stage1_bench_guard_verdicts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "guard_verdicts.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


PLAIN_CONFIG = {
    "model_type": "llama",
    "vocab_size": 32000,
    "eos_token_id": 2,
    "bos_token_id": 1,
    "architectures": ["LlamaForCausalLM"],
}


def _files(config: dict | None = None, generation: dict | None = None, **extra: str) -> dict[str, str]:
    files = {"config.json": json.dumps(config or PLAIN_CONFIG)}
    if generation is not None:
        files["generation_config.json"] = json.dumps(generation)
    return files | {name.replace("__", "."): text for name, text in extra.items()}


def cache_snapshot(root: Path, hub_id: str, files: dict[str, str] | None = None) -> Path:
    return _bench().write_hf_cache_snapshot(root / "hub", hub_id, files or _files())


def plain_dir(root: Path, name: str, files: dict[str, str] | None = None) -> Path:
    target = root / "plain" / name
    target.mkdir(parents=True, exist_ok=True)
    for file_name, text in (files or _files()).items():
        (target / file_name).write_text(text)
    return target


def three_layouts(root: Path, hub_id: str) -> dict[str, GuardVerdict]:
    return {
        "hub id": inspect_model(hub_id),
        "HF cache snapshot": inspect_model(cache_snapshot(root, hub_id)),
        "plain dir": inspect_model(plain_dir(root, hub_id.rsplit("/", 1)[-1])),
    }


def reasons(verdict: GuardVerdict) -> str:
    return "\n".join(verdict.reasons)


# --- the families data file: one test per entry ------------------------------------------------------------


def test_families_file_is_well_formed():
    ids = [entry["id"] for entry in FAMILY_DATA["families"]]
    assert len(ids) == len(set(ids)), "family ids must be unique"
    for entry in FAMILY_DATA["families"]:
        assert entry["reason"].strip() and isinstance(entry["instruction_tuned"], bool), entry["id"]
        assert entry["examples_refused"] or entry["examples_accepted"], f"{entry['id']} has no example to test"
    assert len(guard.load_guard_data().families) == len(ids)


@pytest.mark.parametrize("entry", FAMILY_DATA["families"], ids=[e["id"] for e in FAMILY_DATA["families"]])
def test_family_entry(tmp_path, entry):
    family_ref = f"family {entry['id']!r}"
    for hub_id in entry["examples_refused"]:
        verdicts = three_layouts(tmp_path, hub_id)
        for layout, verdict in verdicts.items():
            assert verdict.refused, f"{hub_id} ({layout}) was accepted: {verdict.notes}"
            assert "allow_instruction_tuned" not in reasons(verdict)  # reasons are signals, the message adds that
        if entry["instruction_tuned"]:  # this entry's own pattern is what matches (hub id and cache repo id)
            for layout in ("hub id", "HF cache snapshot"):
                assert family_ref in reasons(verdicts[layout]), f"{hub_id} ({layout}): {verdicts[layout].reasons}"
    for hub_id in entry["examples_accepted"]:
        verdicts = three_layouts(tmp_path, hub_id)
        for layout, verdict in verdicts.items():
            assert not verdict.refused, f"{hub_id} ({layout}) was refused: {verdict.reasons}"
        release = entry.get("base_when") and re.search(entry["base_when"], guard.normalise_name(hub_id))
        if not entry["instruction_tuned"] or release:  # else a contrast example of another family
            notes = "\n".join(verdicts["hub id"].notes)
            assert family_ref in notes, f"{hub_id}: {notes}"


def test_dataset_patterns_each_refuse_a_card(tmp_path):
    examples = [
        "HuggingFaceH4/ultrachat_200k",
        "anon8231489123/ShareGPT_Vicuna_unfiltered",
        "OpenAssistant/oasst1",
        "tatsu-lab/alpaca",
        "databricks/databricks-dolly-15k",
        "allenai/tulu-v2-sft-mixture",
        "Open-Orca/OpenOrca",
        "GAIR/lima",
        "openbmb/UltraFeedback",
        "Anthropic/hh-rlhf",
        "teknium/OpenHermes-2.5",
        "HuggingFaceH4/no_robots",
        "WizardLM/WizardLM_evol_instruct_70k",
        "Muennighoff/flan",
        "bigscience/xP3",
        "laion/OIG",
        "timdettmers/openassistant-guanaco",
        "lmsys/lmsys-chat-1m",
        "HuggingFaceTB/smoltalk",
        "yizhongw/self_instruct",
        "argilla/dpo-mix-7k",
    ]
    assert len(examples) >= len(FAMILY_DATA["instruction_datasets"])
    matched = set()
    for i, dataset in enumerate(examples):
        card = f"---\nlicense: apache-2.0\ndatasets:\n- {dataset}\n---\n# A model\n"
        verdict = inspect_model(plain_dir(tmp_path, f"quiet-{i}", _files(README__md=card)))
        assert verdict.refused and "README.md datasets" in reasons(verdict), dataset
        norm = guard.normalise_name(dataset)
        matched |= {d["pattern"] for d in FAMILY_DATA["instruction_datasets"] if re.search(d["pattern"], norm)}
    assert matched == {d["pattern"] for d in FAMILY_DATA["instruction_datasets"]}, "every dataset pattern is exercised"


def test_pretraining_datasets_do_not_refuse(tmp_path):
    card = (
        "---\ndatasets:\n- HuggingFaceFW/fineweb\n- allenai/dolma\n- EleutherAI/pile\n- cerebras/SlimPajama-627B\n---\n"
    )
    verdict = inspect_model(plain_dir(tmp_path, "quiet-7b", _files(README__md=card)))
    assert not verdict.refused, verdict.reasons


# --- names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "mistralai/Mistral-7B-Instruct-v0.2",
        "THUDM/chatglm3-6b",
        "Qwen/Qwen1.5-7B-Chat",
        "openchat/openchat_3.5",
        "microsoft/Phi-3-mini-4k-instruct",
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        "google/gemma-2-2b-it",
        "allenai/OLMo-2-1124-7B-Instruct",
        "ibm-granite/granite-3.0-2b-instruct",
        "CohereForAI/aya-23-8B",
        "NousResearch/Hermes-2-Pro-Mistral-7B",
        "someone/MistralInstruct-7B",
        "Salesforce/xgen-7b-8k-inst",
        "deepseek-ai/deepseek-math-7b-rl",
        "nvidia/Llama3-ChatQA-1.5-8B",
        "someone/NeuralDPO-7B",
        "lmsys/longchat-7b-16k",
        "lmsys/vicuna-7b-v1.5",
        "gemma-3-270m-it-Q4_K_M",
        "tiiuae/falcon-7b-instruct",
        "mosaicml/mpt-7b-chat",
        "togethercomputer/RedPajama-INCITE-Chat-3B-v1",
        "upstage/SOLAR-10.7B-Instruct-v1.0",
        "Qwen/Qwen3-0.6B",
        "microsoft/phi-4",
        "LGAI-EXAONE/EXAONE-4.0-1.2B",
        "allenai/OLMo-3-7B-Think",
        "Qwen/Qwen2.5-7B-Instruct-1M",
    ],
)
def test_instruction_tuned_names_are_refused_in_every_layout(tmp_path, name):
    for layout, verdict in three_layouts(tmp_path, name).items():
        assert verdict.refused, f"{name} ({layout}) accepted: {verdict.notes}"


@pytest.mark.parametrize(
    "name",
    [
        "gpt2",
        "EleutherAI/pythia-160m",
        "EleutherAI/gpt-neo-125m",
        "facebook/opt-125m",
        "bigscience/bloom-560m",
        "tiiuae/falcon-7b",
        "meta-llama/Llama-2-7b-hf",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-3.2-1B",
        "mistralai/Mistral-7B-v0.1",
        "Qwen/Qwen2.5-0.5B",
        "Qwen/Qwen3-0.6B-Base",
        "google/gemma-3-270m",
        "google/gemma-2-2b",
        "HuggingFaceTB/SmolLM2-135M",
        "allenai/OLMo-2-0425-1B",
        "microsoft/phi-2",
        "stabilityai/stablelm-2-1_6b",
        "tiiuae/falcon-rw-1b",
        "openai-community/gpt2-medium",
        "TinyLlama/TinyLlama_v1.1",
        "ibm-granite/granite-3.0-2b-base",
        "deepseek-ai/deepseek-llm-7b-base",
        "01-ai/Yi-6B",
        "internlm/internlm2-7b",
        "digit-model",
        "iterate-7b",
        "italian-gpt2",
        "gsarti/it5-base",
        "constructor-lm-1b",
        "distilbert/distilgpt2",
    ],
)
def test_base_names_are_accepted_in_every_layout(tmp_path, name):
    for layout, verdict in three_layouts(tmp_path, name).items():
        assert not verdict.refused, f"{name} ({layout}) refused: {verdict.reasons}"


def test_marker_matching_is_whole_token_but_sees_glued_forms():
    assert guard.instruction_markers("digit-iterate-italian-constructor") == []
    assert guard.instruction_markers("gemma-3-270m-it") == ["it"]
    assert guard.instruction_markers("it5-base") == []  # 'it' only as a whole punctuation-delimited token
    assert any("openchat" in m for m in guard.instruction_markers("openchat_3.5"))
    assert any("chatglm3" in m for m in guard.instruction_markers("chatglm3-6b"))
    assert guard.instruction_markers("OpenAssistant") == ["assistant"]
    assert guard.instruction_markers("chatterbox") == []


# --- Hugging Face cache layout ---------------------------------------------------------------------------------


def test_hf_cache_snapshot_is_judged_by_its_repo_id_not_the_commit_hash(tmp_path):
    snapshot = cache_snapshot(tmp_path, "lmsys/vicuna-7b-v1.5")
    assert len(snapshot.name) == 40
    verdict = inspect_model(snapshot)
    assert verdict.refused
    assert "HF cache repo id (from path component 'models--lmsys--vicuna-7b-v1.5') 'lmsys/vicuna-7b-v1.5'" in reasons(
        verdict
    )
    blobs = snapshot.parent.parent / "blobs"
    assert inspect_model(blobs).refused
    assert not inspect_model(cache_snapshot(tmp_path, "EleutherAI/pythia-160m")).refused


def test_hf_cache_path_from_another_host_is_judged_by_name(tmp_path):
    remote = "/home/someone/.cache/huggingface/hub/models--google--gemma-3-270m-it/snapshots/" + "a" * 40
    verdict = inspect_model(remote)
    assert verdict.refused and "google/gemma-3-270m-it" in reasons(verdict)
    assert not inspect_model(remote.replace("-it/", "/")).refused


def test_generic_folder_names_fall_back_to_the_meaningful_one(tmp_path):
    checkpoint = plain_dir(tmp_path, "llama-2-7b-chat-finetune/checkpoint-500")
    verdict = inspect_model(checkpoint)
    assert verdict.refused and "folder name 'llama-2-7b-chat-finetune'" in reasons(verdict)
    base = plain_dir(tmp_path, "pythia-160m/main")
    assert not inspect_model(base).refused


def test_folders_further_up_are_noted_not_decisive(tmp_path):
    model = plain_dir(tmp_path, "instruct-experiments/pythia-160m")
    verdict = inspect_model(model)
    assert not verdict.refused
    assert any("instruct-experiments" in n and "noted only" in n for n in verdict.notes)


def test_names_that_disagree_refuse_with_all_reasons(tmp_path):
    snapshot = cache_snapshot(tmp_path, "acme/widget-7b-instruct")
    alias = tmp_path / "widget-7b-base"
    alias.symlink_to(snapshot, target_is_directory=True)
    verdict = inspect_model(alias)
    assert verdict.refused
    text = reasons(verdict)
    assert "acme/widget-7b-instruct" in text and "signals disagree" in text and "widget-7b-base" in text


def test_config_name_fields_are_read(tmp_path):
    config = dict(PLAIN_CONFIG, _name_or_path="/scratch/runs/Llama-2-13b-chat-hf")
    verdict = inspect_model(plain_dir(tmp_path, "quiet-13b", _files(config)))
    assert verdict.refused and "config.json field _name_or_path" in reasons(verdict)


# --- model card -----------------------------------------------------------------------------------------------


def card(**front: object) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(front) + "---\n\n# Model card\n"


@pytest.mark.parametrize(
    ("front", "expected"),
    [
        ({"base_model": "acme/quiet-7b-base", "tags": ["chat"]}, "README.md tags"),
        ({"tags": ["text-generation", "conversational"]}, "README.md tags"),
        ({"base_model": "acme/quiet-7b-base", "tags": ["trl", "generated_from_trainer"]}, "a fine-tune of"),
        ({"pipeline_tag": "conversational"}, "README.md pipeline_tag"),
        ({"datasets": ["HuggingFaceH4/ultrachat_200k"]}, "ultrachat"),
        ({"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "base_model_relation": "finetune"}, "fine-tuned from a model"),
        ({"tags": ["base_model:finetune:google/gemma-2-2b-it"]}, "fine-tuned from a model"),
        ({"base_model": "google/gemma-2-2b-it", "quantized_by": "someone"}, "same weights"),
        ({"model-index": [{"name": "zephyr-7b-beta", "results": []}]}, "model-index name"),
    ],
    ids=[
        "finetune+chat-tag",
        "conversational-tag",
        "finetune+trl",
        "pipeline-tag",
        "datasets",
        "finetune-of-instruct",
        "base_model-tag",
        "quantized-instruct",
        "model-index",
    ],
)
def test_card_signals_refuse(tmp_path, front, expected):
    verdict = inspect_model(plain_dir(tmp_path, "quiet-7b", _files(README__md=card(**front))))
    assert verdict.refused and expected in reasons(verdict), verdict.reasons


def test_card_fine_tune_of_a_base_alone_is_a_note(tmp_path):
    verdict = inspect_model(
        plain_dir(tmp_path, "quiet-7b", _files(README__md=card(base_model="EleutherAI/pythia-6.9b")))
    )
    assert not verdict.refused
    assert any("fine-tuned" in n for n in verdict.notes)


def test_quantization_of_a_base_model_is_accepted(tmp_path):
    front = {"base_model": "google/gemma-2-2b", "base_model_relation": "quantized", "tags": ["gguf"]}
    verdict = inspect_model(cache_snapshot(tmp_path, "someone/quiet-GGUF", _files(README__md=card(**front))))
    assert not verdict.refused, verdict.reasons


# --- tokenizer, chat template and eos -----------------------------------------------------------------------

CHATML_TOKENIZER = {
    "added_tokens_decoder": {
        "151643": {"content": "<|endoftext|>"},
        "151644": {"content": "<|im_start|>"},
        "151645": {"content": "<|im_end|>"},
    },
    "eos_token": "<|endoftext|>",
}
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_chat_template_alone_is_a_note(tmp_path):
    files = _files(tokenizer_config__json=json.dumps({"chat_template": TEMPLATE, "eos_token": "</s>"}))
    verdict = inspect_model(plain_dir(tmp_path, "quiet-7b", files))
    assert not verdict.refused
    assert any("chat template" in n for n in verdict.notes)


def test_unknown_model_with_template_and_chat_tokens_is_refused_as_conflicting(tmp_path):
    files = _files(tokenizer_config__json=json.dumps(CHATML_TOKENIZER | {"chat_template": TEMPLATE}))
    verdict = inspect_model(plain_dir(tmp_path, "quiet-7b", files))
    assert verdict.refused
    assert "conflicting signals" in reasons(verdict) and "chat template" in reasons(verdict)
    # the same tokenizer under a base name (Qwen2.5 base ships exactly this) is accepted
    for name in ("Qwen2.5-0.5B", "quiet-7b-base"):
        assert not inspect_model(plain_dir(tmp_path, name, files)).refused, name


def test_chat_template_file_counts_as_a_template(tmp_path):
    files = _files(tokenizer_config__json=json.dumps(CHATML_TOKENIZER), chat_template__jinja=TEMPLATE)
    verdict = inspect_model(plain_dir(tmp_path, "quiet-7b", files))
    assert verdict.refused and "chat_template.jinja" in reasons(verdict)


def test_turn_end_eos_token_in_tokenizer_config_refuses(tmp_path):
    files = _files(tokenizer_config__json=json.dumps(CHATML_TOKENIZER | {"eos_token": "<|im_end|>"}))
    verdict = inspect_model(plain_dir(tmp_path, "Qwen2.5-0.5B", files))
    assert verdict.refused and "tokenizer_config.json eos_token" in reasons(verdict)


@pytest.mark.parametrize(
    ("config", "eos", "refused"),
    [
        ({"model_type": "gemma3_text", "vocab_size": 262144}, [1, 106], True),
        ({"model_type": "gemma3_text", "vocab_size": 262144}, 1, False),
        ({"model_type": "gemma2", "vocab_size": 256000}, [1, 107], True),
        ({"model_type": "llama", "vocab_size": 128256}, [128001, 128009], True),
        ({"model_type": "llama", "vocab_size": 128256}, 128001, False),
        ({"model_type": "llama", "vocab_size": 32000}, [2, 128009], False),  # not the Llama 3 vocabulary
        ({"model_type": "qwen2", "vocab_size": 151936}, [151645, 151643], True),
        ({"model_type": "qwen2", "vocab_size": 151936}, 151643, False),
        ({"model_type": "phi3", "vocab_size": 32064}, [32000, 32001, 32007], True),
    ],
)
def test_known_turn_end_ids_without_tokenizer_files(tmp_path, config, eos, refused):
    model_dir = plain_dir(tmp_path, "quiet-model", _files(config | {"eos_token_id": 1}, {"eos_token_id": eos}))
    verdict = inspect_model(model_dir)
    assert verdict.refused is refused, verdict.reasons
    if refused:
        assert "generation_config.json eos_token_id" in reasons(verdict)


def _link_tokenizer(target: Path, embedded_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (target / name).unlink(missing_ok=True)
        os.symlink(embedded_dir / name, target / name)


def test_gemma3_base_tokenizer_with_template_is_accepted_as_gemma_but_not_anonymously(tmp_path, embedded_dir):
    """The real gemma-3-270m ships <start_of_turn> tokens and a chat template; its name settles it."""
    config = json.loads((embedded_dir / "config.json").read_text())
    config.pop("_model_name_or_path", None)
    files = _files(config, {"eos_token_id": 1}, chat_template__jinja="{{ bos_token }}<start_of_turn>user\n")
    for where in (cache_snapshot(tmp_path, "google/gemma-3-270m", files), plain_dir(tmp_path, "gemma-3-270m", files)):
        _link_tokenizer(where, embedded_dir)
        verdict = inspect_model(where)
        assert not verdict.refused, verdict.reasons
        assert any("<start_of_turn>" in n for n in verdict.notes) and any("chat template" in n for n in verdict.notes)
    anonymous = plain_dir(tmp_path, "quiet-270m", files)
    _link_tokenizer(anonymous, embedded_dir)
    assert inspect_model(anonymous).refused


# --- GGUF -------------------------------------------------------------------------------------------------------


def write_gguf(
    path: Path,
    *,
    name: str | None = None,
    finetune: str | None = None,
    tokens: list[str] | None = None,
    eos: int | None = None,
    template: str | None = None,
    tags: list[str] | None = None,
) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    if name:
        writer.add_name(name)
    if finetune:
        writer.add_string("general.finetune", finetune)
    if tags:
        writer.add_array("general.tags", tags)
    if tokens:
        writer.add_token_list(tokens)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if template:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BASE_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "hello"]


def test_gguf_metadata_is_read(tmp_path):
    meta = guard.read_gguf_metadata(write_gguf(tmp_path / "m.gguf", name="Gemma 3 270m", tokens=BASE_TOKENS, eos=1))
    assert meta["general.name"] == "Gemma 3 270m" and meta["tokenizer.ggml.eos_token_id"] == 1
    assert meta["tokenizer.ggml.tokens"] == BASE_TOKENS


@pytest.mark.parametrize(
    ("kwargs", "refused", "expected"),
    [
        ({"name": "Quiet 1B", "finetune": "Instruct"}, True, "general.finetune"),
        ({"name": "Quiet 1B", "finetune": "it"}, True, "general.finetune"),
        ({"name": "Zephyr 7B Beta"}, True, "family 'zephyr'"),
        ({"name": "Quiet 1B", "tokens": BASE_TOKENS, "eos": 5}, True, "tokenizer.ggml.eos_token_id"),
        ({"name": "Quiet 1B", "tokens": BASE_TOKENS, "eos": 1, "template": "{{ x }}"}, True, "conflicting signals"),
        ({"name": "Quiet 1B", "tags": ["chat", "text-generation"]}, True, "metadata tags"),
        ({"name": "Gemma 3 270m", "tokens": BASE_TOKENS, "eos": 1, "template": "{{ x }}"}, False, ""),
        ({"name": "Quiet 1B", "finetune": "base", "tokens": BASE_TOKENS, "eos": 1}, False, ""),
    ],
    ids=[
        "finetune-instruct",
        "finetune-it",
        "name-family",
        "eos-turn-end",
        "template+tokens-unknown",
        "tags",
        "gemma-base",
        "finetune-base",
    ],
)
def test_gguf_files(tmp_path, kwargs, refused, expected):
    verdict = inspect_model(write_gguf(tmp_path / "quiet" / "model-q4_k_m.gguf", **kwargs))
    assert verdict.refused is refused, verdict.reasons
    assert expected in reasons(verdict)


def test_gguf_in_hf_cache_and_directory(tmp_path):
    snapshot = cache_snapshot(tmp_path, "TheBloke/vicuna-7B-v1.5-GGUF", {})
    write_gguf(snapshot / "model.Q4_K_M.gguf", name="quiet", tokens=BASE_TOKENS, eos=1)
    assert inspect_model(snapshot / "model.Q4_K_M.gguf").refused
    assert inspect_model(snapshot).refused
    folder = tmp_path / "quiet-folder"
    write_gguf(folder / "weights.gguf", name="Quiet", finetune="Chat")
    assert inspect_model(folder).refused


def test_unreadable_gguf_is_noted(tmp_path):
    bad = tmp_path / "pythia-160m.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    verdict = inspect_model(bad)
    assert not verdict.refused and any("unreadable" in n for n in verdict.notes)


def test_the_embedded_gguf_is_accepted():
    verdict = inspect_model(model_loader.embedded_gguf())
    assert not verdict.refused, verdict.reasons
    assert any("general.name 'Gemma 3 270m'" in n for n in verdict.notes)


# --- adapters ---------------------------------------------------------------------------------------------------


def adapter_dir(root: Path, name: str, base: str | None, readme: str | None = None) -> Path:
    target = root / name
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    if readme:
        (target / "README.md").write_text(readme)
    return target


def test_an_adapter_is_refused_as_a_model_and_its_base_is_inspected(tmp_path):
    verdict = inspect_model(adapter_dir(tmp_path, "lora", "google/gemma-3-270m-it"))
    assert verdict.refused
    text = reasons(verdict)
    assert "PEFT/LoRA adapter" in text and "base model is refused" in text and "google/gemma-3-270m-it" in text


@pytest.mark.parametrize(
    ("base", "refused"),
    [
        ("google/gemma-3-270m", False),
        ("google/gemma-3-270m-it", True),
        ("lmsys/vicuna-7b-v1.5", True),
        ("/elsewhere/hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/" + "b" * 40, True),
        ("/elsewhere/hub/models--Qwen--Qwen2.5-0.5B/snapshots/" + "b" * 40, False),
        ("/work/main/data/models/gemma-3-270m-a5fd3b62230aa5ec", False),
        (None, True),
    ],
)
def test_inspect_adapter_guards_the_base_model(tmp_path, base, refused):
    verdict = inspect_adapter(adapter_dir(tmp_path, "lora", base))
    assert verdict.refused is refused, verdict.reasons
    if refused:
        with pytest.raises(ModelGuardError, match="contamination guard.*allow_instruction_tuned=true"):
            guard.apply_guard(verdict, False, None)


def test_inspect_adapter_reads_a_local_base_with_its_files(tmp_path, tiny_model_dir):
    assert not inspect_adapter(adapter_dir(tmp_path, "ok", str(tiny_model_dir))).refused
    chat_base = plain_dir(
        tmp_path,
        "quiet-base-model",
        _files({"model_type": "gemma3_text", "vocab_size": 262144}, {"eos_token_id": [1, 106]}),
    )
    verdict = inspect_adapter(adapter_dir(tmp_path, "bad", str(chat_base)))
    assert verdict.refused and "end-of-turn" in reasons(verdict)


def test_inspect_adapter_checks_the_card_base_model_too(tmp_path):
    readme = card(base_model="HuggingFaceH4/zephyr-7b-beta", library_name="peft")
    verdict = inspect_adapter(adapter_dir(tmp_path, "lora", "mistralai/Mistral-7B-v0.1", readme))
    assert verdict.refused and "README.md base_model 'HuggingFaceH4/zephyr-7b-beta'" in reasons(verdict)


def test_inspect_adapter_refuses_a_directory_that_is_not_an_adapter(tmp_path):
    verdict = inspect_adapter(plain_dir(tmp_path, "pythia-160m"))
    assert verdict.refused and "not a PEFT adapter" in reasons(verdict)


# --- load_model hands the guard everything -----------------------------------------------------------------


def test_load_model_refuses_an_hf_cache_snapshot_of_an_instruct_model(tmp_path, tiny_model_dir):
    files = {name: (tiny_model_dir / name).read_text() for name in ("config.json", "generation_config.json")}
    snapshot = cache_snapshot(tmp_path, "Qwen/Qwen2.5-0.5B-Instruct", files)
    with pytest.raises(ModelGuardError, match=r"(?s)Qwen/Qwen2\.5-0\.5B-Instruct.*allow_instruction_tuned=true"):
        model_loader.load_model(source=str(snapshot), device="cpu")


def test_load_model_override_is_recorded(tmp_path, tiny_model_dir):
    snapshot = tmp_path / "hub" / "models--acme--tiny-chat" / "snapshots" / hashlib.sha1(b"x").hexdigest()
    shutil.copytree(tiny_model_dir, snapshot, ignore=shutil.ignore_patterns(".fingerprint.json"))
    loaded = model_loader.load_model(
        source=str(snapshot), device="cpu", allow_instruction_tuned=True, override_reason="ablation"
    )
    info = loaded.info.as_dict()
    assert info["guard"]["refused"] and info["guard"]["override_reason"] == "ablation"
    assert any(s["kind"] == "name-marker" for s in info["guard"]["signals"])


def test_guard_source_passes_the_hub_id_and_the_embedded_name(tmp_path, embedded_dir):
    snapshot = plain_dir(tmp_path, "c" * 40)
    verdict = model_loader.guard_source("google/gemma-3-270m-it", snapshot)
    assert verdict.refused and "hub id 'google/gemma-3-270m-it'" in reasons(verdict)
    embedded = model_loader.guard_source(model_loader.EMBEDDED, embedded_dir)
    assert not embedded.refused, embedded.reasons
    assert any("model name 'gemma-3-270m'" in n for n in embedded.notes)


def test_refusal_message_lists_every_reason_and_the_override(tmp_path):
    verdict = inspect_model(
        cache_snapshot(
            tmp_path,
            "google/gemma-2-2b-it",
            _files({"model_type": "gemma2", "vocab_size": 256000}, {"eos_token_id": [1, 107]}),
        )
    )
    with pytest.raises(ModelGuardError) as err:
        guard.apply_guard(verdict, False, None)
    message = str(err.value)
    assert "(1) HF cache repo id" in message and "(2) generation_config.json eos_token_id [1, 107]" in message
    assert "allow_instruction_tuned=true and override_reason=" in message
    with pytest.raises(ModelGuardError, match="needs a non-empty override_reason"):
        guard.apply_guard(verdict, True, "  ")
    guard.apply_guard(verdict, True, "studying chat models")
    assert verdict.override_reason == "studying chat models" and verdict.as_dict()["signals"]


def test_bench_table_agrees_across_layouts(tmp_path):
    bench = _bench()
    rows = bench.run(tmp_path)
    assert len(rows) >= 36 and sum(r.expected_refused for r in rows) * 2 == len(rows)
    assert len({r.model.family for r in rows}) >= 8
    assert [r.model.hub_id for r in rows if not r.ok()] == []
    assert "| `lmsys/vicuna-7b-v1.5` |" in bench.markdown(rows)
