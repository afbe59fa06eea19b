import json
from collections import Counter
from pathlib import Path

import pytest

from stage1_assets.core import instruction_following as inf
from stage1_assets.core.io import InputFileError

from ..support import exemplar_overlaps

CAT = {"text": "What do you call a baby cat?"}

# (type_id, params, response, passes)
CASES = [
    ("length:exact_words", {"n": 3}, "Bright warm light.", True),
    ("length:exact_words", {"n": 3}, "  Bright warm light.  \n", True),
    ("length:exact_words", {"n": 4}, "It is 3.5 km.", True),
    ("length:exact_words", {"n": 4}, "Don't touch well-known **wires**", True),
    ("length:exact_words", {"n": 3}, "Bright, warm, golden light.", False),
    ("length:exact_words", {"n": 2}, "- one", False),
    ("length:max_words", {"n": 3}, "Just three words", True),
    ("length:max_words", {"n": 3}, "Now four words here", False),
    ("length:max_words", {"n": 3}, "  \n", False),
    ("length:exact_sentences", {"n": 2}, "Bread dries out. Its starch hardens.", True),
    ("length:exact_sentences", {"n": 2}, "The trail is 3.5 km long. It takes an hour.  ", True),
    ("length:exact_sentences", {"n": 1}, "Eat fruit, e.g. apples, every day.", True),
    ("length:exact_sentences", {"n": 3}, "Dr. Lee came at 9 a.m. and left. Why? Nobody knows!", True),
    ("length:exact_sentences", {"n": 2}, "Heading\nThe body is one sentence.", True),
    ("length:exact_sentences", {"n": 1}, "It was written by J. K. Rowling.", True),
    ("length:exact_sentences", {"n": 2}, "I pick B. Then I stop.", True),
    ("length:exact_sentences", {"n": 2}, "Only one sentence here.", False),
    ("length:exact_sentences", {"n": 1}, "We ate apples, pears, etc. Then we slept.", False),
    ("length:one_word", {}, "Jupiter.", True),
    ("length:one_word", {}, " jupiter \n", True),
    ("length:one_word", {}, "The planet Jupiter.", False),
    ("length:one_word", {}, "**Jupiter**", False),
    ("format:bullet_list", {"n": 2}, "Two reasons:\n- fun\n* safety", True),
    ("format:bullet_list", {"n": 1}, "**Bold** heading\n- one", True),
    ("format:bullet_list", {"n": 2}, "- fun\n- safety\n- health", False),
    ("format:bullet_list", {"n": 2}, "1. fun\n2. safety", False),
    ("format:numbered_list", {"n": 3}, "Steps:\n1. Boil water\n2) Add tea\n3. Wait", True),
    ("format:numbered_list", {"n": 3}, "1. Boil water\n2. Add tea", False),
    ("format:numbered_list", {"n": 2}, "1. Boil water\n3. Add tea", False),
    ("format:numbered_list", {"n": 2}, "1. Boil. 2. Pour.", False),
    ("start:starts_with", {"text": "In short"}, "  in short, gravity pulls.", True),
    ("start:starts_with", {"text": "Fun fact:"}, "Fun fact: octopuses have blue blood.", True),
    ("start:starts_with", {"text": "Yes"}, "Yesterday it rained.", False),
    ("start:starts_with", {"text": "In short"}, "Well, in short, gravity pulls.", False),
    ("end:ends_with", {"text": "Enjoy your visit"}, "Welcome to the zoo. Enjoy your visit!\n", True),
    ("end:ends_with", {"text": "That is all."}, "Plants need light. That is all", True),
    ("end:ends_with", {"text": "night"}, "Stars shine at midnight.", False),
    ("end:ends_with", {"text": "Enjoy your visit"}, "Enjoy your visit. See you soon.", False),
    ("start:repeat_request", CAT, "What do you call a baby cat? A kitten.", True),
    ("start:repeat_request", CAT, "What do you call a  baby cat?\nA kitten.", True),
    ("start:repeat_request", CAT, "what do you call a baby cat? A kitten.", False),
    ("start:repeat_request", CAT, "What do you call a baby cat?", False),
    ("start:repeat_request", CAT, "A kitten.", False),
    ("keywords:include", {"keywords": ["tractor", "barn"]}, "The Tractor sat in the barn.", True),
    ("keywords:include", {"keywords": ["ice cream"]}, "I like ice\ncream.", True),
    ("keywords:include", {"keywords": ["tractor", "barn"]}, "The tractor sat in the barns.", False),
    ("keywords:include", {"keywords": ["tractor", "barn"]}, "A barn.", False),
    ("keywords:exclude", {"keywords": ["hot", "bright"]}, "The Sun is a shining star that gets hotter.", True),
    ("keywords:exclude", {"keywords": ["hot", "bright"]}, "The Sun is very HOT.", False),
    ("keywords:exclude", {"keywords": ["hot"]}, "", False),
    ("case:lowercase", {}, "all quiet on a sunday.\n", True),
    ("case:lowercase", {}, "all quiet on a Sunday.", False),
    ("case:lowercase", {}, "123 456", False),
    ("case:uppercase", {}, "CAUTION: WET FLOOR 2 M AHEAD!", True),
    ("case:uppercase", {}, "CAUTION: wet floor", False),
    ("punctuation:no_commas", {}, "Rain falls and the river rises.", True),
    ("punctuation:no_commas", {}, "Rain falls, the river rises.", False),
    ("punctuation:no_commas", {}, "Rain falls，the river rises.", False),
    ("format:json_keys", {"keys": ["name", "color"]}, ' {"name": "plum", "color": "purple", "size": 3}\n', True),
    ("format:json_keys", {"keys": ["name", "color"]}, '{"name": "plum"}', False),
    ("format:json_keys", {"keys": ["name"]}, '["name"]', False),
    ("format:json_keys", {"keys": ["name"]}, 'Here it is: {"name": "plum"}', False),
    ("format:json_keys", {"keys": ["name"]}, '```json\n{"name": "plum"}\n```', False),
    ("format:title", {}, "<<Moonlight>>\nThe moon is bright.", True),
    ("format:title", {}, "A poem <<  >> here", False),
    ("format:title", {}, "<Moonlight>\nThe moon.", False),
    ("answer:yes_no", {}, "Yes", True),
    ("answer:yes_no", {}, " no.\n", True),
    ("answer:yes_no", {}, "NO", True),
    ("answer:yes_no", {}, "Yes, it is.", False),
    ("answer:yes_no", {}, "Maybe.", False),
    ("format:quoted", {}, '"Fresh Crumbs Bakery"', True),
    ("format:quoted", {}, "“Rise and shine.”\n", True),
    ("format:quoted", {}, 'Fresh "Crumbs" Bakery', False),
    ("format:quoted", {}, '""', False),
    ("end:postscript", {}, "See you Saturday!\n\nP.S. Bring a chair.", True),
    ("end:postscript", {}, "See you Saturday!\np.s. bring a chair", True),
    ("end:postscript", {}, "P.S. Bring a chair.", False),
    ("end:postscript", {}, "See you!\nP.S. Bring a chair.\n\nBest wishes, Ana", False),
    ("end:postscript", {}, "See you! PS bring a chair.", False),
]


