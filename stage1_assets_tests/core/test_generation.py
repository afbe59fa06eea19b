import copy
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stage1_assets.core import prompts
from stage1_assets.core.config import SamplingParams
from stage1_assets.core.decoding import StopWatch, TokenFetch, aligned_rows, shared_prefixes
from stage1_assets.core.generation import STOP_WINDOW_TOKENS, Generator, sample_next, truncate_at_stop

from ..support import PROMPTS


def test_greedy_batched_matches_transformers_generate(tiny_model):
    """Left padding, position ids, the KV cache and row compaction must not change the result."""
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, stop_sequences=["\x00"])
    ours, _ = gen.generate(PROMPTS, params, batch_size=3, seed=0)
    for prompt, completion in zip(PROMPTS, ours, strict=True):
        enc = tiny_model.tokenizer(prompt, return_tensors="pt")
        out = tiny_model.model.generate(**enc, max_new_tokens=12, do_sample=False)
        expected = tiny_model.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert completion.text == expected.strip()


def test_repetition_penalty_matches_transformers(tiny_model):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.3, max_new_tokens=10, stop_sequences=["\x00"])
    [ours], _ = gen.generate(PROMPTS[:1], params, batch_size=1, seed=0)
    enc = tiny_model.tokenizer(PROMPTS[0], return_tensors="pt")
    out = tiny_model.model.generate(**enc, max_new_tokens=10, do_sample=False, repetition_penalty=1.3)
    assert (
        ours.text == tiny_model.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    )


def test_sampling_is_reproducible_and_independent_of_batching(tiny_model):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, stop_sequences=["\x00"])
    a, _ = gen.generate(PROMPTS, params, batch_size=5, seed=7)
    b, _ = gen.generate(PROMPTS, params, batch_size=2, seed=7)
    c, _ = gen.generate(PROMPTS, params, batch_size=5, seed=8)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]


def test_stop_sequences_cut_text_and_set_finish_reason(real_model):
    gen = Generator(real_model.model, real_model.tokenizer)
    prompt = "Instruction: Name a color.\nResponse: Blue.\n\nInstruction: Name a fruit.\nResponse: Apple.\n\n"
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    [completion], _ = gen.generate([prompt + "Instruction: Name an animal.\nResponse:"], params, batch_size=1, seed=0)
    assert completion.finish_reason == "stop"
    assert "Instruction" not in completion.text and completion.text
    assert completion.completion_tokens < 30


def test_length_finish_reason_and_skip_for_resume(tiny_model):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=4, stop_sequences=["\x00"])
    seen = []
    results, stats = gen.generate(PROMPTS, params, batch_size=2, seed=0, skip={1, 3},
                                  on_batch=lambda idx, comps: seen.extend(idx))  # fmt: skip
    assert results[1] is None and results[3] is None
    assert sorted(seen) == [0, 2, 4] and stats.rows == 3
    for r in (results[0], results[2], results[4]):
        assert r.finish_reason in ("length", "eos")
        assert r.completion_tokens <= 4


def test_truncate_at_earliest_stop():
    assert truncate_at_stop("a\nQ: b\nInstruction c", ["\nInstruction", "\nQ:"]) == ("a", True)
    assert truncate_at_stop("plain", ["\nQ:"]) == ("plain", False)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    params = SamplingParams(temperature=1.0, top_p=0.5, repetition_penalty=1.0)
    draws = {int(sample_next(logits, torch.zeros((1, 1), dtype=torch.long), params, torch.tensor([u]))) for u in
             torch.linspace(0, 0.999, 50).tolist()}  # fmt: skip
    assert draws == {0}
    params = SamplingParams(temperature=1.0, top_p=0.85, repetition_penalty=1.0)
    draws = {int(sample_next(logits, torch.zeros((1, 1), dtype=torch.long), params, torch.tensor([u]))) for u in
             torch.linspace(0, 0.999, 50).tolist()}  # fmt: skip
    assert draws == {0, 1}


# --- the decode loop: shared prefix, slots, compaction, stop checks (core/decoding.py) -------------
def few_shot_prompts(count: int) -> list[str]:
    """Response prompts as the pipeline builds them: one few-shot block shared by every prompt."""
    shots = prompts.load_pool(prompts.QA_SHOTS)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    return [prompts.response_prompt(pool[i * 7].instruction, shots) for i in range(count)]


def reference_completion(lm, prompt: str, params: SamplingParams, seed: int, index: int, cap: int) -> str:
    """The plainest correct decoder: the whole sequence through the model at every step, no cache."""
    tokenizer, model = lm.tokenizer, lm.model
    ids = tokenizer(prompt)["input_ids"]
    eos = lm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    generated: list[int] = []
    with torch.inference_mode():
        for step in range(cap):
            sequence = torch.tensor([ids + generated])
            logits = model(input_ids=sequence).logits[:, -1]
            uniform = torch.rand(index + 1, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))[index:]
            token = int(sample_next(logits, sequence, params, uniform))
            if token in eos:
                break
            generated.append(token)
            tail = tokenizer.decode(generated[-STOP_WINDOW_TOKENS:], skip_special_tokens=True)
            if any(s in tail for s in params.stop_sequences):
                break
    text, _ = truncate_at_stop(tokenizer.decode(generated, skip_special_tokens=True), params.stop_sequences)
    return text.strip()


