"""Batched continuation log-probabilities (core/scoring.py): both batching paths against a naive forward pass."""

import random

import numpy as np
import pytest
import torch

from stage1_assets.core import prompts, scoring
from stage1_assets.core.scoring import (
    COMPILE_MIN_ROWS,
    PACK_BLOCK,
    PACKED_ATTENTION,
    LogprobScorer,
    pack_layout,
    pack_rows,
    pack_tokens,
    packed_block_mask,
)

DOCUMENT = prompts.shots_document(prompts.load_pool(prompts.QA_SHOTS))
ROWS = [
    ("Instruction: Name a fruit.\nResponse:", " An apple."),
    ("Instruction: What is 2 + 2?\nResponse:", " It is 4, because two and two make four."),
    ("Response:", " Hi!"),
    ("Instruction: Explain rain.\nResponse:", " Water vapour condenses into droplets that fall." * 4),
    ("Instruction: List two colours.\nResponse:", " Red and blue."),
]


def naive_logprobs(lm, cue, continuation):
    context = lm.tokenizer(DOCUMENT + cue)["input_ids"]
    tokens = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(torch.tensor([context + tokens])).logits[0].float(), -1)
    return np.array([logprobs[len(context) + k - 1, t].item() for k, t in enumerate(tokens)])


@pytest.mark.parametrize("packed", [False, True])
def test_every_token_matches_a_naive_forward_pass(tiny_model, packed):
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT, packed=packed)
    for (cue, continuation), got in zip(ROWS, scorer.continuation_logprobs(ROWS, batch_size=2), strict=True):
        np.testing.assert_allclose(got, naive_logprobs(tiny_model, cue, continuation), atol=1e-4)


def test_token_ids_and_text_give_the_same_result(tiny_model):
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT)
    as_ids = [(cue, scorer.encode([text])[0]) for cue, text in ROWS]
    for a, b in zip(scorer.continuation_logprobs(ROWS), scorer.continuation_logprobs(as_ids), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_an_empty_cue_is_refused(tiny_model):
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT)
    with pytest.raises(ValueError, match="empty cue"):
        scorer.continuation_logprobs([("", " text")])


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
def test_packed_equals_padded(tiny_model, request, window):
    lm = request.getfixturevalue("narrow_window") if window.startswith("narrow") else tiny_model
    padded = LogprobScorer(lm.model, lm.tokenizer, DOCUMENT, packed=False).continuation_logprobs(ROWS, 2)
    packed = LogprobScorer(lm.model, lm.tokenizer, DOCUMENT, packed=True).continuation_logprobs(ROWS, 2)
    for a, b in zip(padded, packed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert lm.model.config._attn_implementation != PACKED_ATTENTION  # the model is handed back as it was
    assert not any(hasattr(layer.self_attn, "stage1_prefix") for layer in lm.model.model.layers)


def test_calls_stay_padded_on_cpu_and_below_the_compile_threshold(tiny_model):
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT)
    assert scorer.supports_packing and not scorer.packs(COMPILE_MIN_ROWS * 10)  # CPU: never compiled
    assert LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT, packed=True).packs(1)


def test_packing_is_refused_for_an_architecture_without_layer_type_masks(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.model.config, "model_type", "llama")
    with pytest.raises(ValueError, match="packed scoring supports"):
        LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT, packed=True)


def test_pack_rows_places_every_row_once_within_the_budget():
    rng = random.Random(0)
    lengths = [rng.randint(3, 90) for _ in range(500)]
    rows = [(k, ([0] * 2, [0] * (length - 2), 0)) for k, length in enumerate(lengths)]
    tokens = pack_tokens(lengths, rows_per_batch=64)
    assert tokens & (tokens - 1) == 0 and tokens >= 64 * sum(lengths) / len(lengths)
    packs = list(pack_rows(rows, tokens))
    assert sorted(k for _, run in packs for k, _ in run) == list(range(500))
    assert all(size == tokens and sum(lengths[k] for k, _ in run) <= tokens for size, run in packs)
    assert sum(tokens - sum(lengths[k] for k, _ in run) for _, run in packs[:-1]) < 90 * len(packs)  # full, bar one row


def test_a_row_longer_than_the_budget_raises_it_for_the_rest():
    rows = [(0, ([0], [0] * 99, 0)), (1, ([0], [0] * 299, 0)), (2, ([0], [0] * 99, 0))]
    assert [(size, [k for k, _ in run]) for size, run in pack_rows(rows, 128)] == [(128, [0]), (512, [1, 2])]


def test_packed_scoring_takes_a_long_row_after_the_first_chunk(tiny_model, monkeypatch):
    """The packed batch size comes from the first chunk of rows; a longer row later must still fit."""
    monkeypatch.setattr(scoring, "ENCODE_CHUNK", 2)
    rows = [*ROWS[:2], ("Instruction: Describe the sea.\nResponse:", " Waves roll onto the shore and back. " * 20)]
    padded = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT, packed=False).continuation_logprobs(rows)
    packed = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT, packed=True).continuation_logprobs(
        rows, batch_size=1
    )
    assert len(packed[2]) > 128  # longer than the first chunk's batch
    for a, b in zip(padded, packed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_packed_layout_indexes_each_continuation_token():
    layout = pack_layout(np.array([5, 4]), np.array([2, 3]), tokens=12)
    assert layout.response_row.tolist() == [0, 0, 0, 1]
    assert layout.token_index.tolist() == [0, 1, 2, 0]
    assert layout.predicting.tolist() == [1, 2, 3, 7]  # the state before each continuation token


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
