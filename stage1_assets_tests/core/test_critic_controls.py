"""The labelled critic control set (data/exemplars/critic_controls.jsonl) stays usable.

Each row is one instruction with a known-good answer and six kinds of known-bad answers (wrong,
restated, content_free, runaway, drift, truncated). The dev half chooses critic signals and
thresholds; the heldout half only checks them. These tests keep the set well-formed, disjoint from
the exemplar pools the pipeline learns from and is tested on, and free of shortcuts a critic could
exploit (a variant equal to the good answer, wrong answers systematically longer or shorter).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from stage1_assets.core import dedup
from stage1_assets.core.io import read_jsonl
from stage1_assets.core.merge import TestSetIndex
from stage1_assets.core.prompts import TEMPLATE_DELIMITERS

EXEMPLARS = Path(__file__).resolve().parents[2] / "data" / "exemplars"
CONTROLS = EXEMPLARS / "critic_controls.jsonl"
POOLS = ("train_instructions.jsonl", "test_instructions.jsonl", "qa_shots.jsonl")

VARIANTS = ("wrong", "restated", "content_free", "runaway", "drift", "truncated")
FIELDS = ("id", "split", "category", "instruction", "good", *VARIANTS)
SPLITS = ("dev", "heldout")
CATEGORIES = ("fact", "explanation", "list", "rewrite", "task", "arithmetic", "how-to")
MIN_ROWS = 96
MIN_PER_CATEGORY = 12
# a sentence that ends: . ! or ? optionally followed by closing quotes or brackets
TERMINAL = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_jsonl(CONTROLS, required=FIELDS)


@pytest.fixture(scope="module")
def pool_instructions() -> list[str]:
    return [row["instruction"] for name in POOLS for row in read_jsonl(EXEMPLARS / name, required=("instruction",))]


def test_schema(rows):
    assert len(rows) >= MIN_ROWS
    for row in rows:
        assert set(FIELDS) <= set(row), row.get("id")
        for field in FIELDS:
            assert isinstance(row[field], str) and row[field].strip(), (row["id"], field)
        assert row["split"] in SPLITS, row["id"]
        assert row["category"] in CATEGORIES, row["id"]
    assert len({row["id"] for row in rows}) == len(rows)


def test_splits_and_categories_are_balanced(rows):
    per_split = Counter(row["split"] for row in rows)
    assert all(per_split[s] >= MIN_ROWS // 2 for s in SPLITS), per_split
    assert abs(per_split["dev"] - per_split["heldout"]) <= 2, per_split
    per_category = Counter(row["category"] for row in rows)
    assert all(per_category[c] >= MIN_PER_CATEGORY for c in CATEGORIES), per_category
    both = Counter((row["split"], row["category"]) for row in rows)
    for category in CATEGORIES:
        dev, heldout = both[("dev", category)], both[("heldout", category)]
        assert dev and heldout, (category, dev, heldout)
        assert abs(dev - heldout) <= 1, (category, dev, heldout)


def test_instructions_are_disjoint_from_exemplar_pools(rows, pool_instructions):
    pool_exact = {dedup.normalize(text) for text in pool_instructions}
    index = TestSetIndex(pool_instructions)
    for row in rows:
        instruction = row["instruction"]
        assert dedup.normalize(instruction) not in pool_exact, (row["id"], "exact duplicate of a pool instruction")
        assert index.near_duplicate(instruction) is None, (row["id"], index.near_duplicate(instruction))
        hit = index.overlap(instruction)
        assert hit is None, (row["id"], f"{hit[1]}: {pool_instructions[hit[0]]!r}" if hit else None)


def test_instructions_do_not_duplicate_each_other(rows):
    _, dropped = dedup.deduplicate([row["instruction"] for row in rows])
    assert not dropped, {rows[i]["id"]: (rows[j]["id"], how) for i, (j, how) in dropped.items()}


def test_variants_differ_from_good(rows):
    for row in rows:
        good = dedup.normalize(row["good"])
        for kind in VARIANTS:
            assert dedup.normalize(row[kind]) != good, (row["id"], kind)
        assert row["truncated"].strip() != row["good"].strip(), row["id"]


def test_truncated_stops_mid_sentence(rows):
    for row in rows:
        text = row["truncated"].rstrip()
        assert not TERMINAL.search(text), (row["id"], text[-30:])


def test_wrong_and_good_lengths_are_balanced(rows):
    ratio = statistics.median(len(r["wrong"]) for r in rows) / statistics.median(len(r["good"]) for r in rows)
    assert 0.6 <= ratio <= 1.6, ratio


def test_no_template_delimiters_outside_runaways(rows):
    for row in rows:
        for field in ("instruction", "good", *VARIANTS):
            allowed = ("Instruction:",) if field == "runaway" else ()
            leaked = [d for d in TEMPLATE_DELIMITERS if d in row[field] and d not in allowed]
            assert not leaked, (row["id"], field, leaked)


def test_content_free_answers_are_not_one_template(rows):
    most_common = Counter(row["content_free"].strip().lower() for row in rows).most_common(1)[0]
    assert most_common[1] <= 2, most_common


def test_good_answers_include_runaway_hard_negatives(rows):
    """Numbered steps, headings and answered rhetorical questions in good answers keep runaway checks honest."""
    goods = [row["good"] for row in rows]
    numbered = sum(bool(re.search(r"(^|\s)1[.)]\s", g)) for g in goods)
    headings = sum(bool(re.search(r"^#{1,6}\s+\S", g, re.MULTILINE)) for g in goods)
    questions = sum("?" in g for g in goods)
    assert numbered >= 0.1 * len(goods), numbered
    assert headings >= 3, headings
    assert questions >= 3, questions
