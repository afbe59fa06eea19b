"""Canonical completion-style prompts: instruction generation, response generation, critic, judge.

A base model does not follow instructions; it continues documents. Each prompt is therefore a
document whose natural continuation is exactly one instruction or one response, ended by the
next delimiter (a stop sequence). `PROMPT_VERSION` is a hash of every template and exemplar
pool, so any change to wording or shots shows up in provenance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .io import read_jsonl, sha256_file, stable_hash

EXEMPLARS_DIR = Path(__file__).resolve().parents[2] / "data" / "exemplars"
TRAIN_POOL = "train_instructions.jsonl"
TEST_POOL = "test_instructions.jsonl"
QA_SHOTS = "qa_shots.jsonl"
BAD_SHOTS = "critic_bad_shots.jsonl"  # the critic's document of careless answers (core/critic.py)

INSTRUCTION_HEADER = "A list of clear, self-contained requests that people sent to a helpful assistant.\n\n"
INSTRUCTION_LINE = "Instruction: {instruction}\n"
RESPONSE_HEADER = (
    "Below are requests sent to a helpful assistant, each followed by the assistant's accurate, concise response.\n\n"
)
PAIR_BLOCK = "Instruction: {instruction}\nResponse: {response}\n\n"
RESPONSE_CUE = "Instruction: {instruction}\nResponse:"
# Fine-tuning teaches the model to answer without shots; evaluation asks both systems this way.
SFT_CUE = "Instruction: {instruction}\nResponse:"
# The critic's unconditional context: the same document with the instruction withheld, so that
# log p(response | instruction) - log p(response | no instruction) measures how much the
# response depends on *this* instruction (pointwise mutual information).
UNCONDITIONAL_CUE = "Response:"

# Strings a response must never contain: they belong to the template, not to an answer.
TEMPLATE_DELIMITERS: tuple[str, ...] = ("Instruction:", "Response:", "<start_of_turn>", "<end_of_turn>")

INSTRUCTION_SHOTS = 8
# Instruction prompts come in groups whose prompts share their first shots (then each draws its own):
# the engine runs a block that prompts share through the model once (core/decoding.py), so a group
# prefills about a third of the prompt tokens of independent prompts. bench/instruction_prompts.py
# measures what it does to the instructions (survival of the filters, diversity) on the real model.
INSTRUCTION_GROUP = 64
INSTRUCTION_SHARED_SHOTS = 6


@dataclass(frozen=True)
class Exemplar:
    id: str
    category: str
    instruction: str
    response: str | None = None


@cache
def load_pool(name: str, exemplars_dir: Path = EXEMPLARS_DIR) -> tuple[Exemplar, ...]:
    # a shots file (good answers, or the critic's bad ones) pairs each instruction with a response
    required = ("instruction", "response") if name.endswith("shots.jsonl") else ("instruction",)
    rows = read_jsonl(exemplars_dir / name, required=required)
    return tuple(
        Exemplar(
            id=r["id"],
            category=r.get("category", ""),
            instruction=r["instruction"],
            response=r.get("response"),
        )
        for r in rows
    )


@cache
def prompt_version(exemplars_dir: Path = EXEMPLARS_DIR) -> str:
    templates = [INSTRUCTION_HEADER, INSTRUCTION_LINE, RESPONSE_HEADER, PAIR_BLOCK, RESPONSE_CUE, UNCONDITIONAL_CUE,
                 SFT_CUE, TEMPLATE_DELIMITERS, INSTRUCTION_SHOTS, INSTRUCTION_GROUP,
                 INSTRUCTION_SHARED_SHOTS]  # fmt: skip
    pools = {name: sha256_file(exemplars_dir / name) for name in (TRAIN_POOL, TEST_POOL, QA_SHOTS, BAD_SHOTS)}
    return "p1-" + stable_hash([templates, pools])[:12]


def instruction_prompts(
    pool: tuple[Exemplar, ...],
    rng: random.Random,
    count: int,
    group_size: int = INSTRUCTION_GROUP,
    shared_shots: int = INSTRUCTION_SHARED_SHOTS,
) -> list[str]:
    """`count` few-shot lists of distinct instructions, each ending in an open `Instruction:` line to fill.

    Every `group_size` consecutive prompts share their first `shared_shots` shots (drawn per group)
    and draw the rest of their INSTRUCTION_SHOTS each; `group_size=1, shared_shots=0` gives every
    prompt shots of its own.
    """
    shots = min(INSTRUCTION_SHOTS, len(pool))
    shared_shots = min(shared_shots, shots)
    out: list[str] = []
    while len(out) < count:
        shared = rng.sample(range(len(pool)), k=shared_shots)
        taken = set(shared)
        rest = [i for i in range(len(pool)) if i not in taken]
        for _ in range(min(group_size, count - len(out))):
            picked = shared + rng.sample(rest, k=shots - shared_shots)
            lines = "".join(INSTRUCTION_LINE.format(instruction=pool[i].instruction) for i in picked)
            out.append(INSTRUCTION_HEADER + lines + "Instruction:")
    return out


def shots_document(shots: tuple[Exemplar, ...]) -> str:
    return RESPONSE_HEADER + "".join(PAIR_BLOCK.format(instruction=s.instruction, response=s.response) for s in shots)


def response_prompt(instruction: str, shots: tuple[Exemplar, ...]) -> str:
    """The response-generation prompt; the SFT template and the evaluation use the same one."""
    return shots_document(shots) + RESPONSE_CUE.format(instruction=instruction.strip())


def sft_prompt(instruction: str) -> str:
    """The zero-shot template of supervised fine-tuning and of the paired evaluation."""
    return SFT_CUE.format(instruction=instruction.strip())


def unconditional_prompt(shots: tuple[Exemplar, ...]) -> str:
    return shots_document(shots) + UNCONDITIONAL_CUE


def clean_instruction(text: str) -> str:
    """First line of a generated instruction, whitespace-normalised."""
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
