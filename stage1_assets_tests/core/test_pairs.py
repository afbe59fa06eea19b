"""core/pairs.py: instructions (spares, filters, rounds, seeds) and the scored pairs built from them.

The filtering and round logic runs against a scripted stand-in for the generator, so every
completion is known; seeding, ids and the row format run on the tiny random model.
"""

import json

import pytest

from stage1_assets.core import pairs, prompts
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.generation import Completion, Generator

POOL = (
    prompts.Exemplar("ex-1", "explanation", "Explain why the sky looks blue during the day."),
    prompts.Exemplar("ex-2", "list", "List three uses of baking soda at home."),
    prompts.Exemplar("ex-3", "math", "What is the sum of the first ten odd numbers?"),
)
EXCLUDE = ("What causes the ocean tides on Earth today?",)
PARAMS = InstructionSampling()


class ScriptedGenerator:
    """Answers each `generate` call with the next round of scripted completions and records the call.

    A script entry is a text (finish reason "stop") or (text, finish reason); prompts beyond the
    script get an empty completion, which the word-count filter removes.
    """

    def __init__(self, *rounds: list) -> None:
        self.rounds = list(rounds)
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts_, params, batch_size, seed):
        self.calls.append((list(prompts_), seed))
        script = self.rounds.pop(0) if self.rounds else []
        entries = [(e, "stop") if isinstance(e, str) else e for e in script][: len(prompts_)]
        entries += [("", "stop")] * (len(prompts_) - len(entries))
        return [Completion(" " + text, reason, 10, 5) for text, reason in entries], None


def good(n: int) -> list[str]:
    topics = ["rivers", "planets", "metals", "birds", "rocks", "trees", "clouds", "bridges", "poems", "spices"]
    return [f"Name {k + 2} famous {topics[k % 10]} of region {k}." for k in range(n)]


# --- instruction_problem --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, finish, problem",
    [
        ("Name three rivers.", "stop", None),
        ("Name three rivers.", "eos", None),
        ("Name three rivers.", "length", "run-on"),
        ("Name rivers", "stop", "fewer than"),
        ("Name three rivers " + "x" * (pairs.MAX_INSTRUCTION_CHARS - 18), "stop", None),  # exactly the limit
        ("Name three rivers " + "x" * (pairs.MAX_INSTRUCTION_CHARS - 17), "stop", "longer than"),
        ("Name three rivers. Response: the Nile", "stop", "delimiter"),
        ("Say <end_of_turn> three times", "stop", "delimiter"),
    ],
)
def test_instruction_problem(text, finish, problem):
    found = pairs.instruction_problem(text, finish)
    assert found is None if problem is None else problem in found


# --- generate_instructions on a scripted generator -----------------------------------------------


@pytest.mark.parametrize("count, asked", [(1, 5), (2, 6), (16, 20), (40, 50)])
def test_first_round_asks_for_spares_and_keeps_exactly_count(count, asked):
    generator = ScriptedGenerator(good(asked))
    kept, removed = pairs.generate_instructions(generator, count, 5, POOL, PARAMS, batch_size=8)
    assert len(generator.calls) == 1 and len(generator.calls[0][0]) == asked
    assert kept == good(asked)[:count], "the first survivors, in generation order"
    assert removed == {}


def test_every_filter_removes_and_counts_and_a_second_round_makes_up_the_shortfall():
    first = [
        ("Describe the history of the printing press in great", "length"),
        "Two words",
        "word " * 80,
        "Explain this. Response: sure",
        POOL[0].instruction,
        "Name three rivers in Africa.",
        "name three RIVERS in africa!",
    ]
    second = [
        "What causes the ocean tides on Earth?",  # Jaccard 7/8 with EXCLUDE[0]
        "Give two uses of copper wire.",
        "Suggest a name for a pet goldfish.",
        "Write a haiku about autumn rain.",  # survives the filters, but two were needed
    ]
    generator = ScriptedGenerator(first, second)
    kept, removed = pairs.generate_instructions(generator, 3, 100, POOL, PARAMS, batch_size=4, exclude=EXCLUDE)
    assert kept == [
        "Name three rivers in Africa.",
        "Give two uses of copper wire.",
        "Suggest a name for a pet goldfish.",
    ]
    assert [seed for _, seed in generator.calls] == [100, 101], "round r samples with seed + r"
    assert [len(p) for p, _ in generator.calls] == [3 + 4, 2 + 4]
    assert removed == {
        "run-on (hit max new tokens)": 1,
        f"fewer than {pairs.MIN_INSTRUCTION_WORDS} words": 1 + 2,  # and round two's two unscripted prompts
        f"longer than {pairs.MAX_INSTRUCTION_CHARS} chars": 1,
        "contains a template delimiter": 1,
        "exact duplicate of an exemplar or excluded text": 1,
        "exact duplicate of another instruction": 1,
        "near duplicate of an exemplar or excluded text": 1,
    }


def test_an_instruction_kept_in_an_earlier_round_blocks_its_duplicates_later():
    generator = ScriptedGenerator(["Name three rivers in Africa."], ["Name three rivers in Africa?", *good(5)])
    kept, removed = pairs.generate_instructions(generator, 2, 0, POOL, PARAMS, batch_size=4)
    assert kept == ["Name three rivers in Africa.", good(5)[0]]
    assert removed["exact duplicate of another instruction"] == 1


