"""core/prompts.py: the documents a base model continues, their version hash, and the exemplar pools."""

import json
import random
import shutil

import pytest

from stage1_assets.core import prompts
from stage1_assets.core.config import InstructionSampling, ResponseSampling
from stage1_assets.core.generation import truncate_at_stop
from stage1_assets.core.io import InputFileError

POOLS = (prompts.TRAIN_POOL, prompts.TEST_POOL, prompts.QA_SHOTS, prompts.BAD_SHOTS)


def pool(n: int) -> tuple[prompts.Exemplar, ...]:
    return tuple(prompts.Exemplar(f"ex-{i}", "cat", f"Request number {i} about topic {i}?") for i in range(n))


def shots(n: int = 2) -> tuple[prompts.Exemplar, ...]:
    return tuple(prompts.Exemplar(f"s{i}", "cat", f"Question {i}?", f"Answer {i}.") for i in range(n))


def copy_exemplars(target):
    """A private exemplars folder with the four files `prompt_version` hashes (each call: a new path, so
    the per-folder cache of `prompt_version` and `load_pool` never answers for another test)."""
    target.mkdir(parents=True)
    for name in POOLS:
        shutil.copy(prompts.EXEMPLARS_DIR / name, target / name)
    return target


# --- instruction prompt ---------------------------------------------------------------------------


def shots_of(text: str) -> list[str]:
    """The shots of an instruction prompt, in order, after checking its frame."""
    assert text.startswith(prompts.INSTRUCTION_HEADER)
    assert text.endswith("\nInstruction:"), "the model must fill exactly one open Instruction line"
    lines = text[len(prompts.INSTRUCTION_HEADER) : -len("Instruction:")].splitlines()
    assert all(line.startswith("Instruction: ") for line in lines)
    return [line.removeprefix("Instruction: ") for line in lines]


def test_instruction_prompts_are_header_then_distinct_shots_then_an_open_instruction_line():
    exemplars = pool(20)
    for text in prompts.instruction_prompts(exemplars, random.Random(0), 10, group_size=4, shared_shots=6):
        used = shots_of(text)
        assert len(used) == prompts.INSTRUCTION_SHOTS == len(set(used)), "INSTRUCTION_SHOTS distinct shots"
        assert set(used) <= {e.instruction for e in exemplars}


def test_a_group_of_instruction_prompts_shares_its_first_shots_and_draws_the_rest_per_prompt():
    texts = prompts.instruction_prompts(pool(30), random.Random(2), 10, group_size=4, shared_shots=5)
    groups = [texts[0:4], texts[4:8], texts[8:10]]  # the last group is what is left of the count
    assert len(texts) == 10
    for group in groups:
        shots = [shots_of(t) for t in group]
        assert all(s[:5] == shots[0][:5] for s in shots), "the group's shared shots, in the same order"
        assert len({tuple(s[5:]) for s in shots}) == len(group), "each prompt's own shots"
    assert len({tuple(shots_of(g[0])[:5]) for g in groups}) == 3, "each group draws its shared shots"


def test_instruction_prompts_without_groups_draw_every_prompt_its_own_shots():
    texts = prompts.instruction_prompts(pool(30), random.Random(3), 6, group_size=1, shared_shots=0)
    assert len({shots_of(t)[0] for t in texts}) > 3  # 6 first shots from 30: mostly distinct unless shared


def test_instruction_prompts_with_a_small_pool_use_every_exemplar_once():
    exemplars = pool(prompts.INSTRUCTION_SHOTS - 3)
    for text in prompts.instruction_prompts(exemplars, random.Random(1), 3):
        assert sorted(text.count(e.instruction) for e in exemplars) == [1] * len(exemplars)


def test_instruction_prompts_are_reproducible_for_a_seeded_rng_and_vary_between_calls():
    exemplars = pool(30)
    first = prompts.instruction_prompts(exemplars, random.Random(42), 3)
    assert first == prompts.instruction_prompts(exemplars, random.Random(42), 3)
    # successive prompts draw different shots of their own (22 choose 2 orderings: equal only by a bug)
    assert len(set(first)) == 3
    assert prompts.instruction_prompts(exemplars, random.Random(43), 1) != first[:1]


def test_an_instruction_completion_is_cut_at_the_next_instruction_line_and_cleaned():
    """What the model writes after the open `Instruction:` ends where the document's next entry begins."""
    completion = " Name three birds that cannot fly.\nInstruction: Explain gravity.\n"
    text, stopped = truncate_at_stop(completion, InstructionSampling().stop_sequences)
    assert stopped
    assert prompts.clean_instruction(text) == "Name three birds that cannot fly."


# --- response, SFT and unconditional prompts ------------------------------------------------------


def test_response_prompt_ends_with_the_cue_after_every_shot():
    document = prompts.response_prompt("  What is 2 + 2?\n", shots(3))
    assert document.startswith(prompts.RESPONSE_HEADER)
    assert document.endswith("Instruction: What is 2 + 2?\nResponse:"), "instruction stripped, open Response line"
    for s in shots(3):
        assert f"Instruction: {s.instruction}\nResponse: {s.response}\n\n" in document
    # the shots come before the cue, in order
    positions = [document.index(s.instruction) for s in shots(3)]
    assert positions == sorted(positions) and positions[-1] < document.rindex("What is 2 + 2?")


