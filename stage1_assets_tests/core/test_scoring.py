"""Batched continuation log-probabilities (core/scoring.py) against a naive forward pass."""

import numpy as np
import pytest
import torch

from stage1_assets.core import prompts
from stage1_assets.core.scoring import LogprobScorer

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


@pytest.mark.parametrize("window", ["model's own (512)", "narrow (24)"])
def test_every_token_matches_a_naive_forward_pass(tiny_model, request, window):
    lm = request.getfixturevalue("narrow_window") if window.startswith("narrow") else tiny_model
    scorer = LogprobScorer(lm.model, lm.tokenizer, DOCUMENT)
    for (cue, continuation), got in zip(ROWS, scorer.continuation_logprobs(ROWS, batch_size=2), strict=True):
        np.testing.assert_allclose(got, naive_logprobs(lm, cue, continuation), atol=1e-4)


def test_token_ids_and_text_give_the_same_result(tiny_model):
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT)
    as_ids = [(cue, scorer.encode([text])[0]) for cue, text in ROWS]
    for a, b in zip(scorer.continuation_logprobs(ROWS), scorer.continuation_logprobs(as_ids), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_an_empty_cue_is_refused(tiny_model):
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT)
    with pytest.raises(ValueError, match="empty cue"):
        scorer.continuation_logprobs([("", " text")])


def test_a_batch_that_runs_out_of_memory_is_scored_again_in_halves(tiny_model, caplog):
    """A batch over the device's memory (each row holds its own copy of the document's keys and values) is
    retried at half the batch size until it fits, with the same scores; other errors are not retried."""
    scorer = LogprobScorer(tiny_model.model, tiny_model.tokenizer, DOCUMENT)
    expected = scorer.continuation_logprobs(ROWS, batch_size=1)
    forward, sizes = scorer._token_logprobs_of, []

    def allocator_limit(batch):
        sizes.append(len(batch.ids))
        if len(batch.ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 15.00 GiB")
        return forward(batch)

    scorer._token_logprobs_of = allocator_limit
    got = scorer.continuation_logprobs(ROWS, batch_size=8)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert sizes[:2] == [5, 4] and max(sizes[2:]) == 2  # batches of 8, then 4, then 2: the last fit
    assert "ran out of memory" in caplog.text and "batches of 2" in caplog.text

    scorer._token_logprobs_of = lambda batch: (_ for _ in ()).throw(RuntimeError("device-side assert"))
    with pytest.raises(RuntimeError, match="device-side assert"):
        scorer.continuation_logprobs(ROWS, batch_size=8)


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
