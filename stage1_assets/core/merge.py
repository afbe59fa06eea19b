"""Merge shards into the SFT dataset: keep accepted pairs, deduplicate, decontaminate.

Decontamination against the held-out test set drops a pair when its instruction or response
contains a 13-word n-gram of a test instruction (the whole normalised test instruction when it is
shorter than 13 words), or when its instruction near-duplicates one (word-set Jaccard, as in
`dedup`). Every removed row is kept with its reason, so the UI can show what was dropped and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import dedup

CONTAMINATION_NGRAM = 13


class TestSetIndex:
    """Word patterns and word sets of the test instructions, for fast overlap lookups.

    A test instruction contributes its 13-word n-grams, or itself whole when shorter; a text
    overlaps the test set when one of these patterns occurs in it as consecutive words. Patterns
    are indexed by their first two words, so a lookup compares only a few candidates per position.
    """

    __test__ = False  # not a pytest class

    def __init__(self, test_instructions: Sequence[str], n: int = CONTAMINATION_NGRAM) -> None:
        self.n = n
        self.texts = list(test_instructions)
        # keyed by their first two words (one-word patterns by that word): few candidates per position
        self.patterns: dict[tuple[str, ...], list[tuple[tuple[str, ...], int]]] = {}
        for i, text in enumerate(test_instructions):
            words = tuple(dedup.normalize(text).split())
            grams = {words[k : k + n] for k in range(len(words) - n + 1)} if len(words) >= n else {words}
            for gram in grams:
                if gram:
                    self.patterns.setdefault(gram[:2], []).append((gram, i))
        test_sets = [dedup.word_set(t) for t in test_instructions]
        self.near = dedup.NearDuplicateIndex(dedup.word_frequencies(test_sets))
        for i, words in enumerate(test_sets):
            self.near.add(i, words)

    def overlap(self, text: str) -> tuple[int, str] | None:
        """(test index, reason) when `text` shares a 13-word n-gram with, or contains, a test instruction."""
        words = dedup.normalize(text).split()
        for start in range(len(words)):
            candidates = self.patterns.get((words[start],), [])
            if start + 1 < len(words):
                candidates = candidates + self.patterns.get((words[start], words[start + 1]), [])
            for gram, i in candidates:
                if tuple(words[start : start + len(gram)]) == gram:
                    why = f"shares a {self.n}-gram" if len(gram) == self.n else "contains a whole test instruction"
                    return i, why
        return None

    def near_duplicate(self, instruction: str) -> tuple[int, str] | None:
        match = self.near.best_match(dedup.word_set(instruction))
        return (int(match[0]), f"near-duplicate (jaccard {match[1]:.2f})") if match else None  # type: ignore[arg-type]

    def contamination(self, instruction: str, response: str) -> str | None:
        for field_name, text in (("instruction", instruction), ("response", response)):
            hit = self.overlap(text)
            if hit:
                return f"{field_name} {hit[1]} with {self.texts[hit[0]]!r}"
        near = self.near_duplicate(instruction)
        if near:
            return f"instruction is a {near[1]} of {self.texts[near[0]]!r}"
        return None


@dataclass
class MergeResult:
    kept: list[dict[str, Any]]
    removed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def removed_by_step(self) -> dict[str, int]:
        return dict(Counter(r["step"] for r in self.removed))


def merge_shards(rows: Sequence[dict[str, Any]], test_instructions: Sequence[str]) -> MergeResult:
    """Accepted, deduplicated, decontaminated pairs (in input order) and every removed row with why."""
    removed: list[dict[str, Any]] = []

    def drop(row: dict[str, Any], step: str, why: str) -> None:
        removed.append({"id": row["id"], "step": step, "why": why, "instruction": row["instruction"]})

    accepted = []
    for row in rows:
        if row["accepted"]:
            accepted.append(row)
        else:
            drop(row, "critic_rejected", f"critic score {row['critic_score']:.3f} below threshold")
    kept_idx, dropped = dedup.deduplicate([r["instruction"] for r in accepted])
    for idx, (dup_of, how) in sorted(dropped.items()):
        drop(accepted[idx], "duplicate", f"{how.split(':')[0]} duplicate of {accepted[dup_of]['id']}")
    index = TestSetIndex(test_instructions)
    kept = []
    for idx in kept_idx:
        row = accepted[idx]
        why = index.contamination(row["instruction"], row["response"])
        if why:
            drop(row, "test_overlap", why)
        else:
            kept.append(row)
    return MergeResult(kept, removed)


def accelerator_seconds(shard_manifest: dict[str, Any]) -> float:
    """GPU time a shard took to generate, from its manifest (CPU time is not rented accelerator time)."""
    if not str(shard_manifest.get("device")).startswith("cuda"):
        return 0.0
    return float(shard_manifest.get("generation_seconds") or 0.0)


def cost_summary(
    accelerator_seconds_by_shard: dict[str, float],
    num_shards: int,
    accepted_pairs: int,
    price_per_accelerator_hour: float,
    budget: float,
) -> dict[str, Any]:
    """Spend so far, per 1,000 accepted pairs, and the projection for all `num_shards` shards."""
    done = len(accelerator_seconds_by_shard)
    seconds = sum(accelerator_seconds_by_shard.values())
    spend = seconds / 3600 * price_per_accelerator_hour
    per_shard = spend / done if done else 0.0
    projected = spend + per_shard * max(num_shards - done, 0)
    return {
        "accelerator_seconds": seconds,
        "shards_done": done,
        "num_shards": num_shards,
        "spend": round(spend, 4),
        "spend_per_1000_accepted": round(spend / accepted_pairs * 1000, 4) if accepted_pairs else None,
        "projected_total": round(projected, 4),
        "budget": budget,
        "within_budget": projected <= budget,
    }
