"""Rules that reject a response outright, before any model score: it says nothing, repeats the
request, starts a new prompt, or gets a stated computation wrong.

A likelihood critic on a small base model rewards exactly these answers (an echo of the request
is very likely given the request; a generic sentence fits any request), so they are caught by
rules that read the text. Each rule returns the reason it fired, shown in the UI beside the pair.

  restated      no informative word beyond the request's own words ("The hottest planet is a planet."),
                or the text a request gave to work on, handed back unchanged
  content_free  no informative word at all ("There are many reasons for this.")
  runaway       goes on to a new prompt (`core.runaway`)
  arithmetic    the request poses a computation (12 x 4, 15% of 80, 7 squared) and no number in the
                response is its result, or the response states a false equation ("15 + 27 = 51")
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from .runaway import runaway_reason

WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _words(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having he
    her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
    now of off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves let lets let's
    it's that's there's here's what's i'm you're we're they're don't doesn't isn't aren't can't won't"""
)
# words that carry no answer: a response made only of these (and stopwords) says nothing
GENERIC = _words(
    """many much various different several certain some lot lots reason reasons factor factors thing things way ways
    depend depends depending important question questions answer answers good great interesting topic topics issue
    issues matter matters case cases situation situations people person aspect aspects possible sure hard difficult
    complex complicated vary varies varied context consider considered kind kinds sort sorts type types something
    anything everything nothing often sometimes usually generally general overall basically simply really quite
    best better well work works help helps make makes made know think say said tell see look like need needs want
    use used find give take come go get got well okay ok yes yeah indeed course certainly definitely absolutely
    probably maybe perhaps likely unlikely one ones stuff point points idea ideas detail details information
    explain explained describe described list listed request asked ask asking here below following simple simply
    great excellent nice wonderful fine true right correct wrong depends involved involve involves number numbers
    part parts main key role roles also often always never especially particularly specific specifically"""
)
YES_NO_QUESTION = re.compile(
    r"^\s*(?:is|are|was|were|can|could|do|does|did|will|would|should|shall|has|have|had|may|might|must)\b", re.I
)
CHOICE = re.compile(r"\bor\b|\bwhich of\b|\beither\b", re.I)
RESTATED_COVERAGE = 0.5  # share of the request's informative words an echo repeats
GIVEN_MIN_WORDS = 3  # words after a colon that make a text to work on, not a label
SUFFIXES = ("ingly", "ings", "ing", "edly", "ed", "ies", "es", "s", "ly")


def stem(word: str) -> str:
    """A crude stem, enough to see "floating" and "floats" as the same word."""
    word = word.lower()
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def informative_words(text: str) -> set[str]:
    """Stems of the words in `text` that could carry an answer: not stopwords, not generic filler."""
    words = [w.lower() for w in WORD.findall(text)]
    return {stem(w) for w in words if w not in STOPWORDS and w not in GENERIC}


def split_request(instruction: str) -> tuple[str, str]:
    """(task, given text): "Rewrite this in the passive voice: The chef cooked." has a text to work on after
    its colon; an answer to such a task reuses that text's words by design."""
    task, colon, given = instruction.partition(":")
    return (task, given.strip()) if colon and len(WORD.findall(given)) >= GIVEN_MIN_WORDS else (instruction, "")


def novelty(instruction: str, response: str) -> float:
    """The share of the response's informative words that the request's task does not already contain."""
    said = informative_words(response)
    return len(said - informative_words(split_request(instruction)[0])) / len(said) if said else 0.0


def _normalised(text: str) -> str:
    return " ".join(w.lower() for w in WORD.findall(text))


def restated_reason(instruction: str, response: str) -> str | None:
    """No informative word beyond the request's, covering at least half of the request's words; or, for a
    task on a given text, that text handed back unchanged. Picking an option of a choice ("Which is bigger,
    the sun or the moon?" -> "The sun is bigger.") and a yes or no to a yes/no question answer."""
    task, given = split_request(instruction)
    if given:
        return "restated: hands back the given text unchanged" if _normalised(given) in _normalised(response) else None
    said, asked = informative_words(response), informative_words(task)
    if not said or said - asked or len(said) < RESTATED_COVERAGE * len(asked):
        return None
    if CHOICE.search(instruction) and asked - said:
        return None
    if _answers_yes_or_no(instruction, response):
        return None
    return "restated: adds no word beyond the request's own"


