"""The runaway rules on constructed cases: each rule fires where it should and stays quiet on good answers."""

import pytest

from stage1_assets.core.runaway import runaway_reason

ASK = "Which planet is the hottest in our solar system?"


@pytest.mark.parametrize(
    ("response", "rule"),
    [
        ("Venus.\nInstruction: Name the largest planet.", "labelled_turn"),
        ("Venus.\nQ: What is the coldest planet?", "labelled_turn"),
        ("Venus.\n\nQuestion 2: How far is Mars?", "labelled_turn"),
        ("Venus.\nUser: thanks!", "labelled_turn"),
        ("Venus.\n### Instruction\nName a moon.", "labelled_turn"),
        ("Venus.\n###\nName a moon.", "labelled_turn"),
        ("Venus.\nTask 3: list the planets.", "labelled_turn"),
        ("Venus.\n\n1. What is the temperature of the Sun?\n2. How far is the Moon?", "numbered_question"),
        ("1. What is your favorite color?\n2. Which colors do you see in nature?", "numbered_question"),
        ("Venus is hottest.\n\nWhat is the difference between an ocean and a landmass?", "new_question"),
        ("Venus.\n\nWhat are the benefits of cold brew?\nCold brew is milder.", "new_question"),
        ("Venus, because of its thick atmosphere.\n\nNow write a short poem about the sea.", "new_task"),
        ("Venus.\nTranslate the following sentence into French: The sky is blue.", "new_task"),
        ("Venus.\n\nWrite a haiku about autumn leaves.", "new_task"),
        ("Venus.\n\nNow make this sentence more formal: Can't wait to see you.", "new_task"),
        ("112.\n\nNow multiply 112 by 3.", "new_task"),
        ("Venus.\n\nDescribe why Mars looks red.", "new_task"),
        ("Venus.\n\nCalculate the total bill with the tip included.", "new_task"),
        ("Venus.\n### Product 2\nWrite a two-sentence description for a leather case.", "new_task"),
        ("The answer is 0.941 g.\n\nA) 6.25 = 0.941\nB) 6.25 = 0.00941\nC) 6.25 = 0.0941", "multiple_choice"),
        ("Venus is the hottest. Question 2: Which planet is the coldest?", "labelled_turn"),
        ("Venus. Q: Which planet has rings?", "labelled_turn"),
    ],
)
def test_new_prompts_are_flagged_with_the_rule_that_fired(response, rule):
    reason = runaway_reason(ASK, response)
    assert reason is not None and reason.startswith(rule + ":"), reason


@pytest.mark.parametrize(
    ("instruction", "response"),
    [
        ("Convert 5 km to miles.", "About 3.1 miles.\n\nConvert 10 km to miles."),
        ("Translate 'cat' into Spanish.", "Gato.\n\nTranslate 'dog' into Spanish."),
        ("Give a synonym for happy.", "Joyful.\n\n2. Give a synonym for sad."),
        ("Name a mammal that lives in the sea.", "A dolphin.\n3. Name a bird that cannot fly."),
    ],
)
def test_the_request_again_or_a_numbered_next_task_is_a_new_task(instruction, response):
    reason = runaway_reason(instruction, response)
    assert reason is not None and reason.startswith("new_task:"), reason


@pytest.mark.parametrize(
    ("instruction", "response"),
    [
        (ASK, "Venus. Its thick carbon dioxide atmosphere traps heat, so its surface is hotter than Mercury's."),
        (
            "How do I repot a plant?",
            "1. Water the plant a day ahead.\n2. Choose a pot one size larger.\n"
            "3. Loosen the roots and set the plant at the same depth.\n4. Water it well.",
        ),
        ("How do I repot a plant?", "## Steps\nWater the plant, move it to a larger pot, and firm the soil."),
        ("How do I repot a plant?", "## What you need\nA larger pot and fresh mix.\n## Steps\n1. Water. 2. Move."),
        ("Why do we need sleep?", "Why does sleep matter? Because the brain clears waste and stores memories."),
        ("Why do we need sleep?", "Sleep restores the body.\nWhy does that matter? It keeps us alert."),
        (
            "Give me three interview questions for a cashier.",
            "1. How would you handle an upset customer?\n2. How do you count change quickly?\n3. Why this job?",
        ),
        ("Write a short poem about the first snow.", "White hush on the road,\nwho swept the sky clean?\nthe pines."),
        ("Describe how to budget.", "List your income first.\nThen write down every fixed cost."),
        ("How do I make pancakes?", "Whisk the eggs and milk.\nNow add 2 cups of flour.\nMake sure no lumps remain."),
        ("Pick the right option: A) 3 B) 4", "B) 4.\nA) would be too small."),
        ("What is 12 x 4?", "12 x 4 = 48."),
        ("Q and A: which letter follows P?", "Q is the 17th letter; the question: is it a vowel? No."),
        ("Write tips for writing well.", "Write every day.\nWrite short sentences.\nRead your draft aloud."),
        ("Convert 5 km to miles.", "About 3.1 miles: multiply 5 by 0.621.\nConvert other distances the same way."),
        (
            "List the steps to bake bread.",
            "1. Mix flour, water, salt and yeast.\n2. Knead for ten minutes.\n"
            "3. Let it rise, shape it, and bake at 220 °C.",
        ),
        ("Explain what a question mark is for.", "It ends a direct question. Example: Are you coming?"),
    ],
)
def test_good_answers_are_not_flagged(instruction, response):
    assert runaway_reason(instruction, response) is None


def test_a_poem_may_ask_questions_but_not_in_a_numbered_list():
    poem = "Who swept the sky so clean?\nthe snow, the snow."
    assert runaway_reason("Write a poem about snow.", "White hush.\n" + poem) is None
    assert runaway_reason("Write a poem about snow.", poem + "\n\n1. What is a rhyme scheme?").startswith(
        "numbered_question"
    )


def test_reason_quotes_the_line_that_fired_and_is_short():
    reason = runaway_reason(ASK, "Venus.\nQ: " + "very long question " * 20 + "?")
    assert reason.startswith("labelled_turn: Q: very long question")
    assert len(reason) < 90 and reason.endswith("…")
