"""The evaluation: sections scored from known answers, identical systems tie, a better system wins."""

import pytest

from stage1_assets.core import critic_controls, evaluation
from stage1_assets.core.config import CriticParams, ResponseSampling
from stage1_assets.core.evaluation import EvalItems, EvalParams, best_and_worst, markdown_report
from stage1_assets.core.instruction_following import load_suite, select_subset
from stage1_assets.core.reference_qa import load_questions
from stage1_assets.core.reference_qa import select_subset as select_questions


def rows(*texts):
    return [{"response": t, "finish_reason": "stop", "response_tokens": len(t.split())} for t in texts]


def one_word_prompts(n):
    prompts = [p for p in load_suite() if p.types == ("length:one_word",)][:n]
    assert len(prompts) == n
    return prompts


def test_instruction_following_counts_passes_per_system_and_pairs_them():
    items = one_word_prompts(10)
    sft = rows(*["Jupiter."] * 8, "Two words.", "Three words here.")  # 8 pass
    base = rows(*["Jupiter."] * 2, *["It is a planet."] * 8)  # 2 pass
    section = evaluation.instruction_following(items, sft, base)
    assert (section["n"], section["sft"]["passed"], section["base"]["passed"]) == (10, 8, 2)
    assert section["sft"]["pass_rate"] == 0.8 and section["base"]["pass_rate"] == 0.2
    lo, hi = section["sft"]["ci95"]
    assert lo < 0.8 < hi and hi - lo > 0.2  # a Wilson interval of ten items is wide
    assert (section["sft_only"], section["base_only"]) == (6, 0)
    assert section["mcnemar_p"] == pytest.approx(2 * 0.5**6)
    assert section["significant"] and section["difference"] == pytest.approx(0.6)
    assert section["by_type"]["length:one_word"] == {"checks": 10, "sft_strict": 8, "base_strict": 2,
                                                     "sft_loose": 8, "base_loose": 2}  # fmt: skip


def test_reference_answers_are_scored_per_system():
    items = [q for q in load_questions() if q.id in ("qa-001", "qa-002", "qa-003")]
    sft = rows("Paris.", "Tokyo is the capital.", "Milan.")
    base = rows("Lyon.", "Tokyo.", "I am not sure.")
    section = evaluation.reference_qa(items, sft, base)
    assert section["sft"]["correct"] == 2 and section["base"]["correct"] == 1
    assert (section["sft_only"], section["base_only"]) == (1, 0)
    assert not section["significant"]  # one discordant pair proves nothing


def test_best_and_worst_tables_never_share_a_pair():
    judged = [{"id": f"t{k}", "margin": m, "outcome": "win" if m > 0 else "loss" if m < 0 else "tie"}
              for k, m in enumerate([3.0, 2.0, 1.0, 0.5, -0.5, -1.0, 0.0, 0.2])]  # fmt: skip
    best, worst = best_and_worst(judged, count=5)
    assert [r["id"] for r in best] == ["t0", "t1", "t2", "t3", "t7"]
    assert [r["id"] for r in worst] == ["t5", "t4"]
    assert not {r["id"] for r in best} & {r["id"] for r in worst}


def test_identical_systems_show_no_significant_difference(tiny_model, monkeypatch):
    """The same model as both systems, same seed: every paired outcome agrees, and the report says so."""
    controls = critic_controls.load()
    monkeypatch.setattr(critic_controls, "load", lambda: [c for c in controls if c.split == "heldout"][:3])
    items = EvalItems(
        select_subset(load_suite(), 6, seed=0),
        select_questions(load_questions(), 4, seed=0),
        [{"id": "test-0000", "instruction": "Name a fruit."}, {"id": "test-0001", "instruction": "Say hi."}],
    )
    judge = CriticParams(batch_size=4)
    params = EvalParams(ResponseSampling(max_new_tokens=8), batch_size=4, seed=1, tie_margin=0.1, judge=judge,
                        training_critic=judge)  # fmt: skip
    report = evaluation.evaluate(tiny_model.model, tiny_model.model, tiny_model.tokenizer, items, params)
    for name in ("instruction_following", "reference_qa"):
        section = report[name]
        assert section["difference"] == 0.0 and section["mcnemar_p"] == 1.0 and not section["significant"]
    assert report["instruction_following"]["n"] == 6 and report["reference_qa"]["n"] == 4
    jd = report["judge"]
    assert (jd["wins"], jd["losses"]) == (0, 0) and jd["is_training_filter"]
    assert set(jd["trust"]["per_kind"]) == {"wrong", "restated", "content_free", "runaway", "drift", "truncated"}
    markdown = markdown_report(report)
    assert markdown.count("no significant difference") == 2
    assert "critic that filtered the training data" in markdown


@pytest.mark.slow
def test_the_evaluation_tells_a_better_model_from_a_worse_one(real_model, tiny_model):
    """The embedded model against a random model of the same architecture and tokenizer: the real model
    must win the reference questions significantly (the random one answers nothing correctly)."""
    items = select_questions(load_questions(), 40, seed=0)
    params = EvalParams(ResponseSampling(max_new_tokens=24), batch_size=20, seed=3, tie_margin=0.1)
    questions = [q.question for q in items]
    better = evaluation.answer(real_model.model, real_model.tokenizer, questions, params)
    worse = evaluation.answer(tiny_model.model, tiny_model.tokenizer, questions, params)
    section = evaluation.reference_qa(items, better, worse)
    print("reference answers, embedded vs random:", section["sft"], section["base"], section["mcnemar_p"])
    assert section["base"]["correct"] == 0
    assert section["significant"] and section["difference"] > 0 and section["mcnemar_p"] < 0.01