def test_a_response_completion_is_cut_before_the_model_starts_the_next_pair():
    completion = " Four.\n\nInstruction: What is 3 + 3?\nResponse: Six."
    text, stopped = truncate_at_stop(completion, ResponseSampling().stop_sequences)
    assert stopped and text.strip() == "Four."


def test_sft_prompt_is_the_tail_of_the_response_prompt():
    """Training without shots and generating with them end in the same cue: the adapter learns that cue."""
    instruction = "Give a synonym for quick. "
    assert prompts.sft_prompt(instruction) == "Instruction: Give a synonym for quick.\nResponse:"
    assert prompts.response_prompt(instruction, shots()).endswith(prompts.sft_prompt(instruction))
    assert not prompts.sft_prompt(instruction).startswith(prompts.RESPONSE_HEADER)


def test_unconditional_prompt_is_the_response_prompt_without_the_instruction_line():
    """The critic's PMI compares the two contexts: they must differ by the instruction and nothing else."""
    instruction = "What do bees make?"
    conditional = prompts.response_prompt(instruction, shots())
    unconditional = prompts.unconditional_prompt(shots())
    assert conditional.replace(f"Instruction: {instruction}\n", "") == unconditional
    assert unconditional.endswith(prompts.UNCONDITIONAL_CUE)


# --- clean_instruction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("", ""),
        ("   \n\t\n ", ""),
        (" Name a river.", "Name a river."),
        ("Name a river.\nInstruction: more", "Name a river."),
        ("\n\n  Name   a\triver.  \nsecond line", "Name a river."),
        ("Name a river.\r\nnext", "Name a river."),
    ],
)
def test_clean_instruction(raw, clean):
    assert prompts.clean_instruction(raw) == clean


# --- prompt_version -------------------------------------------------------------------------------


def test_prompt_version_depends_on_exemplar_content_not_on_the_folder(tmp_path):
    assert prompts.prompt_version(copy_exemplars(tmp_path / "copy")) == prompts.prompt_version()
    assert prompts.prompt_version().startswith("p1-")


@pytest.mark.parametrize("name", POOLS)
def test_prompt_version_changes_when_any_exemplar_file_changes(tmp_path, name):
    edited = copy_exemplars(tmp_path / "edited")
    path = edited / name
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["instruction"] += " Please."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert prompts.prompt_version(edited) != prompts.prompt_version()


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("INSTRUCTION_HEADER", "A list of requests.\n\n"),
        ("RESPONSE_CUE", "Instruction: {instruction}\nAnswer:"),
        ("SFT_CUE", "Q: {instruction}\nA:"),
        ("UNCONDITIONAL_CUE", "Answer:"),
        ("TEMPLATE_DELIMITERS", ("Instruction:",)),
        ("INSTRUCTION_SHOTS", 4),
        ("INSTRUCTION_GROUP", 1),
        ("INSTRUCTION_SHARED_SHOTS", 0),
    ],
)
def test_prompt_version_changes_when_a_template_changes(tmp_path, monkeypatch, attribute, value):
    before = prompts.prompt_version(copy_exemplars(tmp_path / "before"))
    monkeypatch.setattr(prompts, attribute, value)
    assert prompts.prompt_version(copy_exemplars(tmp_path / "after")) != before


# --- exemplar pools -------------------------------------------------------------------------------


def test_load_pool_reads_exemplars_and_requires_responses_only_in_shots_files(tmp_path):
    rows = [{"id": "a", "category": "math", "instruction": "What is 2 + 2?"}, {"id": "b", "instruction": "Why?"}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / prompts.TRAIN_POOL).write_text(text)
    (tmp_path / prompts.QA_SHOTS).write_text(text)
    assert prompts.load_pool(prompts.TRAIN_POOL, tmp_path) == (
        prompts.Exemplar("a", "math", "What is 2 + 2?"),
        prompts.Exemplar("b", "", "Why?"),
    )
    with pytest.raises(InputFileError, match=r"qa_shots.jsonl:1: field 'response' is missing"):
        prompts.load_pool(prompts.QA_SHOTS, tmp_path)


def test_the_shipped_pools_fit_the_templates():
    """Enough distinct exemplars for a prompt, every shot answered, nothing that would read as a new entry."""
    train, test = prompts.load_pool(prompts.TRAIN_POOL), prompts.load_pool(prompts.TEST_POOL)
    for exemplars in (train, test):
        assert len({e.instruction for e in exemplars}) >= prompts.INSTRUCTION_SHOTS
    assert not {e.instruction for e in train} & {e.instruction for e in test}, "held-out pool overlaps the train pool"
    for name in POOLS:
        for e in prompts.load_pool(name):
            assert "\n" not in e.instruction, f"{name} {e.id}: a newline would end the instruction early"
            fields = [e.instruction] + ([e.response] if e.response is not None else [])
            assert not any(d in f for d in prompts.TEMPLATE_DELIMITERS for f in fields), f"{name} {e.id}"
    assert all(e.response for name in (prompts.QA_SHOTS, prompts.BAD_SHOTS) for e in prompts.load_pool(name))