@pytest.mark.parametrize("type_id, params, response, passes", CASES)
def test_checker(type_id, params, response, passes):
    assert inf.build_constraint(type_id, params).check(response) is passes


def test_every_registered_checker_has_passing_and_failing_cases():
    outcomes = {(t, passes) for t, _, _, passes in CASES}
    assert {t for t, _ in outcomes} == set(inf.REGISTRY)
    assert all((t, True) in outcomes and (t, False) in outcomes for t in inf.REGISTRY)
    assert all(cls.type_id == t and cls.description for t, cls in inf.REGISTRY.items())


def test_word_and_sentence_counting():
    assert inf.count_words("It's 1,000 km - about 3.5 hours, e.g. by car.") == 9
    assert inf.split_sentences("Mr. Smith left. He was 3.5 m tall!\n- a bullet") == [
        "Mr. Smith left.",
        "He was 3.5 m tall!",
        "- a bullet",
    ]


def prompt(*checks, text="Do it."):
    return inf.IFPrompt("p", text, tuple(checks))


@pytest.mark.parametrize(
    "check, response",
    [
        (("start:starts_with", {"text": "Certainly"}), "Sure! Here it is:\nCertainly, a map shows places."),
        (("format:json_keys", {"keys": ["name"]}), '```json\n{"name": "plum"}\n```'),
        (("length:one_word", {}), "**Jupiter**"),
        (("answer:yes_no", {}), "`Yes`"),
        (("end:ends_with", {"text": "good luck"}), "Water often and good luck.\nLet me know if you need more."),
    ],
)
def test_fails_strictly_passes_loosely(check, response):
    result = inf.evaluate(prompt(check), response)
    assert (result.strict, result.loose) == (False, True)
    assert (result.checks[0].strict, result.checks[0].loose) == (False, True)


def test_fails_strictly_and_loosely():
    result = inf.evaluate(prompt(("start:starts_with", {"text": "Certainly"})), "Here you go:\nA map shows places.")
    assert (result.strict, result.loose) == (False, False)


