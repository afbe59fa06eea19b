"""Verifiable instructions: prompts whose constraints a program can check, scored strictly and loosely.

Each prompt in the suite asks for something ordinary ("explain why bread goes stale") under one or
two constraints that need no judge ("in exactly two sentences", "without commas"). A constraint
type is a small frozen dataclass: its fields are its typed parameters, validated when the suite is
loaded, and `check(response)` says whether a response obeys it.

Scoring follows the strict/loose split of verifiable-instruction benchmarks: *strict* means every
check passes on the response as it is; *loose* means every check passes on at least one variant of
it with a preamble line and/or a closing line dropped and/or markdown emphasis removed, so that
"Sure! Here it is:" or a pair of `**` does not hide an otherwise compliant answer.

Shared text rules (every checker uses these):

* word: a maximal run of letters or digits, which may contain an apostrophe, hyphen, period or
  comma *between* two such characters ("don't", "well-known", "3.5", "1,000", "e.g" are one word
  each). Punctuation and markup on their own ("-", "**", "<<") are not words.
* sentence: text is split into lines, and each line at every run of ".", "!" or "?" (optionally
  followed by closing quotes/brackets) that is followed by whitespace or the end of the line. A
  period does not end a sentence after a title (Mr., Dr., St. ...), "e.g."/"i.e."/"vs."/"cf." or a
  letter in a run of initials ("J. K."); after "etc.", "a.m.", "p.m." or "U.S." it ends one only
  when the next word is capitalised. A
  piece counts as a sentence when it holds at least one word. So "3.5 km" is no break (no space
  after the period), and a line without final punctuation (a heading, a list item) is a sentence
  of its own.
"""

from __future__ import annotations

import json
import random
import re
import typing
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .io import InputFileError, read_jsonl
from .prompts import TEMPLATE_DELIMITERS

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "instruction_following.jsonl"

