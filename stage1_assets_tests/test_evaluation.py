import pytest

from stage1_assets.core import prompts
from stage1_assets.core.config import ResponseSampling
from stage1_assets.core.critic import Critic
from stage1_assets.core.evaluation import EvalParams, answer, control_accuracy, judge

pytestmark = pytest.mark.slow


def test_judge_passes_the_real_vs_shuffled_control_on_the_embedded_model(real_model):
    """The judge must pick an instruction's own answer over another instruction's answer."""
    instructions = [e.instruction for e in prompts.load_pool(prompts.TEST_POOL)[::3]][:12]
    params = EvalParams(ResponseSampling(), batch_size=12, seed=3, tie_margin=0.1)
    responses = [r["response"] for r in answer(real_model.model, real_model.tokenizer, instructions, params)]
    critic = Critic(real_model.model, real_model.tokenizer, prompts.load_pool(prompts.QA_SHOTS))
    accuracy = control_accuracy(critic, instructions, responses, batch_size=12, seed=1)
    print(f"judge control accuracy: {accuracy:.3f} on {len(instructions)} pairs")
    assert accuracy >= 0.75  # chance is 0.5

    shuffled = responses[1:] + responses[:1]
    verdict = judge(critic, instructions, responses, shuffled, batch_size=12)
    assert verdict["consistency"] >= 0.9
    assert sum(a > b for a, b in zip(verdict["score_a"], verdict["score_b"], strict=True)) >= 9
