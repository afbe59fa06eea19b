"""The method end to end for one batch of data: instructions -> responses -> critic verdicts.

Used by the held-out test set (instructions only, from the test exemplar pool), the pilot and
the scale shards (from the train pool), so all three generate the same way.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import dedup, prompts
from .config import CriticParams, InstructionSampling, ResponseSampling
from .critic import Critic
from .generation import Generator
from .model_loader import LoadedModel

log = logging.getLogger(__name__)

MIN_INSTRUCTION_WORDS = 3
MAX_INSTRUCTION_CHARS = 300
MAX_INSTRUCTION_ROUNDS = 6


@dataclass
class GenerationParams:
    instruction: InstructionSampling
    response: ResponseSampling
    critic: CriticParams
    batch_size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction.model_dump(),
            "response": self.response.model_dump(),
            "critic": self.critic.model_dump(),
            "batch_size": self.batch_size,
        }


def instruction_problem(text: str, finish_reason: str) -> str | None:
    """Why a generated instruction is unusable, or None."""
    if finish_reason == "length":
        return "run-on (hit max new tokens)"
    if len(text.split()) < MIN_INSTRUCTION_WORDS:
        return f"fewer than {MIN_INSTRUCTION_WORDS} words"
    if len(text) > MAX_INSTRUCTION_CHARS:
        return f"longer than {MAX_INSTRUCTION_CHARS} chars"
    if any(d in text for d in prompts.TEMPLATE_DELIMITERS):
        return "contains a template delimiter"
    return None


def generate_instructions(
    generator: Generator,
    count: int,
    seed: int,
    pool: tuple[prompts.Exemplar, ...],
    params: InstructionSampling,
    batch_size: int,
    exclude: Sequence[str] = (),
) -> tuple[list[str], dict[str, int]]:
    """`count` clean, mutually distinct instructions, none near-duplicating `exclude` or the pool.

    Generates in rounds (seed, seed+1, ...) until enough survive the filters; returns the
    instructions and how many candidates each filter removed.
    """
    rng = random.Random(seed)
    blocked = [e.instruction for e in pool] + list(exclude)
    kept: list[str] = []
    removed: Counter[str] = Counter()
    for round_no in range(MAX_INSTRUCTION_ROUNDS):
        need = count - len(kept)
        if need <= 0:
            break
        asked = need + max(4, need // 4)  # a few spare for the filters
        prompts_ = prompts.instruction_prompts(pool, rng, asked)
        completions, _ = generator.generate(prompts_, params, batch_size, seed=seed + round_no)
        candidates = []
        for completion in completions:
            assert completion is not None
            text = prompts.clean_instruction(completion.text)
            problem = instruction_problem(text, completion.finish_reason)
            if problem:
                removed[problem] += 1
            else:
                candidates.append(text)
        texts = blocked + kept + candidates
        first_new = len(blocked) + len(kept)
        survivors, dropped = dedup.deduplicate(texts)
        for idx, (duplicate_of, how) in dropped.items():
            if idx >= first_new:
                what = "an exemplar or excluded text" if duplicate_of < len(blocked) else "another instruction"
                removed[f"{how.split(':')[0]} duplicate of {what}"] += 1
        kept += [texts[i] for i in survivors if i >= first_new][:need]
    if len(kept) < count:
        raise RuntimeError(
            f"only {len(kept)} of {count} instructions survived the filters after {MAX_INSTRUCTION_ROUNDS} "
            f"rounds (removed: {removed}); loosen instruction sampling or enlarge the exemplar pool"
        )
    return kept, dict(removed)


def respond_and_score(
    lm: LoadedModel,
    instructions: Sequence[str],
    ids: Sequence[str],
    params: GenerationParams,
    seed: int,
    generator: Generator | None = None,
) -> list[dict[str, Any]]:
    """Responses for `instructions` plus the critic's verdict on each pair, as output rows."""
    generator = generator or Generator(lm.model, lm.tokenizer)
    shots = prompts.load_pool(prompts.QA_SHOTS)
    completions, stats = generator.generate(
        [prompts.response_prompt(i, shots) for i in instructions], params.response, params.batch_size, seed
    )
    log.info("responses: %.1f generated tokens/s", stats.tokens_per_second)
    responses = [c.text if c else "" for c in completions]
    scores = Critic(lm.model, lm.tokenizer, params.critic).score(list(zip(instructions, responses, strict=True)))
    token_counts = [len(t) for t in lm.tokenizer(responses, add_special_tokens=False)["input_ids"]]
    rows = []
    for row_id, instruction, completion, score, n_tokens in zip(
        ids, instructions, completions, scores, token_counts, strict=True
    ):
        assert completion is not None
        # an answer cut off by the token limit is unfinished, whatever its score
        rule = score.rule or ("truncated: stopped at max new tokens" if completion.finish_reason == "length" else None)
        rows.append(
            {
                "id": row_id,
                "instruction": instruction,
                "response": completion.text,
                "finish_reason": completion.finish_reason,
                "response_tokens": n_tokens,
                "completion_tokens": completion.completion_tokens,
                "critic_score": round(score.score, 6),
                "critic_rule": rule,
                "critic_pmi": round(score.pmi, 6),
                "cond_logprob": round(score.cond_logprob, 6),
                "uncond_logprob": round(score.uncond_logprob, 6),
                "accepted": score.accepted and rule is None,
            }
        )
    return rows
