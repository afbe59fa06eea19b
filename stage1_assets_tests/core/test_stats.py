"""Intervals and tests against published values (Newcombe 1998; Fagerland, Lydersen & Laake 2017)."""

import math

import pytest

from stage1_assets.core import stats


@pytest.mark.parametrize(
    ("successes", "trials", "wilson", "exact"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I
        (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
        (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
        (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
    ],
)
def test_single_proportion_intervals_match_published_values(successes, trials, wilson, exact):
    assert stats.wilson_ci(successes, trials) == pytest.approx(wilson, abs=1e-4)
    assert stats.exact_ci(successes, trials) == pytest.approx(exact, abs=1e-4)


def test_all_successes_never_give_a_zero_width_interval():
    lo, hi = stats.exact_ci(8, 8)
    assert lo == pytest.approx(0.6306, abs=1e-4) and hi == 1.0
    lo, hi = stats.wilson_ci(8, 8)
    assert 0.6 < lo < 0.7 and hi == 1.0


def test_paired_difference_matches_the_published_square_and_add_interval():
    # Cavo et al. (2012) as analysed by Fagerland, Lydersen & Laake (2017), chapter 8: table 59, 6 / 16, 80
    lo, hi = stats.paired_difference_ci(59, 6, 16, 80)
    assert (lo, hi) == pytest.approx((-0.1186, -0.0046), abs=1e-4)


def test_mcnemar_exact_is_the_binomial_test_of_discordant_pairs():
    # 6 vs 2 discordant: 2 * P(X <= 2 | n = 8, p = 1/2) = 2 * (1 + 8 + 28) / 256
    assert stats.mcnemar_exact(6, 2) == pytest.approx(2 * 37 / 256)
    assert stats.mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_one_sided_sign_test():
    assert stats.sign_test(8, 0, alternative="greater") == pytest.approx(0.5**8)
    assert stats.sign_test(0, 8, alternative="greater") == pytest.approx(1.0)


def test_paired_proportions_counts_and_significance():
    first = [True] * 30 + [True] * 12 + [False] * 2 + [False] * 16
    second = [True] * 30 + [False] * 12 + [True] * 2 + [False] * 16
    result = stats.paired_proportions(first, second)
    assert (result.n, result.first_passes, result.second_passes) == (60, 42, 32)
    assert (result.only_first, result.only_second) == (12, 2)
    assert result.difference == pytest.approx(10 / 60)
    assert result.mcnemar_p < 0.05 and result.significant
    assert result.difference_ci95[0] > 0


def test_identical_systems_are_not_significantly_different():
    outcomes = [True, False] * 20
    result = stats.paired_proportions(outcomes, outcomes)
    assert result.difference == 0.0 and result.mcnemar_p == 1.0
    lo, hi = result.difference_ci95
    assert lo < 0 < hi and not result.significant


def test_all_discordant_in_one_direction_on_few_items_is_still_uncertain():
    result = stats.paired_proportions([True] * 4, [False] * 4)
    assert result.difference == 1.0 and result.mcnemar_p == pytest.approx(0.125)
    assert result.difference_ci95[0] < 0.75  # four items cannot pin the difference down


def test_paired_outcomes_must_have_equal_length():
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_proportions([True], [True, False])


def test_win_rate_and_tie_margin():
    assert stats.win_rate([1] * 6 + [0] * 2 + [-1] * 2) == pytest.approx(0.7)
    assert stats.win_rate([0, 0, 0]) == 0.5
    assert math.isnan(stats.win_rate([]))
    assert stats.outcomes_from_scores([1.0, 1.05, 0.5], [0.5, 1.0, 1.0], tie_margin=0.1) == [1, 0, -1]


def test_pearson():
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(stats.pearson([1, 1, 1], [1, 2, 3]))