def test_too_few_survivors_after_every_round_is_an_error_naming_the_filters():
    generator = ScriptedGenerator(*[["Too short"] * 3 for _ in range(pairs.MAX_INSTRUCTION_ROUNDS)])
    asked_per_round = 2 + 4
    removed = f"'fewer than 3 words': {asked_per_round * pairs.MAX_INSTRUCTION_ROUNDS}"
    with pytest.raises(RuntimeError, match=rf"only 0 of 2 instructions survived .*{removed}"):
        pairs.generate_instructions(generator, 2, 7, POOL, PARAMS, batch_size=4)
    assert [seed for _, seed in generator.calls] == list(range(7, 7 + pairs.MAX_INSTRUCTION_ROUNDS))


def test_prompts_are_few_shot_instruction_prompts_fixed_by_the_seed():
    def asked(seed: int) -> list[str]:
        generator = ScriptedGenerator(good(6))
        pairs.generate_instructions(generator, 2, seed, prompts.load_pool(prompts.TRAIN_POOL), PARAMS, 4)
        return generator.calls[0][0]

    first = asked(3)
    assert all(p.startswith(prompts.INSTRUCTION_HEADER) and p.endswith("\nInstruction:") for p in first)
    assert asked(3) == first
    assert asked(4) != first


# --- GenerationParams -----------------------------------------------------------------------------


def test_generation_params_as_dict_is_json_and_rebuilds_the_same_params():
    params = pairs.GenerationParams(
        InstructionSampling(temperature=1.1, stop_sequences=["q"]), ResponseSampling(max_new_tokens=64),
        CriticParams(confidence_threshold=0.5), batch_size=16,
    )  # fmt: skip
    data = json.loads(json.dumps(params.as_dict()))
    rebuilt = pairs.GenerationParams(
        InstructionSampling(**data["instruction"]), ResponseSampling(**data["response"]),
        CriticParams(**data["critic"]), data["batch_size"],
    )  # fmt: skip
    assert rebuilt == params


# --- on the tiny random model ---------------------------------------------------------------------

# a random model writes an instruction only where a stop sequence ends it: "q" is rare enough to leave several words
TINY_INSTRUCTIONS = InstructionSampling(stop_sequences=["q"], max_new_tokens=40)
# no stop sequence a random model would write: every response runs to the token limit
TINY_RESPONSES = ResponseSampling(max_new_tokens=8, stop_sequences=["\x00"])
TINY_PARAMS = pairs.GenerationParams(TINY_INSTRUCTIONS, TINY_RESPONSES, CriticParams(), batch_size=4)


@pytest.fixture(scope="module")
def tiny_generator(tiny_model):
    return Generator(tiny_model.model, tiny_model.tokenizer)


def test_tiny_model_instructions_are_clean_distinct_new_and_fixed_by_the_seed(tiny_generator, one_torch_thread):
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    kept, removed = pairs.generate_instructions(tiny_generator, 3, 11, pool, TINY_INSTRUCTIONS, 4)
    assert len(kept) == len(set(kept)) == 3
    for text in kept:
        assert pairs.instruction_problem(text, "stop") is None
        assert prompts.clean_instruction(text) == text
        assert text not in {e.instruction for e in pool}
    assert pairs.generate_instructions(tiny_generator, 3, 11, pool, TINY_INSTRUCTIONS, 4) == (kept, removed)
    assert pairs.generate_instructions(tiny_generator, 3, 12, pool, TINY_INSTRUCTIONS, 4)[0] != kept


def test_tiny_model_rows_keep_ids_and_order_and_a_truncated_answer_is_never_accepted(
    tiny_model, tiny_generator, one_torch_thread
):
    instructions = ["Name three rivers in Africa.", "What do bees make?", "Give a synonym for happy."]
    ids = ["pilot-000007", "pilot-000003", "pilot-000011"]
    rows = pairs.respond_and_score(tiny_model, instructions, ids, TINY_PARAMS, seed=5, generator=tiny_generator)
    assert [r["id"] for r in rows] == ids and [r["instruction"] for r in rows] == instructions
    for row in rows:
        n_tokens = len(tiny_model.tokenizer(row["response"], add_special_tokens=False)["input_ids"])
        assert row["response_tokens"] == n_tokens
        assert row["finish_reason"] == "length" and row["completion_tokens"] == TINY_RESPONSES.max_new_tokens
        assert row["critic_rule"] and not row["accepted"], "cut off at max_new_tokens: unfinished, whatever its score"
        assert all(isinstance(row[k], float) for k in ("critic_score", "critic_pmi", "cond_logprob", "uncond_logprob"))
    again = pairs.respond_and_score(tiny_model, instructions, ids, TINY_PARAMS, seed=5, generator=tiny_generator)
    assert again == rows
    other = pairs.respond_and_score(tiny_model, instructions, ids, TINY_PARAMS, seed=6, generator=tiny_generator)
    assert [r["response"] for r in other] != [r["response"] for r in rows]
