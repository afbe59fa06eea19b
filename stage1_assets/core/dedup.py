"""Exact and near-duplicate detection for short texts (instructions).

Near-duplicates: Jaccard similarity of the sets of normalised words, at least 0.8 ("What causes
the ocean tides?" vs "What causes ocean tides?" is 0.8; "What is the capital of France?" vs
"... of Spain?" is 0.71 and both are kept). Candidates come from prefix filtering: with every
set's words sorted in one global order (rarest first), two sets with Jaccard >= t must share a
word among the first |s| - ceil(t |s|) + 1 of each, so only those words are indexed. That makes
15,000 instructions a fraction of a second instead of a quadratic scan.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence

NEAR_DUPLICATE_JACCARD = 0.8


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def word_set(text: str) -> frozenset[str]:
    return frozenset(normalize(text).split())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def word_frequencies(word_sets: Iterable[frozenset[str]]) -> Counter[str]:
    return Counter(w for words in word_sets for w in words)


class NearDuplicateIndex:
    """Indexed word sets answering "which stored text is at least `threshold` similar to this one?"."""

    def __init__(self, frequencies: Counter[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> None:
        self.frequencies, self.threshold = frequencies, threshold
        self.sets: dict[Hashable, frozenset[str]] = {}
        self.postings: dict[str, list[Hashable]] = defaultdict(list)

    def _prefix(self, words: frozenset[str]) -> list[str]:
        ordered = sorted(words, key=lambda w: (self.frequencies.get(w, 0), w))
        return ordered[: len(ordered) - math.ceil(self.threshold * len(ordered)) + 1]

    def add(self, key: Hashable, words: frozenset[str]) -> None:
        self.sets[key] = words
        for w in self._prefix(words):
            self.postings[w].append(key)

    def best_match(self, words: frozenset[str]) -> tuple[Hashable, float] | None:
        if not words:
            return None
        candidates = {k for w in self._prefix(words) for k in self.postings.get(w, ())}
        best = max(((jaccard(words, self.sets[k]), k) for k in candidates), default=(0.0, None), key=lambda x: x[0])
        return (best[1], best[0]) if best[0] >= self.threshold else None


def deduplicate(
    texts: Sequence[str], threshold: float = NEAR_DUPLICATE_JACCARD
) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """Keep the first of each group of duplicates.

    Returns (kept indices, {dropped index: (index it duplicates, "exact" | "near:<jaccard>" | "empty")}).
    """
    kept: list[int] = []
    dropped: dict[int, tuple[int, str]] = {}
    exact_seen: dict[str, int] = {}
    normalized = [normalize(t) for t in texts]
    sets = [frozenset(n.split()) for n in normalized]
    index = NearDuplicateIndex(word_frequencies(sets), threshold)
    for i, norm in enumerate(normalized):
        if not norm:
            dropped[i] = (i, "empty")
        elif norm in exact_seen:
            dropped[i] = (exact_seen[norm], "exact")
        elif match := index.best_match(sets[i]):
            dropped[i] = (int(match[0]), f"near:{match[1]:.2f}")  # type: ignore[arg-type]
        else:
            exact_seen[norm] = i
            index.add(i, sets[i])
            kept.append(i)
    return kept, dropped
