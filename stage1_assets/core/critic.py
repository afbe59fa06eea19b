"""The critic: is this response a good answer to this request? The clean base model's verdict.

Two stages, both without sampling:
1. Rules (`core.response_rules`) reject what a likelihood cannot see as bad: an echo of the
   request, a content-free sentence, a response that starts a new prompt, a wrong stated result.
2. A score from the base model reading few-shot documents (`SIGNALS`). The default, `answer`, adds
   up four pieces of evidence, in nats:
     end       log p(the next request begins | request, response) in the document of good answers:
               a finished answer is followed by the next request; a truncated one, one that runs on
               into a new prompt or rambles off is not
     pmi       per-token log p(response | request) - log p(response | no request): relevance
     contrast  per-token log p(response | good-answer document) - log p(response | bad-answer
               document): does it read like the good demonstrations or like the careless ones
     novelty   the share of the response's informative words the request does not contain: a
               paraphrase of the request adds none
   A pair is accepted when no rule fired and the score reaches `confidence_threshold`.

The signals and weights were chosen on the development half of the labelled control set, where
per-token PMI alone (the earlier critic) preferred echoes and short answers (BENCHMARKS.md, critic
quality); the `critic_quality` check measures the result on the held-out half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import prompts
from .config import CriticParams
from .io import sha256_file, stable_hash
from .response_rules import novelty, rule_reason
from .scoring import LogprobScorer

CRITIC_VERSION = "critic-v2"
# the files whose content decides every verdict: any edit makes a different critic
CRITIC_SOURCES = ("critic.py", "kernels.py", "response_rules.py", "runaway.py", "scoring.py")
# what follows a finished response in the shots documents: scoring it asks "does the answer end here?"
RESPONSE_END = "\n\nInstruction:"
BAD_HEADER = (
    "Below are requests sent to a careless assistant, each followed by a poor response: it repeats the request, "
    "says nothing, gets the facts wrong, stops halfway or rambles off topic.\n\n"
)


@cache
def critic_fingerprint() -> str:
    """CRITIC_VERSION and a hash of the code and documents the critic is made of: equal fingerprints give
    equal verdicts for the same model and parameters (a pilot's shards check it; cached reports key on it)."""
    here = Path(__file__).resolve().parent
    files = [here / name for name in CRITIC_SOURCES]
    files += [prompts.EXEMPLARS_DIR / name for name in (prompts.QA_SHOTS, prompts.BAD_SHOTS)]
    return f"{CRITIC_VERSION}-{stable_hash([sha256_file(f) for f in files])[:12]}"


@dataclass
class Evidence:
    """What the base model says about one response (sums and means over its tokens, in nats)."""

    end: float  # log p(RESPONSE_END | good document, request, response)
    pmi: float  # mean over response tokens of log p(. | request) - log p(. | no request)
    contrast: float  # mean over response tokens of log p(. | good document) - log p(. | bad document)
    novelty: float  # share of informative words not in the request's task
    cond_logprob: float  # mean log p(token | good document, request)
    uncond_logprob: float  # mean log p(token | good document, no request)
    tokens: int


def answer_score(e: Evidence, params: CriticParams) -> float:
    return e.end + e.pmi + params.contrast_weight * e.contrast + params.novelty_weight * e.novelty


SIGNALS = {
    "answer": answer_score,
    # the earlier critic, kept as a reference: it rewards short answers that echo the request
    "pmi_mean": lambda e, params: e.pmi,
}


@dataclass
class CriticScore:
    score: float  # the configured signal, compared with confidence_threshold
    pmi: float  # per-token PMI, nats/token, for reference
    cond_logprob: float
    uncond_logprob: float
    response_tokens: int
    rule: str | None  # the rule that rejected the response, with why
    accepted: bool

    @property
    def rank_key(self) -> tuple[int, float]:
        """Orders verdicts: a response a rule rejects ranks below any it does not, then by score."""
        return (0 if self.rule else 1, self.score)

    @property
    def reason(self) -> str:
        return self.rule or f"score {self.score:.3f}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Critic:
    def __init__(self, model: Any, tokenizer: Any, params: CriticParams | None = None):
        self.params = params or CriticParams()
        shots = prompts.load_pool(prompts.QA_SHOTS)
        self.good = LogprobScorer(model, tokenizer, prompts.shots_document(shots))
        bad_shots = prompts.load_pool(prompts.BAD_SHOTS)
        bad_document = BAD_HEADER + "".join(
            prompts.PAIR_BLOCK.format(instruction=s.instruction, response=s.response) for s in bad_shots
        )
        self.bad = LogprobScorer(model, tokenizer, bad_document)
        self.end_ids = self.good.encode([RESPONSE_END])[0]

    def evidence(self, pairs: Sequence[tuple[str, str]]) -> list[Evidence]:
        responses = self.good.encode([" " + r.strip() for _, r in pairs])
        # token ids, encoded once for both documents
        cues = self.good.encode([prompts.RESPONSE_CUE.format(instruction=i.strip()) for i, _ in pairs])
        unconditional = self.good.encode([prompts.UNCONDITIONAL_CUE])[0]
        batch = 2 * self.params.batch_size
        ends = len(self.end_ids)
        scored = self.good.continuation_logprobs(
            [(c, r + self.end_ids) for c, r in zip(cues, responses, strict=True)]
            + [(unconditional, r) for r in responses],
            batch,
        )
        contrasted = self.params.signal == "answer"
        bad = self.bad.continuation_logprobs(list(zip(cues, responses, strict=True)), batch) if contrasted else None
        out = []
        for k, (instruction, response) in enumerate(pairs):
            cond, uncond = scored[k][:-ends], scored[len(pairs) + k]
            out.append(Evidence(
                end=float(np.sum(scored[k][-ends:])),
                pmi=_mean(cond - uncond),
                contrast=_mean(cond - bad[k]) if bad is not None else 0.0,
                novelty=novelty(instruction, response),
                cond_logprob=_mean(cond), uncond_logprob=_mean(uncond), tokens=len(cond),
            ))  # fmt: skip
        return out

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[CriticScore]:
        if not pairs:
            return []
        signal, threshold, rules = SIGNALS[self.params.signal], self.params.confidence_threshold, self.params.rules
        verdicts = []
        for (instruction, response), e in zip(pairs, self.evidence(pairs), strict=True):
            rule = rule_reason(instruction, response, tuple(rules)) if rules else None
            value = signal(e, self.params)
            verdicts.append(CriticScore(value, e.pmi, e.cond_logprob, e.uncond_logprob, e.tokens, rule,
                                        rule is None and value >= threshold))  # fmt: skip
        return verdicts


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def shuffled_control(pairs: Sequence[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """The same instructions, each with another pair's response (a derangement: none keeps its own)."""
    n = len(pairs)
    if n < 2:
        raise ValueError("a shuffled control needs at least 2 pairs")
    gen = torch.Generator().manual_seed(seed)
    shift = int(torch.randint(1, n, (1,), generator=gen))
    return [(pairs[i][0], pairs[(i + shift) % n][1]) for i in range(n)]


@dataclass
class Discrimination:
    pairs: int
    real_above_shuffled: int
    real_acceptance: float
    shuffled_acceptance: float
    real_mean_score: float
    shuffled_mean_score: float

    @property
    def rank_agreement(self) -> float:
        return self.real_above_shuffled / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rank_agreement": self.rank_agreement}


def discrimination(real: Sequence[CriticScore], shuffled: Sequence[CriticScore]) -> Discrimination:
    """Compare each real pair's verdict with its shuffled twin's (same instruction, other response)."""
    n = len(real)
    return Discrimination(
        pairs=n,
        real_above_shuffled=sum(r.rank_key > s.rank_key for r, s in zip(real, shuffled, strict=True)),
        real_acceptance=sum(r.accepted for r in real) / n,
        shuffled_acceptance=sum(s.accepted for s in shuffled) / n,
        real_mean_score=sum(r.score for r in real) / n,
        shuffled_mean_score=sum(s.score for s in shuffled) / n,
    )
