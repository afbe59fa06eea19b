"""The critic: its scores from token log-probabilities, its rules, and its quality on the labelled controls."""

import numpy as np
import pytest

from stage1_assets.core import critic_controls, prompts
from stage1_assets.core.config import CriticParams, InstructionSampling, QCThresholds, ResponseSampling
from stage1_assets.core.critic import BAD_HEADER, RESPONSE_END, Critic, CriticScore, discrimination, shuffled_control
from stage1_assets.core.generation import Generator
from stage1_assets.core.pairs import GenerationParams, generate_instructions, respond_and_score
from stage1_assets.core.response_rules import novelty
from stage1_assets.core.scoring import LogprobScorer
from stage1_assets.resources import BaseModelResource

PAIRS = [("Name a fruit.", "An apple."), ("What is 2 + 2?", "It is 4, because two and two make four."),
         ("Say hi.", "Hi!")]  # fmt: skip


def test_evidence_and_scores_match_a_token_by_token_computation(tiny_model):
    """Every piece of evidence against an independent per-row computation with the generic scorer."""
    good = LogprobScorer(tiny_model.model, tiny_model.tokenizer,
                         prompts.shots_document(prompts.load_pool(prompts.QA_SHOTS)))  # fmt: skip
    bad = LogprobScorer(tiny_model.model, tiny_model.tokenizer, BAD_HEADER + "".join(
        prompts.PAIR_BLOCK.format(instruction=s.instruction, response=s.response)
        for s in prompts.load_pool(prompts.BAD_SHOTS)))  # fmt: skip
    params = CriticParams(rules=[], batch_size=2)
    critic = Critic(tiny_model.model, tiny_model.tokenizer, params)
    verdicts = critic.score(PAIRS)
    for (instruction, response), e, verdict in zip(PAIRS, critic.evidence(PAIRS), verdicts, strict=True):
        cue = prompts.RESPONSE_CUE.format(instruction=instruction)
        body, end = good.encode([" " + response, RESPONSE_END])
        cond, uncond = good.continuation_logprobs([(cue, body + end), (prompts.UNCONDITIONAL_CUE, body + end)])
        [worse] = bad.continuation_logprobs([(cue, body)])
        n = len(body)
        assert e.end == pytest.approx(float(np.sum(cond[n:])), abs=1e-4)
        assert e.pmi == pytest.approx(float(np.mean(cond[:n] - uncond[:n])), abs=1e-4)
        assert e.contrast == pytest.approx(float(np.mean(cond[:n] - worse)), abs=1e-4)
        assert e.novelty == novelty(instruction, response) and e.tokens == n
        expected = e.end + e.pmi + params.contrast_weight * e.contrast + params.novelty_weight * e.novelty
        assert verdict.score == pytest.approx(expected) and verdict.rule is None
    plain = Critic(tiny_model.model, tiny_model.tokenizer, CriticParams(signal="pmi_mean", rules=[]))
    assert [v.score for v in plain.score(PAIRS)] == pytest.approx([v.pmi for v in verdicts], abs=1e-5)


def test_a_rule_rejects_whatever_the_score_and_ranks_below_unruled_pairs(tiny_model):
    critic = Critic(tiny_model.model, tiny_model.tokenizer, CriticParams(confidence_threshold=-100.0))
    echo, answer = critic.score(
        [
            ("Explain why ice floats on water.", "Ice floats on water, that is why."),
            ("Explain why ice floats on water.", "Ice is less dense than liquid water."),
        ]
    )
    assert echo.rule.startswith("restated") and not echo.accepted
    assert answer.rule is None and answer.accepted
    assert answer.rank_key > echo.rank_key
    assert echo.reason == echo.rule and answer.reason.startswith("score ")


def test_rules_can_be_switched_off_and_unknown_ones_are_refused(tiny_model):
    critic = Critic(tiny_model.model, tiny_model.tokenizer, CriticParams(rules=[], confidence_threshold=-100.0))
    assert critic.score([("Why is the sky blue?", "There are many reasons.")])[0].accepted
    with pytest.raises(ValueError, match="rules"):
        CriticParams(rules=["spelling"])
    with pytest.raises(ValueError, match="signal"):
        CriticParams(signal="vibes")


def test_shuffled_control_is_a_derangement():
    pairs = [(f"i{k}", f"r{k}") for k in range(7)]
    control = shuffled_control(pairs, seed=3)
    assert [i for i, _ in control] == [i for i, _ in pairs]
    assert all(r != f"r{k}" for k, (_, r) in enumerate(control))
    assert sorted(r for _, r in control) == sorted(r for _, r in pairs)


