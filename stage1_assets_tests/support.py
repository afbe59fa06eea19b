"""Test data and helpers shared by more than one test module (a test module never imports another).

The reliability tests' own helpers (synthetic shards, readers, Dagster runs in subprocesses) live in
`reliability/support.py`; fixtures live in the `conftest.py` files.
"""

from __future__ import annotations

# Prompts of very different lengths, so that a batch of them needs padding and the longest one decides
# the batch's memory estimate (test_generation, reliability/test_disk_and_memory).
PROMPTS = [
    "The capital of France is",
    "Instruction: List three fruits.\nResponse:",
    "A much longer prompt that needs left padding when it shares a batch with the short ones above, so",
    "1, 2, 3,",
    "Once upon a time",
]

# Instruction-response pairs as the SFT dataset holds them (test_training, reliability/test_crash_safety).
ROWS = [
    {"instruction": "Name a primary color.", "response": "Red is a primary color."},
    {"instruction": "What is 2 + 3?", "response": "2 + 3 = 5."},
    {"instruction": "Give a synonym for happy.", "response": "Joyful."},
    {"instruction": "What do bees make?", "response": "Bees make honey and wax."},
    {"instruction": "Name a large ocean.", "response": "The Pacific Ocean."},
    {"instruction": "What is the opposite of cold?", "response": "Hot."},
    {"instruction": "How many legs does a spider have?", "response": "A spider has eight legs."},
    {"instruction": "Which planet do we live on?", "response": "We live on Earth."},
]


def exemplar_overlaps(texts: list[str]) -> tuple[dict[int, tuple[int, str]], list[str], list[str]]:
    """How a benchmark's `texts` collide with each other and with the exemplar instructions (test_instruction_following,
    test_reference_qa): (duplicates among `texts`, texts that overlap an exemplar, exemplars that overlap a text)."""
    from stage1_assets.core import dedup, prompts
    from stage1_assets.core.merge import TestSetIndex

    exemplars = [e.instruction for pool in (prompts.TRAIN_POOL, prompts.TEST_POOL, prompts.QA_SHOTS)
                 for e in prompts.load_pool(pool)]  # fmt: skip
    exemplar_index, text_index = TestSetIndex(exemplars), TestSetIndex(texts)
    return (
        dedup.deduplicate(texts)[1],
        [t for t in texts if exemplar_index.overlap(t) or exemplar_index.near_duplicate(t)],
        [e for e in exemplars if text_index.overlap(e) or text_index.near_duplicate(e)],
    )
