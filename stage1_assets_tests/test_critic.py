import pytest
import torch

from stage1_assets.core import prompts
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.critic import Critic, discrimination, shuffled_control
from stage1_assets.core.generation import Generator
from stage1_assets.core.pairs import GenerationParams, generate_instructions, respond_and_score

SHOTS = prompts.load_pool(prompts.QA_SHOTS)


def naive_pmi(lm, instruction, response):
    def mean_logprob(context):
        ctx = lm.tokenizer(context)["input_ids"]
        resp = lm.tokenizer(" " + response, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(lm.model(torch.tensor([ctx + resp])).logits[0].float(), -1)
        return sum(logprobs[len(ctx) + k - 1, t].item() for k, t in enumerate(resp)) / len(resp)

    return mean_logprob(prompts.response_prompt(instruction, SHOTS)) - mean_logprob(prompts.unconditional_prompt(SHOTS))


def test_batched_prefix_cached_score_equals_naive_computation(tiny_model):
    pairs = [("Name a fruit.", "An apple."), ("What is 2 + 2?", "It is 4, because two and two make four."),
             ("Say hi.", "Hi!")]  # fmt: skip
    scores = Critic(tiny_model.model, tiny_model.tokenizer, SHOTS).score(pairs, threshold=0.0, batch_size=2)
    for (instruction, response), score in zip(pairs, scores, strict=True):
        assert score.score == pytest.approx(naive_pmi(tiny_model, instruction, response), abs=1e-4)
        assert score.accepted == (score.score >= 0.0)


def test_shuffled_control_is_a_derangement():
    pairs = [(f"i{k}", f"r{k}") for k in range(7)]
    control = shuffled_control(pairs, seed=3)
    assert [i for i, _ in control] == [i for i, _ in pairs]
    assert all(r != f"r{k}" for k, (_, r) in enumerate(control))
    assert sorted(r for _, r in control) == sorted(r for _, r in pairs)


@pytest.mark.slow
def test_critic_discriminates_real_from_shuffled_on_the_embedded_model(real_model):
    """The acceptance of shuffled pairs must be at most half that of real pairs."""
    generator = Generator(real_model.model, real_model.tokenizer)
    instructions, _ = generate_instructions(
        generator, 24, seed=11, pool=prompts.load_pool(prompts.TRAIN_POOL), params=InstructionSampling(), batch_size=24
    )
    params = GenerationParams(InstructionSampling(), ResponseSampling(), CriticParams(), batch_size=24)
    rows = respond_and_score(
        real_model, instructions, [str(k) for k in range(24)], params, seed=12, generator=generator
    )
    threshold = CriticParams().confidence_threshold
    control = Critic(real_model.model, real_model.tokenizer, SHOTS).score(
        shuffled_control([(r["instruction"], r["response"]) for r in rows], seed=5), threshold
    )
    disc = discrimination([r["critic_score"] for r in rows], [c.score for c in control], threshold)
    print("critic discrimination on the embedded model:", disc.as_dict())
    assert disc.real_acceptance > 0.25
    assert disc.shuffled_acceptance <= disc.real_acceptance / 2
    assert disc.rank_agreement >= 0.8
    assert disc.real_mean_score > disc.shuffled_mean_score + 0.5
