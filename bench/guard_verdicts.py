"""The contamination guard's verdicts on well-known base and instruction-tuned models, in three layouts.

Each model is presented as (1) its hub id, (2) a Hugging Face cache snapshot
``hub/models--<org>--<name>/snapshots/<40 hex>/`` whose files are symlinks into ``blobs/`` (as the hub
client lays them out), and (3) a plain local directory named after the model. Layouts 2 and 3 hold a
realistic plain ``config.json`` (no ``_name_or_path``: current transformers drops it) and
``generation_config.json`` with the family's real eos ids; no tokenizer files, so any eos verdict comes from
the guard's table of known turn-end ids. The real guard runs on each and the table is printed as markdown.

Usage: .venv/bin/python bench/guard_verdicts.py  (exit status 1 if any verdict differs from the expectation)
Test helper: ``rows = run(tmp_path)``; each row has ``expected_refused`` and ``verdicts`` per layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stage1_assets.core.guard import GuardVerdict, inspect_model

LAYOUTS = ("hub id", "HF cache snapshot", "plain dir")


def _cfg(model_type: str, vocab: int, eos: int | list[int], bos: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": vocab, "eos_token_id": eos, "bos_token_id": bos, **extra}


# Real eos ids per checkpoint (config.json eos_token_id; generation_config.json eos_token_id).
GPT2 = _cfg("gpt2", 50257, 50256, 50256, architectures=["GPT2LMHeadModel"])
NEOX = _cfg("gpt_neox", 50304, 0, 0, architectures=["GPTNeoXForCausalLM"])
NEO = _cfg("gpt_neo", 50257, 50256, 50256, architectures=["GPTNeoForCausalLM"])
OPT = _cfg("opt", 50272, 2, 2, architectures=["OPTForCausalLM"])
BLOOM = _cfg("bloom", 250880, 2, 1, architectures=["BloomForCausalLM"])
FALCON = _cfg("falcon", 65024, 11, 11, architectures=["FalconForCausalLM"])
MPT = _cfg("mpt", 50432, 0, 0, architectures=["MPTForCausalLM"])
LLAMA2 = _cfg("llama", 32000, 2, 1, architectures=["LlamaForCausalLM"])
LLAMA3_BASE = _cfg("llama", 128256, 128001, 128000, architectures=["LlamaForCausalLM"])
LLAMA3_INSTRUCT = _cfg("llama", 128256, 128009, 128000, architectures=["LlamaForCausalLM"])
LLAMA32_INSTRUCT = _cfg("llama", 128256, [128001, 128008, 128009], 128000, architectures=["LlamaForCausalLM"])
HERMES3 = _cfg("llama", 128256, 128040, 128000, architectures=["LlamaForCausalLM"])
MISTRAL = _cfg("mistral", 32000, 2, 1, architectures=["MistralForCausalLM"])
MIXTRAL = _cfg("mixtral", 32000, 2, 1, architectures=["MixtralForCausalLM"])
MISTRAL_32002 = _cfg("mistral", 32002, 32000, 1, architectures=["MistralForCausalLM"])
QWEN25_BASE = _cfg("qwen2", 151936, 151643, 151643, architectures=["Qwen2ForCausalLM"])
QWEN25_7B_BASE = _cfg("qwen2", 152064, 151643, 151643, architectures=["Qwen2ForCausalLM"])
QWEN25_INSTRUCT = _cfg("qwen2", 151936, 151645, 151643, architectures=["Qwen2ForCausalLM"])
QWEN3_BASE = _cfg("qwen3", 151936, 151643, 151643, architectures=["Qwen3ForCausalLM"])
QWEN3_CHAT = _cfg("qwen3", 151936, 151645, 151643, architectures=["Qwen3ForCausalLM"])
GEMMA3 = _cfg("gemma3_text", 262144, 1, 2, architectures=["Gemma3ForCausalLM"])
GEMMA2 = _cfg("gemma2", 256000, 1, 2, architectures=["Gemma2ForCausalLM"])
SMOLLM2_BASE = _cfg("llama", 49152, 0, 0, architectures=["LlamaForCausalLM"])
SMOLLM2_INSTRUCT = _cfg("llama", 49152, 2, 1, architectures=["LlamaForCausalLM"])
OLMO2 = _cfg("olmo2", 100352, 100257, None, architectures=["Olmo2ForCausalLM"])
PHI2 = _cfg("phi", 51200, 50256, 50256, architectures=["PhiForCausalLM"])
PHI3 = _cfg("phi3", 32064, 32000, 1, architectures=["Phi3ForCausalLM"])
PHI4 = _cfg("phi3", 100352, 100265, 100257, architectures=["Phi3ForCausalLM"])
STABLELM2 = _cfg("stablelm", 100352, 100257, 100257, architectures=["StableLmForCausalLM"])
GRANITE3 = _cfg("granite", 49155, 0, 0, architectures=["GraniteForCausalLM"])
DEEPSEEK = _cfg("llama", 102400, 100001, 100000, architectures=["LlamaForCausalLM"])
YI = _cfg("llama", 64000, 2, 1, architectures=["LlamaForCausalLM"])
INTERNLM2 = _cfg("internlm2", 92544, 2, 1, architectures=["InternLM2ForCausalLM"])
BAICHUAN2 = _cfg("baichuan", 125696, 2, 1, architectures=["BaichuanForCausalLM"])
COHERE = _cfg("cohere", 256000, 255001, 5, architectures=["CohereForCausalLM"])
CHATGLM = _cfg("chatglm", 65024, 2, None, architectures=["ChatGLMModel"])
EXAONE = _cfg("exaone", 102400, 361, 1, architectures=["ExaoneForCausalLM"])


@dataclass
class Model:
    hub_id: str
    family: str
    instruction_tuned: bool
    config: dict[str, Any]
    generation_eos: int | list[int] | None = None  # None: the same as config.json


MODELS: list[Model] = [
    # --- base models ---------------------------------------------------------------------------------------
    Model("openai-community/gpt2", "gpt2", False, GPT2),
    Model("openai-community/gpt2-medium", "gpt2", False, GPT2),
    Model("EleutherAI/pythia-160m", "eleutherai", False, NEOX),
    Model("EleutherAI/gpt-neo-125m", "eleutherai", False, NEO),
    Model("facebook/opt-125m", "opt", False, OPT),
    Model("bigscience/bloom-560m", "bloom", False, BLOOM),
    Model("tiiuae/falcon-7b", "falcon", False, FALCON),
    Model("tiiuae/falcon-rw-1b", "falcon", False, FALCON),
    Model("mosaicml/mpt-7b", "mpt", False, MPT),
    Model("meta-llama/Llama-2-7b-hf", "llama", False, LLAMA2),
    Model("meta-llama/Meta-Llama-3-8B", "llama", False, LLAMA3_BASE),
    Model("meta-llama/Llama-3.2-1B", "llama", False, LLAMA3_BASE),
    Model("TinyLlama/TinyLlama_v1.1", "llama", False, LLAMA2),
    Model("mistralai/Mistral-7B-v0.1", "mistral", False, MISTRAL),
    Model("mistralai/Mixtral-8x7B-v0.1", "mistral", False, MIXTRAL),
    Model("Qwen/Qwen2.5-0.5B", "qwen", False, QWEN25_BASE),
    Model("Qwen/Qwen2.5-7B", "qwen", False, QWEN25_7B_BASE),
    Model("Qwen/Qwen3-0.6B-Base", "qwen3", False, QWEN3_BASE),
    Model("google/gemma-3-270m", "gemma", False, GEMMA3),
    Model("google/gemma-3-1b-pt", "gemma", False, GEMMA3),
    Model("google/gemma-2-2b", "gemma", False, GEMMA2),
    Model("HuggingFaceTB/SmolLM2-135M", "smollm", False, SMOLLM2_BASE),
    Model("allenai/OLMo-2-0425-1B", "olmo", False, OLMO2),
    Model("microsoft/phi-2", "phi", False, PHI2),
    Model("stabilityai/stablelm-2-1_6b", "stablelm", False, STABLELM2),
    Model("ibm-granite/granite-3.0-2b-base", "granite", False, GRANITE3),
    Model("deepseek-ai/deepseek-llm-7b-base", "deepseek", False, DEEPSEEK),
    Model("01-ai/Yi-6B", "yi", False, YI),
    Model("internlm/internlm2-7b", "internlm", False, INTERNLM2),
    Model("baichuan-inc/Baichuan2-7B-Base", "baichuan", False, BAICHUAN2),
    # --- instruction / chat tuned --------------------------------------------------------------------------
    Model("lmsys/vicuna-7b-v1.5", "vicuna", True, LLAMA2),
    Model("HuggingFaceH4/zephyr-7b-beta", "zephyr", True, MISTRAL),
    Model("openchat/openchat_3.5", "openchat", True, MISTRAL_32002),
    Model("teknium/OpenHermes-2.5-Mistral-7B", "hermes", True, MISTRAL_32002),
    Model("NousResearch/Hermes-3-Llama-3.1-8B", "hermes", True, HERMES3),
    Model("databricks/dolly-v2-3b", "dolly", True, NEOX),
    Model("WizardLMTeam/WizardLM-13B-V1.2", "wizardlm", True, LLAMA2),
    Model("stabilityai/StableBeluga-7B", "stablebeluga", True, LLAMA2),
    Model("meta-llama/Llama-2-7b-chat-hf", "llama", True, LLAMA2),
    Model("meta-llama/Meta-Llama-3-8B-Instruct", "llama", True, LLAMA3_INSTRUCT, [128001, 128009]),
    Model("meta-llama/Llama-3.2-1B-Instruct", "llama", True, LLAMA32_INSTRUCT),
    Model("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "llama", True, LLAMA2),
    Model("mistralai/Mistral-7B-Instruct-v0.2", "mistral", True, MISTRAL),
    Model("Qwen/Qwen2.5-0.5B-Instruct", "qwen", True, QWEN25_INSTRUCT, [151645, 151643]),
    Model("Qwen/Qwen3-0.6B", "qwen3", True, QWEN3_CHAT, [151645, 151643]),
    Model("google/gemma-3-270m-it", "gemma", True, GEMMA3, [1, 106]),
    Model("google/gemma-2-2b-it", "gemma", True, GEMMA2, [1, 107]),
    Model("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm", True, SMOLLM2_INSTRUCT),
    Model("allenai/OLMo-2-1124-7B-Instruct", "olmo", True, OLMO2),
    Model("microsoft/Phi-3-mini-4k-instruct", "phi", True, PHI3, [32000, 32001, 32007]),
    Model("microsoft/phi-4", "phi", True, PHI4),
    Model("stabilityai/stablelm-2-zephyr-1_6b", "stablelm", True, STABLELM2),
    Model("ibm-granite/granite-3.0-2b-instruct", "granite", True, GRANITE3),
    Model("deepseek-ai/deepseek-llm-7b-chat", "deepseek", True, DEEPSEEK),
    Model("01-ai/Yi-6B-Chat", "yi", True, YI),
    Model("internlm/internlm2-chat-7b", "internlm", True, INTERNLM2, [2, 92542]),
    Model("CohereForAI/c4ai-command-r-v01", "command-r", True, COHERE),
    Model("CohereForAI/aya-23-8B", "aya", True, COHERE),
    Model("THUDM/chatglm3-6b", "chatglm", True, CHATGLM),
    Model("LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct", "exaone", True, EXAONE),
]


@dataclass
class Row:
    model: Model
    verdicts: dict[str, GuardVerdict] = field(default_factory=dict)

    @property
    def expected_refused(self) -> bool:
        return self.model.instruction_tuned

    def ok(self) -> bool:
        return all(v.refused == self.expected_refused for v in self.verdicts.values())


def _files(model: Model) -> dict[str, str]:
    config = {k: v for k, v in model.config.items() if v is not None}
    config |= {"torch_dtype": "bfloat16", "transformers_version": "4.46.0"}
    generation = {"_from_model_config": True, "eos_token_id": model.generation_eos or config["eos_token_id"]}
    if "bos_token_id" in config:
        generation["bos_token_id"] = config["bos_token_id"]
    generation["transformers_version"] = "4.46.0"
    return {"config.json": json.dumps(config, indent=2), "generation_config.json": json.dumps(generation, indent=2)}


def write_hf_cache_snapshot(hub_root: Path, hub_id: str, files: dict[str, str]) -> Path:
    """Lay out `files` as the hub client does: blobs/<sha256>, snapshots/<commit>/<name> -> ../../blobs/<sha256>."""
    repo = hub_root / ("models--" + hub_id.replace("/", "--"))
    commit = hashlib.sha1(hub_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, text in files.items():
        digest = hashlib.sha256(text.encode()).hexdigest()
        (repo / "blobs" / digest).write_text(text)
        link = snapshot / name
        if not link.exists():
            os.symlink(Path("../../blobs") / digest, link)
    return snapshot


def write_plain_dir(root: Path, hub_id: str, files: dict[str, str]) -> Path:
    target = root / hub_id.rsplit("/", 1)[-1]
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (target / name).write_text(text)
    return target


def run(root: Path, models: list[Model] = MODELS) -> list[Row]:
    rows = []
    for model in models:
        files = _files(model)
        row = Row(model)
        row.verdicts["hub id"] = inspect_model(model.hub_id)
        row.verdicts["HF cache snapshot"] = inspect_model(write_hf_cache_snapshot(root / "hub", model.hub_id, files))
        row.verdicts["plain dir"] = inspect_model(write_plain_dir(root / "plain", model.hub_id, files))
        rows.append(row)
    return rows


def brief(verdict: GuardVerdict) -> str:
    """The decisive signals of a verdict in a few words (the full reasons are in verdict.reasons)."""
    parts: list[str] = []
    for sig in verdict.signals:
        if sig["strength"] != "decisive":
            continue
        if sig["kind"] == "known-family":
            family = re.search(r"family '([^']+)'", sig["detail"])
            text = f"family `{family.group(1) if family else '?'}`"
        elif sig["kind"] == "name-marker":
            markers = re.search(r"marker\(s\) (\[.*\])", sig["detail"])
            text = f"marker {markers.group(1) if markers else '?'}"
        elif sig["kind"] == "turn-end-eos":
            text = f"end-of-turn eos ({sig['source'].split(' ')[0]})"
        else:
            text = sig["kind"]
        if text not in parts:
            parts.append(text)
    if not parts and verdict.reasons:
        parts.append(verdict.reasons[-1])
    return ", ".join(parts).replace("|", "\\|") or "—"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| model | family | expected | " + " | ".join(LAYOUTS) + " | decisive signals (HF cache snapshot) |",
        "|---|---|---|" + "---|" * len(LAYOUTS) + "---|",
    ]
    for row in rows:
        cells = []
        for layout in LAYOUTS:
            verdict = row.verdicts[layout]
            word = "refused" if verdict.refused else "accepted"
            cells.append(word if verdict.refused == row.expected_refused else f"**{word} (WRONG)**")
        expected = "instruction-tuned" if row.expected_refused else "base"
        reason = brief(row.verdicts["HF cache snapshot"])
        lines.append(f"| `{row.model.hub_id}` | {row.model.family} | {expected} | {' | '.join(cells)} | {reason} |")
    return "\n".join(lines)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(Path(tmp))
    print(markdown(rows))
    wrong = [r.model.hub_id for r in rows if not r.ok()]
    n_base = sum(not r.expected_refused for r in rows)
    families = len({r.model.family for r in rows})
    right = sum(v.refused == r.expected_refused for r in rows for v in r.verdicts.values())
    print(
        f"\n{len(rows)} models ({n_base} base, {len(rows) - n_base} instruction-tuned, {families} families) x "
        f"{len(LAYOUTS)} layouts: {right}/{len(rows) * len(LAYOUTS)} verdicts as expected"
        + (f"; WRONG: {wrong}" if wrong else "; the three layouts agree on every model")
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