def verdict(score, rule=None, threshold=1.0):
    return CriticScore(score, 0.0, 0.0, 0.0, 5, rule, rule is None and score >= threshold)


def test_quality_report_counts_rankings_and_rejections_per_kind():
    pairs = [{"item": "a", "kind": "good", "instruction": "q", "response": "g"},
             {"item": "a", "kind": "wrong", "instruction": "q", "response": "w"},
             {"item": "a", "kind": "restated", "instruction": "q", "response": "r"},
             {"item": "b", "kind": "good", "instruction": "p", "response": "g"},
             {"item": "b", "kind": "wrong", "instruction": "p", "response": "w"},
             {"item": "b", "kind": "restated", "instruction": "p", "response": "r"}]  # fmt: skip
    verdicts = [verdict(3.0), verdict(4.0), verdict(9.0, "restated: echo"),
                verdict(2.0), verdict(1.0), verdict(0.5, "restated: echo")]  # fmt: skip
    report = critic_controls.quality_report(pairs, verdicts)
    assert report["per_kind"]["wrong"] == {"good_above": 0.5, "rejected": 0.0, "pairs": 2}
    assert report["per_kind"]["restated"] == {"good_above": 1.0, "rejected": 1.0, "pairs": 2}
    assert report["pairwise_accuracy"] == pytest.approx(3 / 4)
    assert report["good_accepted"] == 1.0
    assert [(m["item"], m["kind"]) for m in report["misranked"]] == [("a", "wrong")]


@pytest.mark.slow
def test_critic_quality_on_the_held_out_controls_with_the_embedded_model(real_model):
    """The shipped critic's targets on requests it was not tuned on (the check `critic_quality` runs)."""
    thresholds = QCThresholds()
    cache = critic_controls.cache_path(
        BaseModelResource().controls_cache_dir(), real_model.info.fingerprint, CriticParams()
    )  # shared with the pilots of the other tests: the same model, critic and controls give the same report
    quality = critic_controls.critic_quality(
        Critic(real_model.model, real_model.tokenizer), thresholds.min_critic_pairwise_accuracy,
        thresholds.min_critic_rejection, cache=cache,
    )  # fmt: skip
    print("critic quality on the held-out controls:", {k: quality[k] for k in ("pairwise_accuracy", "per_kind")})
    assert quality["passed"], quality["failures"]
    assert quality["good_accepted"] >= 0.5


@pytest.mark.slow
def test_per_token_pmi_fails_the_quality_targets_the_shipped_critic_meets(real_model):
    """The control set can tell critics apart: the earlier critic (per-token PMI, threshold 1.0, no rules)
    ranks near chance and lets restatements through."""
    thresholds = QCThresholds()
    earlier = CriticParams(signal="pmi_mean", rules=[], confidence_threshold=1.0)
    old = Critic(real_model.model, real_model.tokenizer, earlier)
    quality = critic_controls.critic_quality(
        old, thresholds.min_critic_pairwise_accuracy, thresholds.min_critic_rejection
    )
    assert not quality["passed"]
    assert quality["pairwise_accuracy"] < 0.7  # ranking does not depend on the threshold: 0.563 measured
    assert quality["per_kind"]["restated"]["rejected"] < thresholds.min_critic_rejection


@pytest.mark.slow
def test_critic_discriminates_real_from_shuffled_on_the_embedded_model(real_model):
    generator = Generator(real_model.model, real_model.tokenizer)
    instructions, _ = generate_instructions(
        generator, 24, seed=11, pool=prompts.load_pool(prompts.TRAIN_POOL), params=InstructionSampling(), batch_size=24
    )
    params = GenerationParams(InstructionSampling(), ResponseSampling(), CriticParams(), batch_size=24)
    rows = respond_and_score(
        real_model, instructions, [str(k) for k in range(24)], params, seed=12, generator=generator
    )
    critic = Critic(real_model.model, real_model.tokenizer)
    pairs = [(r["instruction"], r["response"]) for r in rows]
    disc = discrimination(critic.score(pairs), critic.score(shuffled_control(pairs, seed=5)))
    print("critic discrimination on the embedded model:", disc.as_dict())
    assert disc.rank_agreement >= 0.75
    assert disc.shuffled_acceptance <= disc.real_acceptance / 2
