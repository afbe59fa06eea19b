import math

import pytest

from stage1_assets.core import stats


def test_all_wins():
    outcomes = [1] * 10
    assert stats.win_rate(outcomes) == 1.0
    assert stats.bootstrap_ci(outcomes) == (1.0, 1.0)
    assert stats.sign_test_two_sided(10, 0) == pytest.approx(2 * 0.5**10)


def test_known_mix_with_ties():
    outcomes = [1] * 6 + [0] * 2 + [-1] * 2
    assert stats.win_rate(outcomes) == pytest.approx(0.7)
    lo, hi = stats.bootstrap_ci(outcomes, resamples=4000, seed=1)
    assert lo < 0.7 < hi and lo > 0.4 and hi <= 1.0
    # exact: 2 * P(X <= 2 | n=8, p=1/2) = 2 * (1 + 8 + 28) / 256
    assert stats.sign_test_two_sided(6, 2) == pytest.approx(2 * 37 / 256)


def test_interval_narrows_with_more_data():
    small = stats.bootstrap_ci([1, 1, 1, -1] * 5, seed=0)
    large = stats.bootstrap_ci([1, 1, 1, -1] * 100, seed=0)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 2
    assert large[0] < 0.75 < large[1]


def test_all_ties_and_empty():
    assert stats.win_rate([0, 0, 0]) == 0.5
    assert stats.sign_test_two_sided(0, 0) == 1.0
    assert math.isnan(stats.win_rate([]))


def test_outcomes_respect_the_tie_margin():
    assert stats.outcomes_from_scores([1.0, 1.05, 0.5], [0.5, 1.0, 1.0], tie_margin=0.1) == [1, 0, -1]


def test_all_inconsistent_judge_scores_zero_consistency():
    assert stats.order_consistency([0.5, 1.0, -0.2], [-0.5, -1.0, 0.2]) == 0.0
    assert stats.order_consistency([0.5, 1.0, -0.2], [0.1, 2.0, -0.1]) == 1.0


def test_length_control_exposes_a_length_biased_judge():
    # a judge that always prefers the longer answer: wins exactly where the SFT answer is longer
    sft_len = [50, 60, 70, 10, 12, 14, 30, 31]
    base_len = [10, 12, 14, 50, 60, 70, 30, 30]
    outcomes = [1 if a > b else -1 if b > a else 0 for a, b in zip(sft_len, base_len, strict=True)]
    lc = stats.length_controlled(outcomes, sft_len, base_len)
    assert lc["win_rate_sft_longer"] == 1.0 and lc["win_rate_sft_shorter"] == 0.0
    assert lc["matched_pairs"] == 2 and lc["corr_outcome_length_diff"] > 0.8