def test_loose_needs_one_variant_passing_every_check():
    # the start check passes only with the first line kept, the sentence count only with it dropped
    checks = (("start:starts_with", {"text": "Sure"}), ("length:exact_sentences", {"n": 1}))
    result = inf.evaluate(prompt(*checks), "Sure.\nThe answer.\nBye.")
    assert [(c.strict, c.loose) for c in result.checks] == [(True, True), (False, True)]
    assert (result.strict, result.loose) == (False, False)


def test_strict_pass_is_a_loose_pass():
    result = inf.evaluate(prompt(("case:lowercase", {}), ("punctuation:no_commas", {})), "all good here\n")
    assert result.strict and result.loose and all(c.strict and c.loose for c in result.checks)


def test_loose_variants():
    variants = inf.loose_variants("Intro:\n* **one** and `two`\nOutro")
    assert variants[0] == "Intro:\n* **one** and `two`\nOutro"
    assert "* **one** and `two`" in variants and "* one and two" in variants
    assert "Intro:\n* one and two" in variants


def test_by_type_counts_each_check():
    two = prompt(("case:lowercase", {}), ("punctuation:no_commas", {}))
    one = prompt(("case:lowercase", {}))
    results = [inf.evaluate(two, "fine, thanks"), inf.evaluate(one, "Fine"), inf.evaluate(one, "**fine**\n")]
    assert inf.by_type(results) == {
        "case:lowercase": {"checks": 3, "strict": 2, "loose": 2},
        "punctuation:no_commas": {"checks": 1, "strict": 0, "loose": 0},
    }


@pytest.fixture(scope="module")
def suite():
    return inf.load_suite()


def test_shipped_suite_counts(suite):
    assert len(suite) >= 220
    prompts_per_type = Counter(t for p in suite for t in set(p.types))
    assert set(prompts_per_type) == set(inf.REGISTRY) and len(prompts_per_type) >= 16
    assert min(prompts_per_type.values()) >= 10, prompts_per_type
    assert 0.15 <= sum(len(p.checks) == 2 for p in suite) / len(suite) <= 0.3
    assert all(len(p.checks) <= 2 for p in suite)
    assert all("Instruction:" not in p.prompt and "Response:" not in p.prompt for p in suite)


def test_shipped_prompts_are_distinct_and_disjoint_from_the_exemplars(suite):
    assert exemplar_overlaps([p.prompt for p in suite]) == ({}, [], [])


def test_no_check_is_vacuous(suite):
    for p in suite:
        assert not any(c.strict or c.loose for c in inf.evaluate(p, "").checks), p.id


CONTRADICTIONS = [
    {"case:lowercase", "case:uppercase"},
    {"keywords:include", "keywords:exclude"},
    {"answer:yes_no", "length:exact_words"},
    {"format:json_keys", "format:title"},
    {"format:json_keys", "format:quoted"},
    {"length:one_word", "format:bullet_list"},
    {"length:one_word", "format:numbered_list"},
]


def test_no_prompt_has_contradictory_checks(suite):
    for p in suite:
        assert not any(pair <= set(p.types) for pair in CONTRADICTIONS), p.id


FILLER = ["calm", "green", "field", "stone", "quiet", "morning", "garden", "window", "paper", "cloud", "bread", "lamp"]


def canned(p: inf.IFPrompt) -> str:
    """A response built to satisfy every check of `p` (for the combinations the suite uses)."""
    params = dict(p.checks)
    banned = {k.lower() for k in params.get("keywords:exclude", {}).get("keywords", [])}
    words = [w for k in params.get("keywords:include", {}).get("keywords", []) for w in k.split()]
    words += [w for w in FILLER if w not in banned]
    content = " ".join(words[: max(4, len(words) - len(FILLER) + 2)])
    if "length:exact_words" in params:
        body = " ".join(words[i % len(words)] for i in range(params["length:exact_words"]["n"])) + "."
    elif "length:one_word" in params:
        body = "Green."
    elif "answer:yes_no" in params:
        body = "Yes."
    elif "format:json_keys" in params:
        body = json.dumps({k: "value" for k in params["format:json_keys"]["keys"]})
    elif "format:bullet_list" in params:
        body = "\n".join(f"- {content}" for _ in range(params["format:bullet_list"]["n"]))
    elif "format:numbered_list" in params:
        body = "\n".join(f"{i}. {content}" for i in range(1, params["format:numbered_list"]["n"] + 1))
    elif "length:exact_sentences" in params:
        body = " ".join(f"{content.capitalize()}." for _ in range(params["length:exact_sentences"]["n"]))
    elif "format:quoted" in params:
        body = f'"{content}."'
    elif "format:title" in params:
        body = f"<<{FILLER[0]}>>\n{content}."
    elif "end:postscript" in params:
        body = f"{content}.\n\nP.S. {content}."
    else:
        body = f"{content}."
    if "start:repeat_request" in params:
        body = f"{params['start:repeat_request']['text']} {body}"
    if "start:starts_with" in params:
        body = f"{params['start:starts_with']['text']} {body}"
    if "end:ends_with" in params:
        body = f"{body.rstrip('.')} {params['end:ends_with']['text']}"
    if "case:lowercase" in params:
        body = body.lower()
    if "case:uppercase" in params:
        body = body.upper()
    return body