def test_shared_blocks_are_found_per_group_and_leave_every_prompt_a_token():
    a, b = list(range(100, 120)), list(range(200, 230))
    blocks = shared_prefixes([a + [1, 2], b + [7], [9] * 5, a + [3], b + [8, 9], a + [4, 5, 6]], width=40)
    assert blocks.heads.tolist() == [20, 30, 0, 20, 30, 20]
    assert blocks.block.tolist()[2] == -1 and len(blocks.rows) == 2
    assert blocks.block[0] == blocks.block[3] == blocks.block[5] != blocks.block[1] == blocks.block[4]
    assert blocks.rows[blocks.block[0]] in (0, 3, 5) and blocks.rows[blocks.block[1]] in (1, 4)
    assert shared_prefixes([list(range(1, 11)), list(range(1, 10)) + [11]], 10).heads.tolist() == [9, 9]
    assert shared_prefixes([list(range(12)), list(range(12))], 12).heads.tolist() == [11, 11]  # one token each
    assert shared_prefixes([list(range(12)), [0, 1, 2] + list(range(20))], 23).heads.tolist() == [0, 0]  # 3 tokens
    assert shared_prefixes([], 5).heads.tolist() == []


def test_a_long_prompt_that_shares_nothing_gets_a_block_of_its_own_instead_of_setting_every_rows_rest():
    block = list(range(100, 120))
    sequences = [block + [1], block + [2], block + [3], block + [4], list(range(300, 321))]
    blocks = shared_prefixes(sequences, 21)
    assert blocks.heads.tolist() == [20] * 5  # every row prefills one token of its own after the blocks
    assert len(set(blocks.block[:4].tolist())) == 1 and blocks.block[4] != blocks.block[0]
    assert blocks.rows[blocks.block[4]] == 4


@pytest.mark.parametrize("seed", range(30))
def test_shared_blocks_are_true_prefixes_that_fit_the_slots_and_never_cost_more(seed):
    rng = random.Random(seed)
    starts = [[rng.randrange(50) for _ in range(rng.randint(0, 40))] for _ in range(rng.randint(1, 4))]
    sequences = [rng.choice(starts) + [rng.randrange(50) for _ in range(rng.randint(1, 30))] for _ in range(12)]
    width = max(map(len, sequences)) + rng.randint(0, 10)
    heads, block, rows = shared_prefixes(sequences, width)
    for row, (head, of) in enumerate(zip(heads.tolist(), block.tolist(), strict=True)):
        assert head < len(sequences[row]) and (head == 0) == (of == -1)
        if of >= 0:
            source = rows[of]
            assert sequences[row][:head] == sequences[source][:head] and heads[source] == head
    rest = max(len(s) - h for s, h in zip(sequences, heads, strict=True))
    assert heads.max() + rest <= width
    # the blocks once (as a batch) and every row at the longest rest: never more than sharing nothing
    assert len(rows) * heads.max() + len(sequences) * rest <= len(sequences) * max(map(len, sequences))


def test_aligned_rows_end_every_sequence_at_one_column():
    rows = aligned_rows([[5, 6, 7], [8], [9, 10]], end=4, width=6, filler=np.array([1, 2, 3]))
    assert rows.tolist() == [[1, 5, 6, 7, 1, 1], [2, 2, 2, 8, 2, 2], [3, 3, 9, 10, 3, 3]]
    assert aligned_rows([[4, 5], [6]], end=2, width=2, filler=np.array([0, 0])).tolist() == [[4, 5], [0, 6]]
    left = aligned_rows([[4, 5], [6]], end=np.array([2, 1]), width=3, filler=np.array([0, 9]))
    assert left.tolist() == [[4, 5, 0], [6, 9, 9]]


def test_few_shot_prompts_share_their_block(tiny_model):
    encoded = tiny_model.tokenizer(few_shot_prompts(4))["input_ids"]
    shots_tokens = len(tiny_model.tokenizer(prompts.shots_document(prompts.load_pool(prompts.QA_SHOTS)))["input_ids"])
    blocks = shared_prefixes(encoded, max(map(len, encoded)))
    assert len(blocks.rows) == 1 and blocks.heads.min() >= shots_tokens - 2  # the whole shot block, about


def grouped_instruction_prompts(count: int, group_size: int) -> list[str]:
    return prompts.instruction_prompts(prompts.load_pool(prompts.TRAIN_POOL), random.Random(5), count, group_size)


