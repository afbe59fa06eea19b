"""The SQL overlap audit finds what the merge filter is meant to remove, by its own means."""

import json
import random

import pytest

from stage1_assets.core.merge import TestSetIndex
from stage1_assets.core.overlap_audit import audit_overlap

TESTS = [
    "Explain why leaves change color in autumn.",
    "What is the capital of France?",
    "Describe in detail the main steps a person should follow in order to bake a loaf of white bread at home.",
]


def write(tmp_path, sft_rows):
    sft, test = tmp_path / "sft.jsonl", tmp_path / "test.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    test.write_text("".join(json.dumps({"id": f"test-{i}", "instruction": t}) + "\n" for i, t in enumerate(TESTS)))
    return sft, test


def row(row_id, instruction, response="An answer."):
    return {"id": row_id, "instruction": instruction, "response": response}


@pytest.mark.parametrize(
    ("sft_row", "field", "why"),
    [
        (row("a", "explain WHY leaves change color in autumn!"), "instruction", "identical after normalisation"),
        (
            row("b", "Tell me about cats.", "Cats nap. What is the capital of France? Paris."),
            "response",
            "shares a word n-gram",
        ),
        (
            row(
                "c",
                "How to bake?",
                "the main steps a person should follow in order to bake a loaf of white bread are simple",
            ),
            "response",
            "shares a word n-gram",
        ),
        (row("d", "What is the capital city of France?"), "instruction", "word-set jaccard 0.86"),
    ],
)
def test_each_kind_of_overlap_is_found(tmp_path, sft_row, field, why):
    found = audit_overlap(*write(tmp_path, [sft_row, row("clean", "Name a fruit.")]))
    assert {(f["id"], f["field"], f["why"]) for f in found} >= {(sft_row["id"], field, why)}
    assert all(f["id"] != "clean" for f in found)


def test_clean_data_gives_no_rows(tmp_path):
    rows = [row(f"r{k}", f"Name {k} fruits that grow on trees.", "Apples and pears.") for k in range(5)]
    assert audit_overlap(*write(tmp_path, rows)) == []


def test_audit_agrees_with_the_merge_filter_on_random_texts(tmp_path):
    """Two implementations of one definition: every row the filter flags, the audit flags too."""
    vocabulary = " ".join(TESTS).lower().replace(".", "").replace("?", "").split() + ["cat", "dog", "sun"]
    rng = random.Random(0)
    rows = []
    for k in range(300):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(3, 20))]
        if k % 10 == 0:  # plant a test instruction in some rows
            words[1:1] = TESTS[k % 3].split()
        rows.append(row(f"r{k:03d}", " ".join(words), " ".join(rng.choice(vocabulary) for _ in range(8))))
    index = TestSetIndex(TESTS)
    filtered = {r["id"] for r in rows if index.contamination(r["instruction"], r["response"])}
    audited = {f["id"] for f in audit_overlap(*write(tmp_path, rows))}
    assert len(filtered) >= 30 and filtered == audited