def test_every_shipped_prompt_can_be_satisfied(suite):
    failing = {p.id: canned(p) for p in suite if not inf.evaluate(p, canned(p)).strict}
    assert failing == {}


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def line(id_: str, checks, text="Describe a cat.") -> str:
    return json.dumps({"id": id_, "prompt": text, "checks": checks})


GOOD = line("a", [{"type": "length:exact_words", "params": {"n": 3}}])


@pytest.mark.parametrize(
    "bad, message",
    [
        (line("b", [{"type": "length:made_up", "params": {}}]), "unknown constraint type 'length:made_up'"),
        (line("b", [{"type": "length:exact_words", "params": {"n": "two"}}]), "'n' must be a positive integer"),
        (line("b", [{"type": "length:exact_words", "params": {"n": 0}}]), "'n' must be a positive integer"),
        (line("b", [{"type": "length:exact_words", "params": {"n": True}}]), "'n' must be a positive integer"),
        (line("b", [{"type": "length:exact_words", "params": {}}]), "missing ['n']"),
        (line("b", [{"type": "case:lowercase", "params": {"n": 1}}]), "unknown ['n']"),
        (line("b", [{"type": "keywords:include", "params": {"keywords": "cat"}}]), "'keywords' must be a non-empty"),
        (line("b", [{"type": "keywords:include", "params": {"keywords": []}}]), "'keywords' must be a non-empty"),
        (line("b", [{"type": "start:starts_with", "params": {"text": " "}}]), "'text' must be a non-empty string"),
        (line("b", [{"type": "start:repeat_request", "params": {"text": "Why?"}}]), "does not occur in the prompt"),
        (line("b", [{"type": "case:lowercase"}, {"type": "case:lowercase"}]), "appears twice"),
        (line("b", []), "'checks' must be a non-empty list"),
        (line("b", [{"type": "case:lowercase"}], text="Instruction: be brief."), "template delimiter"),
        (line("a", [{"type": "case:lowercase"}]), "duplicate id 'a'"),
    ],
)
def test_load_suite_refuses_a_bad_line(tmp_path, bad, message):
    path = write(tmp_path, [GOOD, "", bad])
    with pytest.raises(InputFileError) as err:
        inf.load_suite(path)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


def test_load_suite_error_names_the_type(tmp_path):
    path = write(tmp_path, [line("b", [{"type": "case:lowercase"}, {"type": "length:max_words", "params": {"n": -1}}])])
    with pytest.raises(InputFileError, match=r"suite\.jsonl:1: check 2 \('length:max_words'\)"):
        inf.load_suite(path)


def test_load_suite_reads_a_good_file(tmp_path):
    (loaded,) = inf.load_suite(write(tmp_path, [GOOD]))
    assert loaded == inf.IFPrompt("a", "Describe a cat.", (("length:exact_words", {"n": 3}),))
    assert isinstance(loaded.constraints()[0], inf.ExactWords)


def test_select_subset(suite):
    first_types = {p.types[0] for p in suite}
    subset = inf.select_subset(suite, 40, seed=7)
    assert len(subset) == 40 and subset == inf.select_subset(suite, 40, seed=7)
    assert subset != inf.select_subset(suite, 40, seed=8)
    order = {p.id: i for i, p in enumerate(suite)}
    assert [order[p.id] for p in subset] == sorted(order[p.id] for p in subset)
    per_type = Counter(p.types[0] for p in subset)
    assert set(per_type) == first_types and max(per_type.values()) - min(per_type.values()) <= 1
    assert {p.types[0] for p in inf.select_subset(suite, len(first_types), seed=1)} == first_types
    assert inf.select_subset(suite, 10_000, seed=1) == suite and inf.select_subset(suite, 0, seed=1) == ()
    with pytest.raises(ValueError):
        inf.select_subset(suite, -1, seed=1)
