"""Paired-comparison statistics: win rate, bootstrap interval, sign test, length control."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

# outcome per instruction: +1 win (SFT preferred), 0 tie, -1 loss


def win_rate(outcomes: Sequence[int]) -> float:
    """Wins plus half the ties, over all comparisons."""
    if not outcomes:
        return float("nan")
    return (sum(o == 1 for o in outcomes) + 0.5 * sum(o == 0 for o in outcomes)) / len(outcomes)


def bootstrap_ci(
    outcomes: Sequence[int], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the win rate, resampling instructions with replacement (paired)."""
    if not outcomes:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(outcomes)
    rates = sorted(win_rate([outcomes[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    lo = rates[int((1 - level) / 2 * resamples)]
    hi = rates[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


def sign_test_two_sided(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins vs losses (ties dropped) against 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def outcomes_from_scores(a: Sequence[float], b: Sequence[float], tie_margin: float) -> list[int]:
    """+1 where a beats b by more than the margin, -1 where b beats a, else 0."""
    return [1 if x - y > tie_margin else -1 if y - x > tie_margin else 0 for x, y in zip(a, b, strict=True)]


def order_consistency(ab_margins: Sequence[float], ba_margins: Sequence[float]) -> float:
    """Share of pairs whose preferred side (sign of the margin) is the same in both presentation orders."""
    if not ab_margins:
        return float("nan")
    return sum((x > 0) == (y > 0) for x, y in zip(ab_margins, ba_margins, strict=True)) / len(ab_margins)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx and sy else float("nan")


def length_controlled(
    outcomes: Sequence[int], len_a: Sequence[int], len_b: Sequence[int], tolerance: float = 0.25
) -> dict[str, Any]:
    """Win rate among length-matched pairs (lengths within `tolerance` of each other), by which side is
    longer, and the correlation of outcome with the length difference: a judge that simply prefers
    longer answers shows a high win rate only where the SFT answer is the longer one."""
    matched = [o for o, a, b in zip(outcomes, len_a, len_b, strict=True) if abs(a - b) <= tolerance * max(a, b, 1)]
    a_longer = [o for o, a, b in zip(outcomes, len_a, len_b, strict=True) if a > b * (1 + tolerance)]
    b_longer = [o for o, a, b in zip(outcomes, len_a, len_b, strict=True) if b > a * (1 + tolerance)]
    return {
        "matched_pairs": len(matched),
        "win_rate_length_matched": win_rate(matched),
        "pairs_sft_longer": len(a_longer),
        "win_rate_sft_longer": win_rate(a_longer),
        "pairs_sft_shorter": len(b_longer),
        "win_rate_sft_shorter": win_rate(b_longer),
        "corr_outcome_length_diff": pearson(list(outcomes), [a - b for a, b in zip(len_a, len_b, strict=True)]),
    }
