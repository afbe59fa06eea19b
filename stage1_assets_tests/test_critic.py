import random

import numpy as np
import pytest
import torch

from stage1_assets.core import critic as critic_module
from stage1_assets.core import prompts
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.critic import (
    COMPILE_MIN_PAIRS,
    PACK_BLOCK,
    PACKED_ATTENTION,
    Critic,
    discrimination,
    pack_layout,
    pack_rows,
    pack_tokens,
    packed_block_mask,
    shuffled_control,
)
from stage1_assets.core.generation import Generator
from stage1_assets.core.pairs import GenerationParams, generate_instructions, respond_and_score

SHOTS = prompts.load_pool(prompts.QA_SHOTS)


def naive_pmi(lm, instruction, response):
    def mean_logprob(context):
        ctx = lm.tokenizer(context)["input_ids"]
        resp = lm.tokenizer(" " + response, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(torch.tensor([ctx + resp])).logits[0].float(), -1)
        return sum(logprobs[len(ctx) + k - 1, t].item() for k, t in enumerate(resp)) / len(resp)

    return mean_logprob(prompts.response_prompt(instruction, SHOTS)) - mean_logprob(prompts.unconditional_prompt(SHOTS))


def test_batched_prefix_cached_score_equals_naive_computation(tiny_model):
    pairs = [("Name a fruit.", "An apple."), ("What is 2 + 2?", "It is 4, because two and two make four."),
             ("Say hi.", "Hi!")]  # fmt: skip
    scores = Critic(tiny_model.model, tiny_model.tokenizer, SHOTS).score(pairs, threshold=0.0, batch_size=2)
    for (instruction, response), score in zip(pairs, scores, strict=True):
        assert score.score == pytest.approx(naive_pmi(tiny_model, instruction, response), abs=1e-4)
        assert score.accepted == (score.score >= 0.0)


def test_shuffled_control_is_a_derangement():
    pairs = [(f"i{k}", f"r{k}") for k in range(7)]
    control = shuffled_control(pairs, seed=3)
    assert [i for i, _ in control] == [i for i, _ in pairs]
    assert all(r != f"r{k}" for k, (_, r) in enumerate(control))
    assert sorted(r for _, r in control) == sorted(r for _, r in pairs)


@pytest.mark.slow
def test_critic_discriminates_real_from_shuffled_on_the_embedded_model(real_model):
    """The acceptance of shuffled pairs must be at most half that of real pairs."""
    generator = Generator(real_model.model, real_model.tokenizer)
    instructions, _ = generate_instructions(
        generator, 24, seed=11, pool=prompts.load_pool(prompts.TRAIN_POOL), params=InstructionSampling(), batch_size=24
    )
    params = GenerationParams(InstructionSampling(), ResponseSampling(), CriticParams(), batch_size=24)
    rows = respond_and_score(
        real_model, instructions, [str(k) for k in range(24)], params, seed=12, generator=generator
    )
    threshold = CriticParams().confidence_threshold
    control = Critic(real_model.model, real_model.tokenizer, SHOTS).score(
        shuffled_control([(r["instruction"], r["response"]) for r in rows], seed=5), threshold
    )
    disc = discrimination([r["critic_score"] for r in rows], [c.score for c in control], threshold)
    print("critic discrimination on the embedded model:", disc.as_dict())
    assert disc.real_acceptance > 0.25
    assert disc.shuffled_acceptance <= disc.real_acceptance / 2
    assert disc.rank_agreement >= 0.8
    assert disc.real_mean_score > disc.shuffled_mean_score + 0.5


# --- packed scoring (core/critic.py: packed_block_mask, pack_rows) --------------------------------

LONG_PAIRS = [("Name a fruit.", "An apple."), ("What is 2 + 2?", "It is 4, because two and two make four."),
              ("Say hi.", "Hi!"), ("Explain rain.", "Water vapour condenses into droplets that fall. " * 4),
              ("List two colours.", "Red and blue.")]  # fmt: skip


@pytest.fixture
def narrow_window(tiny_model):
    """The tiny model with a 24-token sliding window, so rows and the prefix cross its edge."""
    attention = [layer.self_attn for layer in tiny_model.model.model.layers if layer.self_attn.sliding_window]
    previous = tiny_model.model.config.sliding_window
    for window in (24, previous):
        tiny_model.model.config.sliding_window = window
        for module in attention:
            module.sliding_window = window
        if window != previous:
            yield tiny_model


@pytest.mark.parametrize("window", ["model's own (512)", "narrow (24)"])
def test_packed_scores_equal_padded_scores(tiny_model, request, window):
    lm = request.getfixturevalue("narrow_window") if window.startswith("narrow") else tiny_model
    padded = Critic(lm.model, lm.tokenizer, SHOTS, packed=False).score(LONG_PAIRS, 0.0, batch_size=2)
    critic = Critic(lm.model, lm.tokenizer, SHOTS, packed=True)
    packed = critic.score(LONG_PAIRS, 0.0, batch_size=2)
    for a, b in zip(padded, packed, strict=True):
        assert b.cond_logprob == pytest.approx(a.cond_logprob, abs=1e-4)
        assert b.uncond_logprob == pytest.approx(a.uncond_logprob, abs=1e-4)
    assert lm.model.config._attn_implementation != PACKED_ATTENTION  # the model is handed back as it was
    assert not any(hasattr(layer.self_attn, "stage1_prefix") for layer in lm.model.model.layers)