_WORD = re.compile(r"[^\W_]+(?:['’.,\-][^\W_]+)*")
_TERMINATOR = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_NEVER_BREAK = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "mt", "jr", "sr", "vs", "cf", "e.g", "i.e"})
_BREAK_IF_CAPITAL = frozenset({"etc", "a.m", "p.m", "u.s", "approx"})
_TRAILING_PUNCT = ".!?\"'”’)]"


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _breaks_after(line: str, match: re.Match[str]) -> bool:
    if "!" in match.group() or "?" in match.group() or match.group().startswith(".."):
        return True
    before = _WORD_BEFORE.search(line[: match.start() + 1])
    if before is None:
        return True
    word = before.group(1).lower()
    if word in _NEVER_BREAK:
        return False
    if len(word) == 1 and word.isalpha():  # one of a run of initials ("J. K. Rowling")
        letter_at = match.start() - 1
        follows_initial = re.search(r"(?:^|\s)[A-Z]\.\s+$", line[:letter_at]) is not None
        if follows_initial or re.match(r"\s+[A-Z]\.", line[match.end() :]):
            return False
    if word in _BREAK_IF_CAPITAL:
        following = line[match.end() :].lstrip()
        return following[:1].isupper()
    return True


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` under the module's sentence rule, each stripped."""
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _TERMINATOR.finditer(line):
            if _breaks_after(line, match):
                sentences.append(line[start : match.end()].strip())
                start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if count_words(s)]


def _strip_trailing_punct(text: str) -> str:
    return text.rstrip().rstrip(_TRAILING_PUNCT).rstrip()


def _phrase_pattern(phrase: str, anchor: str = "") -> re.Pattern[str]:
    """Whole-word, case-insensitive match of `phrase`, any whitespace between its words; `anchor` is appended."""
    body = r"\s+".join(re.escape(w) for w in phrase.split())
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_]){anchor}", re.IGNORECASE)


class Constraint:
    """A checkable constraint; subclasses are frozen dataclasses whose fields are their parameters."""

    type_id: ClassVar[str]
    description: ClassVar[str]

    def check(self, response: str) -> bool:
        raise NotImplementedError

    def prompt_problem(self, prompt: str) -> str | None:
        """Why this constraint cannot apply to `prompt` (None when it can)."""
        return None


REGISTRY: dict[str, type[Constraint]] = {}
_C = TypeVar("_C", bound=type[Constraint])


def _register(cls: _C) -> _C:
    REGISTRY[cls.type_id] = cls
    return cls


@_register
@dataclass(frozen=True)
class ExactWords(Constraint):
    """Exactly `n` words (see the module docstring for what a word is)."""

    type_id: ClassVar[str] = "length:exact_words"
    description: ClassVar[str] = "the response has exactly n words"
    n: int

    def check(self, response: str) -> bool:
        return count_words(response) == self.n


@_register
@dataclass(frozen=True)
class MaxWords(Constraint):
    """Between one and `n` words."""

    type_id: ClassVar[str] = "length:max_words"
    description: ClassVar[str] = "the response has at least one and at most n words"
    n: int

    def check(self, response: str) -> bool:
        return 1 <= count_words(response) <= self.n


@_register
@dataclass(frozen=True)
class ExactSentences(Constraint):
    """Exactly `n` sentences (see the module docstring for the sentence rule)."""

    type_id: ClassVar[str] = "length:exact_sentences"
    description: ClassVar[str] = "the response has exactly n sentences"
    n: int

    def check(self, response: str) -> bool:
        return len(split_sentences(response)) == self.n


@_register
@dataclass(frozen=True)
class OneWord(Constraint):
    """A single word, optionally followed by final punctuation ("Jupiter." passes)."""

    type_id: ClassVar[str] = "length:one_word"
    description: ClassVar[str] = "the response is a single word"

    def check(self, response: str) -> bool:
        text = _strip_trailing_punct(response.strip())
        return _WORD.fullmatch(text) is not None


@_register
@dataclass(frozen=True)
class BulletList(Constraint):
    """Exactly `n` lines that start with "- " or "* " (after indentation); other lines are allowed."""

    type_id: ClassVar[str] = "format:bullet_list"
    description: ClassVar[str] = "the response has exactly n markdown bullet points"
    n: int
    _BULLET: ClassVar[re.Pattern[str]] = re.compile(r"^\s*[-*][ \t]+\S", re.MULTILINE)

    def check(self, response: str) -> bool:
        return len(self._BULLET.findall(response)) == self.n


@_register
@dataclass(frozen=True)
class NumberedList(Constraint):
    """Lines starting "1." or "1)" ... numbered 1 to `n` in order, each on its own line, and no others."""

    type_id: ClassVar[str] = "format:numbered_list"
    description: ClassVar[str] = "the response has a numbered list of exactly n items"
    n: int
    _ITEM: ClassVar[re.Pattern[str]] = re.compile(r"^\s*(\d+)[.)][ \t]+\S", re.MULTILINE)

    def check(self, response: str) -> bool:
        return [int(m) for m in self._ITEM.findall(response)] == list(range(1, self.n + 1))


@_register
@dataclass(frozen=True)
class StartsWith(Constraint):
    """The stripped response begins with `text` (case-insensitive), followed by a non-letter."""

    type_id: ClassVar[str] = "start:starts_with"
    description: ClassVar[str] = "the response starts with a given word or phrase"
    text: str

    def check(self, response: str) -> bool:
        return _phrase_pattern(self.text).match(response.strip()) is not None


@_register
@dataclass(frozen=True)
class EndsWith(Constraint):
    """The stripped response ends with `text` (case-insensitive), ignoring final punctuation on both."""

    type_id: ClassVar[str] = "end:ends_with"
    description: ClassVar[str] = "the response ends with a given word or phrase"
    text: str

    def check(self, response: str) -> bool:
        pattern = _phrase_pattern(_strip_trailing_punct(self.text), anchor=r"\Z")
        return pattern.search(_strip_trailing_punct(response)) is not None


@_register
@dataclass(frozen=True)
class RepeatRequest(Constraint):
    """The response starts with `text` verbatim (case-sensitive, whitespace runs equal), then answers it."""

    type_id: ClassVar[str] = "start:repeat_request"
    description: ClassVar[str] = "the response repeats the request word for word, then answers it"
    text: str

    def check(self, response: str) -> bool:
        said, wanted = " ".join(response.split()), " ".join(self.text.split())
        return said.startswith(wanted) and count_words(said[len(wanted) :]) > 0

    def prompt_problem(self, prompt: str) -> str | None:
        return None if self.text in prompt else "the text to repeat does not occur in the prompt"


@_register
@dataclass(frozen=True)
class IncludeKeywords(Constraint):
    """Every keyword occurs as a whole word or phrase, case-insensitive ("river" is not found in "rivers")."""

    type_id: ClassVar[str] = "keywords:include"
    description: ClassVar[str] = "the response mentions every given keyword"
    keywords: tuple[str, ...]

    def check(self, response: str) -> bool:
        return all(_phrase_pattern(k).search(response) for k in self.keywords)


@_register
@dataclass(frozen=True)
class ExcludeKeywords(Constraint):
    """No keyword occurs as a whole word or phrase, case-insensitive; the response is not empty."""

    type_id: ClassVar[str] = "keywords:exclude"
    description: ClassVar[str] = "the response avoids every given keyword"
    keywords: tuple[str, ...]

    def check(self, response: str) -> bool:
        return count_words(response) > 0 and not any(_phrase_pattern(k).search(response) for k in self.keywords)


class _OneCase(Constraint):
    """Has at least one letter, and none of the other case."""

    case: ClassVar[str]  # the name of the str method that gives the wanted case: "lower" or "upper"

    def check(self, response: str) -> bool:
        return any(c.isalpha() for c in response) and response == getattr(response, self.case)()


@_register
@dataclass(frozen=True)
class Lowercase(_OneCase):
    type_id: ClassVar[str] = "case:lowercase"
    description: ClassVar[str] = "the response is entirely in lowercase letters"
    case: ClassVar[str] = "lower"


@_register
@dataclass(frozen=True)
class Uppercase(_OneCase):
    type_id: ClassVar[str] = "case:uppercase"
    description: ClassVar[str] = "the response is entirely in capital letters"
    case: ClassVar[str] = "upper"


@_register
@dataclass(frozen=True)
class NoCommas(Constraint):
    """Has at least one word and no comma (ASCII or full-width)."""

    type_id: ClassVar[str] = "punctuation:no_commas"
    description: ClassVar[str] = "the response contains no commas"

    def check(self, response: str) -> bool:
        return count_words(response) > 0 and "," not in response and "，" not in response


@_register
@dataclass(frozen=True)
class JsonObject(Constraint):
    """The whole stripped response parses as one JSON object that has every key in `keys`."""

    type_id: ClassVar[str] = "format:json_keys"
    description: ClassVar[str] = "the response is a JSON object with the given keys"
    keys: tuple[str, ...]

    def check(self, response: str) -> bool:
        try:
            value = json.loads(response.strip())
        except ValueError:
            return False
        return isinstance(value, dict) and all(k in value for k in self.keys)


@_register
@dataclass(frozen=True)
class Title(Constraint):
    """Contains a title: a non-blank text on one line between "<<" and ">>"."""

    type_id: ClassVar[str] = "format:title"
    description: ClassVar[str] = "the response contains a title wrapped in double angular brackets"
    _TITLE: ClassVar[re.Pattern[str]] = re.compile(r"<<[^<>\n]*[^\W_][^<>\n]*>>")

    def check(self, response: str) -> bool:
        return self._TITLE.search(response) is not None


@_register
@dataclass(frozen=True)
class YesNo(Constraint):
    """Exactly "yes" or "no", any case, with an optional final period."""

    type_id: ClassVar[str] = "answer:yes_no"
    description: ClassVar[str] = "the response is only 'yes' or 'no'"

    def check(self, response: str) -> bool:
        return re.fullmatch(r"(?:yes|no)\.?", response.strip(), re.IGNORECASE) is not None


@_register
@dataclass(frozen=True)
class Quoted(Constraint):
    """The stripped response starts and ends with a double quote (straight or curly) and has words inside."""

    type_id: ClassVar[str] = "format:quoted"
    description: ClassVar[str] = "the whole response is wrapped in double quotation marks"

    def check(self, response: str) -> bool:
        text = response.strip()
        return len(text) >= 2 and text[0] in '"“' and text[-1] in '"”' and count_words(text[1:-1]) > 0


@_register
@dataclass(frozen=True)
class Postscript(Constraint):
    """A body, then a final paragraph starting "P.S." (case-insensitive, "P. S." too) with words after it."""

    type_id: ClassVar[str] = "end:postscript"
    description: ClassVar[str] = "the response ends with a postscript starting with P.S."
    _MARK: ClassVar[re.Pattern[str]] = re.compile(r"^[ \t]*p\.[ \t]?s\.", re.IGNORECASE | re.MULTILINE)

    def check(self, response: str) -> bool:
        marks = list(self._MARK.finditer(response))
        if not marks:
            return False
        body, note = response[: marks[-1].start()], response[marks[-1].end() :]
        return count_words(body) > 0 and count_words(note) > 0 and not re.search(r"\n[ \t]*\n\s*\S", note)


def _coerce(cls: type[Constraint], params: Any) -> dict[str, Any]:
    """The constructor arguments for `cls` from raw JSON params; ValueError says what is wrong."""
    if not isinstance(params, dict):
        raise ValueError(f"params must be an object, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    wanted = {f.name: hints[f.name] for f in fields(cls)}  # type: ignore[arg-type]
    unknown, missing = sorted(set(params) - set(wanted)), sorted(set(wanted) - set(params))
    if unknown or missing:
        raise ValueError(f"expects parameters {sorted(wanted)}; unknown {unknown}, missing {missing}")
    out: dict[str, Any] = {}
    for name, hint in wanted.items():
        value = params[name]
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"parameter {name!r} must be a positive integer, got {value!r}")
        elif hint is str:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"parameter {name!r} must be a non-empty string, got {value!r}")
        elif typing.get_origin(hint) is tuple:
            if (not isinstance(value, list) or not value
                    or not all(isinstance(v, str) and v.strip() for v in value)):  # fmt: skip
                raise ValueError(f"parameter {name!r} must be a non-empty list of non-empty strings, got {value!r}")
            value = tuple(value)
        else:  # a constraint declared a parameter type this loader does not know
            raise TypeError(f"{cls.__name__}.{name}: unsupported parameter type {hint}")
        out[name] = value
    return out


def build_constraint(type_id: str, params: Any) -> Constraint:
    """The checker for one (type_id, params) pair; ValueError on an unknown type or bad parameters."""
    cls = REGISTRY.get(type_id)
    if cls is None:
        raise ValueError(f"unknown constraint type {type_id!r}")
    return cls(**_coerce(cls, params))


@dataclass(frozen=True)
class IFPrompt:
    id: str
    prompt: str
    # (type_id, params as in the file); left out of the hash because params are dicts
    checks: tuple[tuple[str, dict[str, Any]], ...] = field(hash=False)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.checks)

    def constraints(self) -> tuple[Constraint, ...]:
        return tuple(build_constraint(t, p) for t, p in self.checks)


@dataclass(frozen=True)
class CheckResult:
    type_id: str
    strict: bool
    loose: bool  # passes on some loose variant; `IFResult.loose` needs one variant passing all checks


@dataclass(frozen=True)
class IFResult:
    prompt_id: str
    strict: bool
    loose: bool
    checks: tuple[CheckResult, ...]


def _remove_emphasis(text: str) -> str:
    """Drop `*`, `_` and backticks, keeping a "* " bullet marker at the start of a line."""
    lines = []
    for line in text.split("\n"):
        bullet = re.match(r"[ \t]*\*[ \t]+(?=\S)", line)
        keep = bullet.group() if bullet else ""
        lines.append(keep + re.sub(r"[*_`]", "", line[len(keep) :]))
    return "\n".join(lines)


