import json
from collections import Counter
from pathlib import Path

import pytest

from stage1_assets.core import reference_qa as qa
from stage1_assets.core.io import InputFileError

from ..support import exemplar_overlaps

PARIS = qa.QAItem("q1", "geography", "What is the capital of France?", ("Paris",), ("Lyon", "Marseille"))
SPIDER = qa.QAItem("q2", "animals", "How many legs does a spider have?", ("8", "eight"), ("6", "six"))
AUTHOR = qa.QAItem("q3", "literature", "Who wrote Oliver Twist?", ("Dickens", "Charles Dickens"), ("Austen",))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple a day ", "apple day"),
        ("Eight", "8"),
        ("twenty-one", "21"),
        ("forty", "40"),
        ("ninety nine", "99"),
        ("zero", "0"),
        ("1,000 km", "1000 km"),
        ("3.5 km.", "3.5 km"),
        ("Newton's law", "newtons law"),
        ("São Paulo", "sao paulo"),
        ("H₂O", "h2o"),
        ("**Paris**", "paris"),
    ],
)
def test_normalize(text, expected):
    assert qa.normalize(text) == expected


@pytest.mark.parametrize(
    "item, response, correct",
    [
        (PARIS, "Paris.", True),
        (PARIS, "  paris", True),
        (PARIS, "The capital of France is Paris. It is on the Seine.", True),
        (PARIS, "\n\n**Paris**\nLyon is the third city.", True),
        (PARIS, "Paris or Lyon.", False),
        (PARIS, "It is Paris, not Marseille.", False),
        (PARIS, "Lyon.", False),
        (PARIS, "France has many cities. The capital is Paris.", False),
        (PARIS, "The capital of France is a big city\nParis", False),
        (PARIS, "Parisian food is famous.", False),
        (PARIS, "", False),
        (SPIDER, "Eight.", True),
        (SPIDER, "A spider has 8 legs.", True),
        (SPIDER, "Spiders have eight legs.", True),
        (SPIDER, "It has 18 legs.", False),
        (SPIDER, "Six or eight.", False),
        (SPIDER, "Spiders have many legs. They have eight.", False),
        (AUTHOR, "Charles Dickens wrote it in the 1830s.", True),
        (AUTHOR, "It was written by Jane Austen.", False),
    ],
)
def test_is_correct(item, response, correct):
    assert qa.is_correct(item, response) is correct


def test_answer_span_is_the_first_sentence_or_line():
    assert qa.answer_span("It is 3.5 km away. Walk there.") == "It is 3.5 km away."
    assert qa.answer_span("Paris\nis lovely. Really.") == "Paris"


@pytest.fixture(scope="module")
def items():
    return qa.load_questions()


def test_shipped_questions(items):
    assert len(items) >= 110
    per_category = Counter(q.category for q in items)
    assert len(per_category) >= 6 and min(per_category.values()) >= 10, per_category
    for q in items:
        question = qa.normalize(q.question).split()
        # an answer or distractor inside the question would grade a parroted question
        assert not any(qa.contains_phrase(question, qa.normalize(a)) for a in q.answers + q.distractors), q.id
        assert qa.is_correct(q, f"{q.answers[0]}.") and qa.is_correct(q, f"The answer is {q.answers[-1]}."), q.id
        assert not any(qa.is_correct(q, f"{d}.") for d in q.distractors), q.id
        if any(a.isdigit() for a in q.answers):  # numbers come in digit and word form
            assert any(any(c.isalpha() for c in a) for a in q.answers), q.id


def test_shipped_questions_are_distinct_and_disjoint_from_the_exemplars(items):
    assert exemplar_overlaps([q.question for q in items]) == ({}, [], [])


def write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"id": "a", "category": "geography", "question": "What is the capital of Peru?", "answers": ["Lima"]}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answers": []}, "'answers' must be a non-empty list"),
        ({"answers": "Lima"}, "'answers' must be a non-empty list"),
        ({"answers": ["Lima", "?!"]}, "empty once normalised"),
        ({"distractors": "Cusco"}, "'distractors' must be a list"),
        ({"distractors": ["the"]}, "empty once normalised"),
        ({"answers": ["Lima city"], "distractors": ["lima"]}, "occurs in the accepted answer 'Lima city'"),
        ({"category": ""}, "'category' is missing or empty"),
    ],
)
def test_load_questions_refuses_a_bad_line(tmp_path, change, message):
    path = write(tmp_path, [GOOD, {**GOOD, "id": "b", **change}])
    with pytest.raises(InputFileError) as err:
        qa.load_questions(path)
    assert f"{path}:2:" in str(err.value) and message in str(err.value)


def test_load_questions_reads_a_good_file(tmp_path):
    (item,) = qa.load_questions(write(tmp_path, [{**GOOD, "distractors": ["Cusco"]}]))
    assert item == qa.QAItem("a", "geography", "What is the capital of Peru?", ("Lima",), ("Cusco",))


def test_select_subset(items):
    categories = {q.category for q in items}
    subset = qa.select_subset(items, 30, seed=3)
    assert len(subset) == 30 and subset == qa.select_subset(items, 30, seed=3)
    assert subset != qa.select_subset(items, 30, seed=4)
    order = {q.id: i for i, q in enumerate(items)}
    assert [order[q.id] for q in subset] == sorted(order[q.id] for q in subset)
    per_category = Counter(q.category for q in subset)
    assert set(per_category) == categories and max(per_category.values()) - min(per_category.values()) <= 1
    assert {q.category for q in qa.select_subset(items, len(categories), seed=0)} == categories
