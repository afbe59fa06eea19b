"""Statistics for paired comparisons: binomial intervals, exact tests, the paired difference.

Intervals come from scipy (Wilson score and Clopper-Pearson exact); the paired difference uses
Newcombe's square-and-add interval, which scipy does not offer. Every interval here keeps a
non-zero width when all outcomes agree (8 wins of 8 give [0.63, 1.0], not [1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95

# outcome per instruction: +1 win (SFT preferred), 0 tie, -1 loss


def _binomtest(successes: int, trials: int, alternative: str = "two-sided") -> Any:
    from scipy.stats import binomtest

    return binomtest(successes, trials, 0.5, alternative=alternative)


def wilson_ci(successes: int, trials: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) without trials."""
    if trials == 0:
        return (math.nan, math.nan)
    ci = _binomtest(successes, trials).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def exact_ci(successes: int, trials: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion; (nan, nan) without trials."""
    if trials == 0:
        return (math.nan, math.nan)
    ci = _binomtest(successes, trials).proportion_ci(confidence_level=level, method="exact")
    return (float(ci.low), float(ci.high))


def sign_test(wins: int, losses: int, alternative: str = "two-sided") -> float:
    """Exact binomial test of wins against losses (ties dropped) under p = 1/2; 1.0 without trials.
    `alternative="greater"` asks whether wins are more likely than losses."""
    if wins + losses == 0:
        return 1.0
    return float(_binomtest(wins, wins + losses, alternative).pvalue)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Exact McNemar test: the discordant pairs (one system passes, the other fails) under p = 1/2."""
    return sign_test(only_first, only_second)


def paired_difference_ci(
    both: int, only_first: int, only_second: int, neither: int, level: float = CONFIDENCE
) -> tuple[float, float]:
    """Newcombe's square-and-add interval for p(first passes) - p(second passes) on paired outcomes
    (Newcombe 1998, Statistics in Medicine 17:2635, method 10): the two marginal Wilson intervals
    combined with the estimated correlation between them, shrunk by N/2 towards zero."""
    n = both + only_first + only_second + neither
    if n == 0:
        return (math.nan, math.nan)
    first, second = both + only_first, both + only_second
    p1, p2 = first / n, second / n
    l1, u1 = wilson_ci(first, n, level)
    l2, u2 = wilson_ci(second, n, level)
    margins = first * (n - first) * second * (n - second)
    cross = both * neither - only_first * only_second
    shrunk = 0.0 if margins == 0 or 0 <= cross <= n / 2 else (cross - n / 2 if cross > 0 else cross)
    phi = shrunk / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    lower = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    upper = delta + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return (max(-1.0, lower), min(1.0, upper))


@dataclass
class PairedProportions:
    """Two systems scored pass/fail on the same items."""

    n: int
    first_passes: int
    second_passes: int
    only_first: int
    only_second: int
    difference: float  # first pass rate - second pass rate
    difference_ci95: tuple[float, float]
    mcnemar_p: float

    @property
    def significant(self) -> bool:
        lo, hi = self.difference_ci95
        return not (lo <= 0.0 <= hi)

    def rate(self, which: str) -> float:
        passes = self.first_passes if which == "first" else self.second_passes
        return passes / self.n if self.n else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference_ci95": list(self.difference_ci95), "significant": self.significant}


def paired_proportions(first: Sequence[bool], second: Sequence[bool]) -> PairedProportions:
    """Pass rates, their paired difference with Newcombe's interval, and the exact McNemar p."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in length: {len(first)} vs {len(second)}")
    both = sum(a and b for a, b in zip(first, second, strict=True))
    only_first = sum(a and not b for a, b in zip(first, second, strict=True))
    only_second = sum(b and not a for a, b in zip(first, second, strict=True))
    neither = len(first) - both - only_first - only_second
    n = len(first)
    return PairedProportions(
        n=n,
        first_passes=both + only_first,
        second_passes=both + only_second,
        only_first=only_first,
        only_second=only_second,
        difference=(only_first - only_second) / n if n else math.nan,
        difference_ci95=paired_difference_ci(both, only_first, only_second, neither),
        mcnemar_p=mcnemar_exact(only_first, only_second),
    )


def win_rate(outcomes: Sequence[int]) -> float:
    """Wins plus half the ties, over all comparisons."""
    if not outcomes:
        return float("nan")
    return (sum(o == 1 for o in outcomes) + 0.5 * sum(o == 0 for o in outcomes)) / len(outcomes)


def outcomes_from_scores(a: Sequence[float], b: Sequence[float], tie_margin: float) -> list[int]:
    """+1 where a beats b by more than the margin, -1 where b beats a, else 0."""
    return [1 if x - y > tie_margin else -1 if y - x > tie_margin else 0 for x, y in zip(a, b, strict=True)]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan with fewer than two points or a constant series."""
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx and sy else float("nan")