def loose_variants(response: str) -> list[str]:
    """The response and its variants: first and/or last line dropped, each with and without emphasis, stripped."""
    lines = response.strip().split("\n")
    cuts = [lines, lines[1:], lines[:-1], lines[1:-1]]
    out: list[str] = [response]
    for kept in cuts:
        text = "\n".join(kept).strip()
        for variant in (text, _remove_emphasis(text).strip()):
            if variant not in out:
                out.append(variant)
    return out


def evaluate(prompt: IFPrompt, response: str) -> IFResult:
    """Strict: every check passes on `response` as is. Loose: every check passes on one loose variant."""
    constraints = prompt.constraints()
    grid = [[c.check(v) for c in constraints] for v in loose_variants(response)]
    checks = tuple(CheckResult(c.type_id, grid[0][k], any(row[k] for row in grid)) for k, c in enumerate(constraints))
    return IFResult(prompt.id, all(grid[0]), any(all(row) for row in grid), checks)


def by_type(results: Iterable[IFResult]) -> dict[str, dict[str, int]]:
    """Per constraint type: how many checks ran and how many passed strictly and loosely."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for result in results:
        for check in result.checks:
            counts[check.type_id].update(checks=1, strict=int(check.strict), loose=int(check.loose))
    return {t: {k: c[k] for k in ("checks", "strict", "loose")} for t, c in sorted(counts.items())}


def load_suite(path: Path = DEFAULT_SUITE) -> tuple[IFPrompt, ...]:
    """Every prompt of the suite, validated; InputFileError names the file and line of any problem."""
    path = Path(path)
    rows = read_jsonl(path, required=("id", "prompt"))
    # read_jsonl skips blank lines and keeps one row per other line: this maps rows back to lines
    line_numbers = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    suite = []
    for row, line_no in zip(rows, line_numbers, strict=True):
        where = f"{path}:{line_no}"
        text = row["prompt"]
        for delimiter in TEMPLATE_DELIMITERS:
            if delimiter in text:
                raise InputFileError(f"{where}: prompt contains the template delimiter {delimiter!r}")
        raw_checks = row.get("checks")
        if not isinstance(raw_checks, list) or not raw_checks:
            raise InputFileError(f"{where}: 'checks' must be a non-empty list")
        checks = []
        for k, raw in enumerate(raw_checks, start=1):
            type_id = raw.get("type") if isinstance(raw, dict) else None
            params = raw.get("params", {}) if isinstance(raw, dict) else None
            try:
                problem = build_constraint(str(type_id), params).prompt_problem(text)
            except ValueError as exc:
                raise InputFileError(f"{where}: check {k} ({type_id!r}): {exc}") from None
            if problem:
                raise InputFileError(f"{where}: check {k} ({type_id!r}): {problem}")
            checks.append((str(type_id), dict(params)))
        if len({t for t, _ in checks}) < len(checks):
            raise InputFileError(f"{where}: the same constraint type appears twice")
        suite.append(IFPrompt(str(row["id"]), text, tuple(checks)))
    return tuple(suite)


_T = TypeVar("_T")


def stratified_subset(items: Sequence[_T], n: int, seed: int, key: Callable[[_T], Hashable]) -> tuple[_T, ...]:
    """`n` items spread as evenly as possible over the groups `key` defines, in their input order.

    Each group is shuffled with `seed`; items are then taken one per group in turn (groups in a
    seeded order, a group dropping out when used up) until `n` are chosen. All items when n >= len.
    """
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    rng = random.Random(seed)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    queues = []
    for name in sorted(groups, key=str):
        members = groups[name][:]
        rng.shuffle(members)
        queues.append(members)
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < min(n, len(items)):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return tuple(items[i] for i in sorted(chosen))


def select_subset(prompts: Sequence[IFPrompt], n: int, seed: int) -> tuple[IFPrompt, ...]:
    """A deterministic subset of `n` prompts, stratified by the type of each prompt's first check."""
    return stratified_subset(prompts, n, seed, key=lambda p: p.checks[0][0])
