"""Exact and near-duplicate detection for short texts (instructions).

Near-duplicates: Jaccard similarity of word 3-gram shingles of the normalised text. Candidate
pairs come from an inverted index on shingles, so only texts that share a shingle are compared.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

SHINGLE_WORDS = 3
NEAR_DUPLICATE_JACCARD = 0.6


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[str]:
    words = normalize(text).split()
    if len(words) <= size:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def deduplicate(
    texts: Sequence[str], threshold: float = NEAR_DUPLICATE_JACCARD
) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """Keep the first of each group of duplicates.

    Returns (kept indices, {dropped index: (index it duplicates, "exact" | "near:<jaccard>")}).
    """
    kept: list[int] = []
    dropped: dict[int, tuple[int, str]] = {}
    exact_seen: dict[str, int] = {}
    index: dict[str, list[int]] = defaultdict(list)
    sets: dict[int, frozenset[str]] = {}
    for i, text in enumerate(texts):
        norm = normalize(text)
        if not norm:
            dropped[i] = (i, "empty")
            continue
        if norm in exact_seen:
            dropped[i] = (exact_seen[norm], "exact")
            continue
        sh = shingles(text)
        candidates = {j for s in sh for j in index[s]}
        best = max(((jaccard(sh, sets[j]), j) for j in candidates), default=(0.0, -1))
        if best[0] >= threshold:
            dropped[i] = (best[1], f"near:{best[0]:.2f}")
            continue
        exact_seen[norm] = i
        sets[i] = sh
        for s in sh:
            index[s].append(i)
        kept.append(i)
    return kept, dropped