def _answers_yes_or_no(instruction: str, response: str) -> bool:
    first = (WORD.findall(response) or [""])[0].lower()
    return first in ("yes", "no") and bool(YES_NO_QUESTION.match(instruction))


def content_free_reason(instruction: str, response: str) -> str | None:
    if informative_words(response) or _answers_yes_or_no(instruction, response):
        return None
    return "content_free: no informative word"


# --- arithmetic --------------------------------------------------------------------------------------

NUMBER = r"(-?\d+(?:,\d{3})*(?:\.\d+)?)"
# spelled operators and their Python form; "-" and "x" count only between spaces ("1-2 punch", "2x4 lumber")
SYMBOLS = {"x": "*", "×": "*", "*": "*", "÷": "/", "/": "/", "−": "-", "-": "-", "+": "+", "plus": "+", "minus": "-",
           "times": "*", "added to": "+", "multiplied by": "*", "divided by": "/"}  # fmt: skip
OPERATOR = "|".join(
    rf"\s{re.escape(op)}\s" if op in ("-", "x") else re.escape(op) for op in sorted(SYMBOLS, key=len, reverse=True)
)
OPERAND = rf"\(*\s*[$€£]?{NUMBER[1:-1]}\s*\)*"
# a whole expression ("6 x 4 / 2", "(60 - 50) / 50 x 100"), and one with the result stated for it
EXPRESSION = rf"(?<![\d.,])((?:{OPERAND}\s*(?:{OPERATOR})\s*)+{OPERAND})"
EQUATION = re.compile(rf"{EXPRESSION}\s*=\s*[$€£]?{NUMBER}", re.I)
ASKS_TO_COMPUTE = re.compile(r"\b(?:calculate|compute|what is|what's|how much is|evaluate|work out|solve)\b", re.I)
PERCENT_OF = re.compile(rf"{NUMBER}\s*(?:%|percent)\s+of\s+{NUMBER}", re.I)
SQUARED = re.compile(rf"{NUMBER}\s*(?:squared|\^\s*2)\b", re.I)
SQUARE_ROOT = re.compile(rf"square root of\s+{NUMBER}", re.I)
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def posed_result(instruction: str) -> float | None:
    """The result of the one computation `instruction` asks for ("What is 12 x 4?"), if it asks for one."""
    if not ASKS_TO_COMPUTE.search(instruction):
        return None
    results = [_number(a) / 100 * _number(b) for a, b in PERCENT_OF.findall(instruction)]
    text = PERCENT_OF.sub(" ", instruction)
    results += [evaluate_expression(e) for e in re.findall(EXPRESSION, text, re.I)]
    results += [_number(a) ** 2 for a in SQUARED.findall(text)]
    results += [math.sqrt(_number(a)) for a in SQUARE_ROOT.findall(text) if _number(a) >= 0]
    return results[0] if len(results) == 1 else None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=5e-3, abs_tol=5e-3)


def evaluate_expression(text: str) -> float | None:
    """The value of an arithmetic expression of numbers, + - * / and brackets; None if it is not one."""
    expression = re.sub(OPERATOR, lambda m: f" {SYMBOLS[m.group().strip().lower()]} ", text, flags=re.I)
    try:
        tree = ast.parse(re.sub(r"[,$€£]", "", expression).strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            return ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


def arithmetic_reason(instruction: str, response: str) -> str | None:
    for left, claimed in EQUATION.findall(response):
        actual = evaluate_expression(left)
        if actual is not None and not _close(actual, _number(claimed)):
            return f"arithmetic: states {' '.join(left.split())} = {claimed}, which is {actual:g}"
    expected = posed_result(instruction)
    numbers = [_number(n) for n in re.findall(NUMBER, response)]
    if expected is None or not numbers or any(_close(expected, n) for n in numbers):
        return None
    return f"arithmetic: the request's result is {expected:g}, and the response never gives it"


RULES: tuple[tuple[str, Callable[[str, str], str | None]], ...] = (
    ("runaway", lambda instruction, response: (r := runaway_reason(instruction, response)) and f"runaway: {r}"),
    ("content_free", content_free_reason),
    ("restated", restated_reason),
    ("arithmetic", arithmetic_reason),
)


def rule_reason(instruction: str, response: str, rules: tuple[str, ...] | None = None) -> str | None:
    """The first rule (of `rules`, default all) that rejects the response, as "<rule>: why"; None if none."""
    for name, rule in RULES:
        if rules is None or name in rules:
            reason = rule(instruction, response)
            if reason:
                return reason
    return None