def test_an_instruction_prompt_group_shares_its_shots(tiny_model):
    encoded = tiny_model.tokenizer(grouped_instruction_prompts(6, group_size=3))["input_ids"]
    blocks = shared_prefixes(encoded, max(map(len, encoded)))
    header = len(tiny_model.tokenizer(prompts.INSTRUCTION_HEADER)["input_ids"])
    assert len(set(blocks.block[:3])) == 1 and len(set(blocks.block[3:])) == 1 and blocks.block[0] != blocks.block[3]
    assert blocks.heads.min() > header + 2 * prompts.INSTRUCTION_SHARED_SHOTS  # the shots, not only the header


@pytest.fixture(scope="module")
def peaked_model(tiny_model):
    """The tiny model with its final norm scaled up: random weights give near-flat next-token
    distributions, where a float rounding difference alone changes a draw; a trained model's are peaked."""
    model = copy.deepcopy(tiny_model.model)
    model.get_decoder().norm.weight.data.fill_(60.0)
    return SimpleNamespace(model=model, tokenizer=tiny_model.tokenizer)


@pytest.mark.parametrize("blocks", ["one block", "several blocks"])
def test_sampled_completions_match_a_plain_reference_decoder(peaked_model, blocks):
    """Shared blocks computed once (one few-shot document over two batches of a call; or, in one batch, two
    instruction-prompt groups, a response document and a prompt of its own), slots, rows leaving at
    different lengths: the same text as the whole sequence recomputed at every step, for the same noise."""
    if blocks == "one block":
        texts, batch_size = few_shot_prompts(6), 4
    else:
        texts = [*grouped_instruction_prompts(8, group_size=4), *few_shot_prompts(2), "A prompt of its own:"]
        batch_size = len(texts)
        encoded = peaked_model.tokenizer(texts)["input_ids"]
        assert len(shared_prefixes(encoded, max(map(len, encoded))).rows) == 3, "the batch this test is about"
    caps = [2, 9, 4, 12, 3, 7, 5, 11, 6, 8, 10][: len(texts)]
    params = SamplingParams(temperature=0.9, top_p=0.95, repetition_penalty=1.0, max_new_tokens=12)
    gen = Generator(peaked_model.model, peaked_model.tokenizer)
    ours, _ = gen.generate(texts, params, batch_size=batch_size, seed=11, length_caps=caps)
    expected = [reference_completion(peaked_model, text, params, 11, i, cap)
                for i, (text, cap) in enumerate(zip(texts, caps, strict=True))]  # fmt: skip
    assert [c.text for c in ours] == expected
    assert len({c.text for c in ours}) > 1
    assert all(c.completion_tokens <= cap for c, cap in zip(ours, caps, strict=True))


def test_greedy_with_shared_prefix_matches_transformers_generate(tiny_model):
    texts = few_shot_prompts(3)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.3, max_new_tokens=8, stop_sequences=["\x00"])
    ours, _ = Generator(tiny_model.model, tiny_model.tokenizer).generate(texts, params, batch_size=3, seed=0)
    for prompt, completion in zip(texts, ours, strict=True):
        enc = tiny_model.tokenizer(prompt, return_tensors="pt")
        out = tiny_model.model.generate(**enc, max_new_tokens=8, do_sample=False, repetition_penalty=1.3)
        assert completion.text == tiny_model.tokenizer.decode(out[0, enc["input_ids"].shape[1] :],
                                                              skip_special_tokens=True).strip()  # fmt: skip


def test_stop_watch_agrees_with_decoding_every_step(tiny_model):
    """The watch decodes only rows that may have just stopped; it must stop exactly where checking
    every row at every step would, including across newlines and multi-byte characters."""
    tokenizer = tiny_model.tokenizer
    stops = ["\nInstruction", "\nQ:", "\n###"]
    pieces = ["Sure", " thing", ".", "\n", "\n\n", "Instruction", "Q", ":", "###", " é", "日本", "🙂", " ok", "#"]
    vocab = [t for p in pieces for t in tokenizer(p, add_special_tokens=False)["input_ids"]]
    byte_tokens = [tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "🙂".encode()]
    vocab += [t for t in byte_tokens if t != tokenizer.unk_token_id]
    rng = random.Random(0)
    stops_seen = 0
    for _ in range(300):
        watch = StopWatch(tokenizer, stops, STOP_WINDOW_TOKENS)
        state, tokens = watch.new_row(), []
        for _ in range(30):
            tokens.append(rng.choice(vocab))
            tail = tokenizer.decode(tokens[-STOP_WINDOW_TOKENS:], skip_special_tokens=True)
            expected = any(s in tail for s in stops)
            assert watch.stopped(state, tokens) == expected, tokens
            if expected:
                stops_seen += 1
                break
    assert stops_seen > 50  # the random texts did reach the stop sequences


def test_token_fetch_keeps_the_step_it_was_given():
    """The decode loop queues the next step before it reads this one's tokens, and a step writes its tokens
    into the same buffer every time: a fetch must hold the values of the step it was made for."""
    sampled = torch.tensor([5, 7, 11])
    fetched = TokenFetch(sampled[:2])
    sampled.copy_(torch.tensor([1, 2, 3]))  # the next step overwrites the buffer
    assert fetched.tolist() == [5, 7]
