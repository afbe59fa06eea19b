import math

import pytest

from stage1_assets.core.config import QCThresholds
from stage1_assets.core.qc import flag_frame, qc_summary

DETAILED = (
    "To repot a plant, water it a day ahead so the root ball holds together. Choose a pot one size larger "
    "with a drainage hole, add a layer of fresh potting mix, then tip the plant out, loosen circling roots "
    "and set it at the same depth as before. Fill around it with mix, firm gently, water thoroughly and "
    "keep it out of strong sun for a week while the roots recover. Mist the leaves if the air is dry."
)


def row(i, response, finish="stop", tokens=20, accepted=True, score=1.5):
    return {"id": f"r-{i}", "instruction": f"instruction {i}", "response": response, "finish_reason": finish,
            "response_tokens": tokens, "accepted": accepted, "critic_score": score}  # fmt: skip


def flags(response, **kw):
    return flag_frame([row(0, response, **kw)], QCThresholds()).to_dicts()[0]


def test_long_detailed_answer_is_not_a_runaway():
    assert 350 < len(DETAILED) <= 500
    assert not flags(DETAILED)["runaway"]


@pytest.mark.parametrize(
    "response",
    [
        "Paris is the capital.\nInstruction: Name the capital of Spain.",
        "Four.\nQ: What is 3 + 3?",
        "Sure.\n\nUser: thanks",
        "Done.\n### Next task",
        "It is 12.\nQuestion 2: what is 5 x 5?",
        "Instruction: write a poem",
    ],
)
def test_new_prompt_turn_is_a_runaway(response):
    flagged = flags(response)
    assert flagged["runaway"]
    assert flagged["runaway_why"].startswith("starts a new prompt (labelled_turn)")


def test_over_500_chars_is_a_runaway_with_the_length_as_reason():
    flagged = flags(DETAILED + " " + DETAILED)
    assert flagged["runaway"] and "chars > 500" in flagged["runaway_why"]


def test_unlabelled_new_questions_are_runaways_but_a_heading_is_not():
    flagged = flags("The answer is Venus.\n\n1. What is the temperature of the Sun?\n2. How far is the Moon?")
    assert flagged["runaway"] and flagged["runaway_why"].startswith("starts a new prompt (numbered_question)")
    assert not flags("## Steps\nWater the plant, then move it to a larger pot.")["runaway"]


def test_inline_question_mark_or_q_word_is_not_a_runaway():
    assert not flags("Q is the 17th letter; the question: is it a vowel? No.")["runaway"]


def test_delimiter_leakage_and_token_limit_flags():
    leaked = flags("The answer is 4. Response: also 4")
    assert leaked["delimiter_leak"] and "Response:" in leaked["delimiter_why"]
    assert not flags("The answer is 4.")["delimiter_leak"]
    assert flags("cut off mid", finish="length")["hit_token_limit"]
    assert not flags("complete", finish="eos")["hit_token_limit"]


def test_summary_values_pass_fail_and_flagged_examples():
    rows = [row(i, "A short good answer.", tokens=10 + i) for i in range(18)]
    rows.append(row(18, "Yes.\nQ: next question?", finish="length", tokens=100, accepted=False, score=0.2))
    rows.append(row(19, "Leaky Instruction: text", tokens=90, accepted=False, score=-0.3))
    summary = qc_summary(rows, QCThresholds())
    m = summary["metrics"]
    assert m["runaway_rate"]["value"] == pytest.approx(1 / 20) and not m["runaway_rate"]["passed"]
    assert m["runaway_rate"]["flagged_ids"] == ["r-18"]
    assert m["token_limit_rate"]["value"] == pytest.approx(0.05) and m["token_limit_rate"]["passed"]
    assert m["delimiter_leakage"]["value"] == 1 and not m["delimiter_leakage"]["passed"]
    assert m["delimiter_leakage"]["examples"][0]["id"] == "r-19"
    assert m["pair_acceptance"]["value"] == pytest.approx(0.9) and m["pair_acceptance"]["passed"]
    assert [e["id"] for e in m["pair_acceptance"]["examples"]] == ["r-19", "r-18"]  # lowest score first
    assert m["median_response_tokens"]["value"] == pytest.approx(19.5) and m["median_response_tokens"]["passed"]
    assert not summary["passed"]
    strict = qc_summary(rows, QCThresholds(max_median_response_tokens=5))
    assert not strict["metrics"]["median_response_tokens"]["passed"]


def test_length_bias_warns_when_accepted_answers_are_much_shorter():
    rows = [row(i, "short", tokens=8, accepted=True, score=2.0) for i in range(6)]
    rows += [row(6 + i, "long answer", tokens=40, accepted=False, score=0.3) for i in range(6)]
    bias = qc_summary(rows, QCThresholds())["length_bias"]
    assert bias["accepted_median_tokens"] == 8 and bias["rejected_median_tokens"] == 40
    assert bias["median_ratio"] == pytest.approx(0.2) and not bias["passed"]
    assert bias["pearson_tokens_score"] == pytest.approx(-1.0)
    assert [b["tokens"] for b in bias["by_length"]] == ["0–9", "40–79"]
    assert [b["acceptance"] for b in bias["by_length"]] == [1.0, 0.0]


def test_length_bias_passes_when_lengths_are_alike_or_there_is_too_little_to_compare():
    rows = [row(i, "answer", tokens=20 + i % 3, accepted=i % 2 == 0, score=1.0 + i % 2) for i in range(10)]
    assert qc_summary(rows, QCThresholds())["length_bias"]["passed"]
    few_rejected = [row(i, "a", tokens=8) for i in range(10)] + [row(10, "b", tokens=60, accepted=False, score=0.2)]
    bias = qc_summary(few_rejected, QCThresholds())["length_bias"]
    assert bias["passed"] and not bias["comparable"] and math.isnan(bias["median_ratio"])


def test_length_bias_leaves_out_answers_a_rule_rejected():
    """A cut-off runaway is long by nature: rejecting it by rule says nothing about the score's taste."""
    rows = [row(i, "short", tokens=8, score=2.0) for i in range(6)]
    rows += [row(6 + i, "short too", tokens=9, accepted=False, score=0.5) for i in range(6)]
    rows += [{**row(12 + i, "1. What?\n2. Why?", tokens=99, accepted=False, score=-6.0),
              "critic_rule": "truncated: stopped at max new tokens"} for i in range(6)]  # fmt: skip
    bias = qc_summary(rows, QCThresholds())["length_bias"]
    assert bias["rule_rejected"] == 6 and bias["rejected_median_tokens"] == 9 and bias["passed"]