def test_packed_scores_equal_the_naive_computation(tiny_model):
    scores = Critic(tiny_model.model, tiny_model.tokenizer, SHOTS, packed=True).score(LONG_PAIRS[:3], 0.0, 1)
    for (instruction, response), score in zip(LONG_PAIRS[:3], scores, strict=True):
        assert score.score == pytest.approx(naive_pmi(tiny_model, instruction, response), abs=1e-4)


def test_calls_stay_padded_on_cpu_and_below_the_compile_threshold(tiny_model):
    critic = Critic(tiny_model.model, tiny_model.tokenizer, SHOTS)
    assert critic.supports_packing and not critic.packs(COMPILE_MIN_PAIRS * 10)  # CPU: never compiled
    assert Critic(tiny_model.model, tiny_model.tokenizer, SHOTS, packed=True).packs(1)


def test_packing_is_refused_for_an_architecture_without_layer_type_masks(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.model.config, "model_type", "llama")
    with pytest.raises(ValueError, match="packed scoring supports"):
        Critic(tiny_model.model, tiny_model.tokenizer, SHOTS, packed=True)


def test_pack_rows_places_every_row_once_within_the_budget():
    rng = random.Random(0)
    lengths = [rng.randint(3, 90) for _ in range(500)]
    rows = [(k, ([0] * 2, [0] * (length - 2))) for k, length in enumerate(lengths)]
    tokens = pack_tokens(lengths, rows_per_batch=64)
    assert tokens & (tokens - 1) == 0 and tokens >= 64 * sum(lengths) / len(lengths)
    packs = list(pack_rows(rows, tokens))
    assert sorted(k for _, run in packs for k, _ in run) == list(range(500))
    assert all(size == tokens and sum(lengths[k] for k, _ in run) <= tokens for size, run in packs)
    assert sum(tokens - sum(lengths[k] for k, _ in run) for _, run in packs[:-1]) < 90 * len(packs)  # full, bar one row


def test_a_row_longer_than_the_budget_raises_it_for_the_rest():
    rows = [(0, ([0], [0] * 99)), (1, ([0], [0] * 299)), (2, ([0], [0] * 99))]
    assert [(size, [k for k, _ in run]) for size, run in pack_rows(rows, 128)] == [(128, [0]), (512, [1, 2])]


def test_packed_scoring_takes_a_long_row_after_the_first_chunk(tiny_model, monkeypatch):
    """The packed batch size comes from the first chunk of rows; a longer row later must still fit."""
    monkeypatch.setattr(critic_module, "ENCODE_CHUNK", 2)
    pairs = [*LONG_PAIRS[:2], ("Describe the sea.", "Waves roll onto the shore and back again. " * 20)]
    padded = Critic(tiny_model.model, tiny_model.tokenizer, SHOTS, packed=False).score(pairs, 0.0, batch_size=1)
    packed = Critic(tiny_model.model, tiny_model.tokenizer, SHOTS, packed=True).score(pairs, 0.0, batch_size=1)
    assert packed[2].response_tokens > 128  # longer than the first chunk's batch (4 rows, ~20 tokens each)
    for a, b in zip(padded, packed, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-4)


@pytest.mark.parametrize("window", [None, 40, 300])
def test_block_mask_tiles_agree_with_the_element_mask(window):
    """Tiles marked full must be visible everywhere and skipped tiles nowhere: the compiled kernel trusts
    both without evaluating the mask (the CPU reference applies the mask everywhere, so scores alone
    would not catch a wrong tile)."""
    rng = random.Random(1)
    prefix_len, tokens = 300, 1024
    lengths = []
    while sum(lengths) < tokens // 2:  # the rest is filler, as in the last batch of a call
        lengths.append(rng.randint(5, 100))
    lengths = np.array(lengths)
    layout = pack_layout(lengths, lengths // 3, tokens)
    row_of, offsets, row_start = (torch.from_numpy(a) for a in (layout.row_of, layout.offsets, layout.row_start))
    mask = packed_block_mask(row_of, offsets, row_start, prefix_len, window)
    q, kv = torch.meshgrid(torch.arange(tokens), torch.arange(prefix_len + tokens), indexing="ij")
    dense = mask.mask_mod(0, 0, q, kv)
    dense = torch.nn.functional.pad(dense, (0, -(prefix_len + tokens) % PACK_BLOCK))
    tiles = dense.view(tokens // PACK_BLOCK, PACK_BLOCK, -1, PACK_BLOCK)
    any_visible, all_visible = tiles.any(dim=(1, 3)), tiles.all(dim=(1, 3))
    listed = torch.zeros_like(any_visible)
    full = torch.zeros_like(any_visible)
    for i in range(tokens // PACK_BLOCK):
        listed[i, mask.kv_indices[0, 0, i, : mask.kv_num_blocks[0, 0, i]].long()] = True
        full[i, mask.full_kv_indices[0, 0, i, : mask.full_kv_num_blocks[0, 0, i]].long()] = True
    assert not (listed & full).any()
    assert bool(all_visible[full].all())
    assert not (any_visible & ~(listed | full)).any()  # every tile holding a visible key is visited
    # and the marking saves work: prefix tiles in full view skip the mask, far ones are not visited
    assert bool(full.any()) == (window is None or window > 2 * PACK_BLOCK)
    assert bool((~(listed | full))[:, : prefix_len // PACK_BLOCK].any()) == (window == 40)
    # a tile of filler sees the prefix and itself (two key tiles, as the prefix shifts them), not earlier filler
    prefix_tiles = -(-prefix_len // PACK_BLOCK)
    filler = torch.arange(lengths.sum() // PACK_BLOCK + 1, tokens // PACK_BLOCK)
    assert len(filler) >= 3 and bool(((listed | full)[filler].sum(dim=1) <= prefix_tiles + 2).all())
