import random

import pytest
import torch

from stage1_assets.core.train_step import IGNORE, ChunkStep, loss_sum, pack_chunks, pack_rows
from stage1_assets.core.training import Example, TrainingParams, attach_lora


def varied_examples(n: int, seed: int, vocab: int = 1000, longest: int = 40) -> list[Example]:
    """Random token sequences with a prompt part (no loss) and a response part, lengths 3..longest."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(3, longest)
        prompt = rng.randint(1, length - 1)
        ids = [2] + [rng.randrange(4, vocab) for _ in range(length - 1)]
        examples.append(Example(ids, [IGNORE] * prompt + ids[prompt:], truncated=False))
    return examples


def padded_loss(model, examples: list[Example], pad_id: int) -> torch.Tensor:
    """The reference: a right-padded batch through the model's own forward and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss


@pytest.fixture(scope="module")
def short_window_model(tiny_model):
    """The tiny model with a sliding window shorter than the sequences, so the window mask matters."""
    from transformers import AutoModelForCausalLM

    config = tiny_model.model.config.__class__(**tiny_model.model.config.to_dict())
    config.sliding_window = 8
    torch.manual_seed(1)
    return AutoModelForCausalLM.from_config(config).float().eval()


def test_first_fit_fills_rows_and_places_every_sequence_once():
    rng = random.Random(3)
    lengths = [rng.randint(5, 256) for _ in range(300)]
    rows = pack_rows(lengths, 256)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    assert len(rows) <= 1.15 * sum(lengths) / 256  # nearly full rows, unlike one padded row per sequence


def test_chunks_keep_each_sequence_whole_with_its_own_positions_and_targets():
    examples = varied_examples(40, seed=4)
    chunks = pack_chunks(examples, rows=3, width=48, pad_id=0, fixed_shape=True)
    assert {tuple(c.input_ids.shape) for c in chunks} == {(3, 48)}
    assert sum(c.tokens for c in chunks) == sum(len(e.input_ids) for e in examples)
    assert sum(c.labelled for c in chunks) == sum(sum(t != IGNORE for t in e.labels[1:]) for e in examples)
    found = []
    for c in chunks:
        for row in range(3):
            for sequence in c.sequence_ids[row].unique():
                where = c.sequence_ids[row] == sequence
                assert torch.equal(c.position_ids[row][where], torch.arange(int(where.sum())))
                found.append((c.input_ids[row][where].tolist(), c.targets[row][where].tolist()))
    for e in examples:  # every example appears whole, predicting its own next tokens, the last one nothing
        assert (e.input_ids, e.labels[1:] + [IGNORE]) in found
    trimmed = pack_chunks(examples, rows=3, width=48, pad_id=0, fixed_shape=False)
    assert trimmed[-1].input_ids.shape[0] <= 3 and sum(c.tokens for c in trimmed) == sum(c.tokens for c in chunks)
    with pytest.raises(ValueError, match="longer than the packing width 16"):
        pack_chunks(examples, rows=3, width=16, pad_id=0, fixed_shape=True)


@pytest.mark.parametrize("labelled_only", [True, False])
def test_packed_loss_equals_the_padded_batch_loss(short_window_model, labelled_only):
    """Packing (several sequences per row, sliding window shorter than them) changes no sequence's loss."""
    examples = varied_examples(24, seed=5, vocab=short_window_model.config.vocab_size)
    with torch.no_grad():
        expected = padded_loss(short_window_model, examples, pad_id=0)
        chunks = pack_chunks(examples, rows=4, width=64, pad_id=0, fixed_shape=not labelled_only)
        total = sum(loss_sum(short_window_model, c.tensors(), labelled_only) for c in chunks)
    assert float(total) / sum(c.labelled for c in chunks) == pytest.approx(float(expected), rel=1e-5)


def test_chunk_step_gradient_equals_the_padded_batch_gradient(short_window_model):
    model = attach_lora(short_window_model, TrainingParams(lora_dropout=0.0))
    examples = varied_examples(20, seed=6, vocab=short_window_model.config.vocab_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    reference = torch.autograd.grad(padded_loss(model, examples, pad_id=0), trainable)
    step = ChunkStep(model, graphed=False)
    chunks = pack_chunks(examples, rows=2, width=64, pad_id=0, fixed_shape=False)
    labelled = sum(c.labelled for c in chunks)
    assert len(chunks) > 1  # the gradient accumulates over chunks
    for chunk in chunks:
        step(chunk, 1.0 / labelled)
    for p, expected in zip(trainable, reference, strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)
    assert any(float(g.abs().max()) > 0 for g in reference)  # a zero gradient would agree trivially
