"""Each text rule of the critic on constructed cases: it fires where it should and nowhere else."""

import pytest

from stage1_assets.core.response_rules import (
    evaluate_expression,
    informative_words,
    novelty,
    posed_result,
    rule_reason,
    split_request,
)


@pytest.mark.parametrize(
    ("instruction", "response", "rule"),
    [
        ("Which planet is the hottest in our solar system?", "You asked which planet is the hottest.", "restated"),
        ("Explain why ice floats on water.", "Ice floating on water is why ice floats.", "restated"),
        (
            "Rewrite this sentence in the passive voice: The chef prepared the meal.",
            "Here it is: The chef prepared the meal.",
            "restated",
        ),
        ("Why is the sky blue?", "There are many reasons for this.", "content_free"),
        ("How do I fix a flat tire?", "It depends on the situation, really.", "content_free"),
        ("Is a tomato a fruit?", "That is a great question.", "content_free"),
        ("What is 15 + 27?", "15 + 27 = 51.", "arithmetic"),
        ("What is 15 + 27?", "The answer is 51.", "arithmetic"),
        ("Calculate 12% of 250.", "It is 25.", "arithmetic"),
        ("What is 6 x 4 / 2?", "24", "arithmetic"),
        ("How much do 7 notebooks at $3 each cost?", "7 x $3 = $25.", "arithmetic"),
        ("Name a planet.", "Venus.\nQ: What is the coldest planet?", "runaway"),
    ],
)
def test_each_rule_fires_on_its_kind_and_says_why(instruction, response, rule):
    reason = rule_reason(instruction, response)
    assert reason is not None and reason.startswith(rule + ":"), reason


@pytest.mark.parametrize(
    ("instruction", "response"),
    [
        ("Which planet is the hottest in our solar system?", "Venus."),
        ("Which is bigger, the sun or the moon?", "The sun is bigger."),
        ("Is a tomato a fruit?", "Yes, a tomato is a fruit."),
        ("Is a tomato a fruit?", "Yes."),
        (
            "Turn this sentence into a negative sentence: The store is open on Sundays.",
            "The store is not open on Sundays.",
        ),
        (
            "Correct the grammar in this sentence: Me and him goes to the library every weeks.",
            "He and I go to the library every week.",
        ),
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Double a recipe that uses 1/2 cup of sugar.", "Use 1 cup of sugar."),
        ("What is 15 + 27?", "15 + 27 = 42."),
        ("How do I find a triangle's area?", "Multiply base by height and halve it: 6 x 4 / 2 = 12."),
        ("What is the percent change from 50 to 60?", "(60 - 50) / 50 x 100 = 20%."),
        ("Explain the 1-2 punch in boxing.", "A quick jab followed by a straight cross."),
        ("Write a haiku about the ocean.", "Waves fold into foam / the tide whispers to the sand / salt wind home"),
    ],
)
def test_good_answers_pass_every_rule(instruction, response):
    assert rule_reason(instruction, response) is None


def test_rules_can_be_selected():
    assert rule_reason("What is 15 + 27?", "15 + 27 = 51.", rules=("restated",)) is None
    assert rule_reason("What is 15 + 27?", "15 + 27 = 51.", rules=("arithmetic",)).startswith("arithmetic")


def test_informative_words_drop_filler_and_merge_word_forms():
    assert informative_words("There are many different reasons for this.") == set()
    assert informative_words("Ice floats") == informative_words("ice floating")


def test_novelty_counts_new_informative_words_against_the_task_only():
    assert novelty("Why is the sky blue?", "Sunlight scatters off air molecules.") == 1.0
    assert novelty("Why is the sky blue?", "The sky is blue.") == 0.0
    # a rewrite reuses the given text: that is not echoing the task
    rewrite = "Rewrite in the passive voice: The chef prepared the meal."
    assert novelty(rewrite, "The meal was prepared by the chef.") > 0.5


def test_split_request_finds_the_text_a_task_works_on():
    assert split_request("Rewrite this: The chef prepared the meal.") == ("Rewrite this", "The chef prepared the meal.")
    assert split_request("Name a fruit (note: be brief)") == ("Name a fruit (note: be brief)", "")  # too short


def test_arithmetic_helpers():
    assert evaluate_expression("(60 - 50) / 50 x 100") == pytest.approx(20.0)
    assert evaluate_expression("1,000 + 2,000") == 3000.0
    assert evaluate_expression("10 / 0") is None
    assert evaluate_expression("__import__('os')") is None
    assert posed_result("What is 100 divided by 4?") == 25.0
    assert posed_result("Calculate 12% of 250.") == pytest.approx(30.0)
    assert posed_result("What is 7 squared?") == 49.0
    assert posed_result("Tell me about 3 + 4 and 5 + 6.") is None  # no single computation asked for
