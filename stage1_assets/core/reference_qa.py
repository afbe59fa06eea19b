"""Short-answer questions with reference answers: an objective check of what a response says first.

Each question has accepted answers (a canonical one and its aliases, numbers in digit and word
form) and, where one is tempting, common wrong answers ("distractors"). `is_correct` grades only
the opening of a response, so a system is rewarded for answering, not for listing candidates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .instruction_following import split_sentences, stratified_subset
from .io import InputFileError, read_jsonl

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "reference_qa.jsonl"

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]  # fmt: skip
_TENS = ["thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS: dict[str, str] = {w: str(i) for i, w in enumerate(_UNITS)} | {
    w: str(30 + 10 * i) for i, w in enumerate(_TENS)
}
_TENS_DIGITS = frozenset({"20"} | {str(30 + 10 * i) for i in range(7)})
_UNIT_DIGITS = frozenset(str(i) for i in range(1, 10))
ARTICLES = frozenset({"a", "an", "the"})


def normalize(text: str) -> str:
    """Lowercase, accents and punctuation removed, no articles, number words as digits, single spaces.

    Apostrophes vanish ("Newton's" -> "newtons"); other punctuation separates words, except a
    comma or period between digits ("1,000" -> "1000", "3.5" stays). A tens word followed by a unit
    word joins into one number ("twenty-one" -> "21").
    """
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"['`]", "", text)
    text = re.sub(r"(?!(?<=\d)\.(?=\d))[^a-z0-9]", " ", text)
    tokens = [NUMBER_WORDS.get(t, t) for t in text.split() if t not in ARTICLES]
    merged: list[str] = []
    for token in tokens:
        if merged and merged[-1] in _TENS_DIGITS and token in _UNIT_DIGITS:
            merged[-1] = str(int(merged[-1]) + int(token))
        else:
            merged.append(token)
    return " ".join(merged)


@dataclass(frozen=True)
class QAItem:
    id: str
    category: str
    question: str
    answers: tuple[str, ...]
    distractors: tuple[str, ...] = ()


def contains_phrase(tokens: list[str], phrase: str) -> bool:
    """Whether the words of `phrase` occur in `tokens` as consecutive whole tokens."""
    needle = phrase.split()
    return any(tokens[i : i + len(needle)] == needle for i in range(len(tokens) - len(needle) + 1))


def answer_span(response: str) -> str:
    """The graded part of a response: its first sentence, which never runs past the end of its line.

    Sentences follow `instruction_following.split_sentences`, where a line break also ends a
    sentence, so this is the first sentence or the first line with words, whichever is shorter.
    """
    sentences = split_sentences(response)
    return sentences[0] if sentences else ""


def is_correct(item: QAItem, response: str) -> bool:
    """Whether the response answers `item` correctly.

    Rule: take the response's first sentence or first line, whichever is shorter (`answer_span`),
    and normalise it (`normalize`). It is correct when some accepted answer, normalised, occurs in
    it as a run of whole tokens ("8" is found in "it has 8 legs", not in "18"), and no distractor does (a hedge
    such as "Paris or Lyon" is wrong). An answer given only in a later sentence does not count.
    """
    tokens = normalize(answer_span(response)).split()
    if not tokens:
        return False
    hit = any(contains_phrase(tokens, normalize(a)) for a in item.answers)
    return hit and not any(contains_phrase(tokens, normalize(d)) for d in item.distractors)


def _string_list(row: dict[str, Any], name: str, where: str, required: bool) -> tuple[str, ...]:
    value = row.get(name, [] if not required else None)
    if not isinstance(value, list) or (required and not value):
        raise InputFileError(f"{where}: field {name!r} must be a {'non-empty ' if required else ''}list of strings")
    for v in value:
        if not isinstance(v, str) or not normalize(v):
            raise InputFileError(f"{where}: field {name!r} holds {v!r}, which is empty once normalised")
    return tuple(value)


def load_questions(path: Path = DEFAULT_QUESTIONS) -> tuple[QAItem, ...]:
    """Every question, validated; InputFileError names the file and line of any problem.

    Refused besides what `read_jsonl` refuses: no accepted answer, an answer or distractor that
    normalises to nothing, and a distractor that occurs in an accepted answer.
    """
    path = Path(path)
    rows = read_jsonl(path, required=("id", "category", "question"))
    # read_jsonl skips blank lines and keeps one row per other line: this maps rows back to lines
    line_numbers = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    items = []
    for row, line_no in zip(rows, line_numbers, strict=True):
        where = f"{path}:{line_no}"
        answers = _string_list(row, "answers", where, required=True)
        distractors = _string_list(row, "distractors", where, required=False)
        for d in distractors:
            # such a distractor would make the answer that contains it count as wrong
            clash = [a for a in answers if contains_phrase(normalize(a).split(), normalize(d))]
            if clash:
                raise InputFileError(f"{where}: distractor {d!r} occurs in the accepted answer {clash[0]!r}")
        items.append(QAItem(str(row["id"]), row["category"], row["question"], answers, distractors))
    return tuple(items)


def select_subset(items: Sequence[QAItem], n: int, seed: int) -> tuple[QAItem, ...]:
    """A deterministic subset of `n` questions spread evenly over the categories, in file order."""
    return stratified_subset(items, n, seed, key=lambda q: q.category)
