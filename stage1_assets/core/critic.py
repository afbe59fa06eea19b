"""Log-probability critic: does the response answer *this* instruction?

Score = per-token pointwise mutual information of the response with its instruction,

    pmi = [log p(response | shots, instruction) - log p(response | shots, no instruction)] / tokens

in nats per response token, from the clean base model, no sampling. A response that answers its
instruction becomes much more likely once the instruction is seen (pmi well above 0); a fluent but
unrelated response does not (pmi near 0); so does a generic answer that fits any instruction. The
alternative, a "Yes"/"No" verdict prompt, barely discriminates on a 270M base model (DESIGN.md:
real > shuffled in 14 of 24 pairs vs 24 of 24 for PMI).

Both contexts share the few-shot document, whose KV cache is computed once and reused by every
batch; only the short instruction/response suffixes are run, and the output projection is
applied to response positions only (the 262k-token vocabulary dominates the cost otherwise).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from . import prompts
from .generation import _cache_kwarg

LOGIT_CHUNK = 1024  # response positions projected onto the vocabulary at once: 1024 x 262k fp32 logits = 1 GiB


@dataclass
class CriticScore:
    score: float  # pmi in nats/token: the value compared with confidence_threshold
    cond_logprob: float  # mean log p(token | shots, instruction)
    uncond_logprob: float  # mean log p(token | shots)
    response_tokens: int
    accepted: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Critic:
    def __init__(self, model: Any, tokenizer: Any, shots: tuple[prompts.Exemplar, ...]) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = model.device
        self.cache_kwarg = _cache_kwarg(model)
        self.prefix_ids = tokenizer(prompts.shots_document(shots), add_special_tokens=True)["input_ids"]
        self._prefix_cache: Any = None

    @torch.inference_mode()
    def _prefix(self) -> Any:
        if self._prefix_cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([self.prefix_ids], device=self.device)
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
            self._prefix_cache = cache
        return self._prefix_cache

    def score(self, pairs: Sequence[tuple[str, str]], threshold: float, batch_size: int = 16) -> list[CriticScore]:
        """Score `pairs`; `batch_size` pairs make 2 x `batch_size` rows (conditional + unconditional) a batch."""
        if not pairs:
            return []
        cues = self._encode([prompts.RESPONSE_CUE.format(instruction=i.strip()) for i, _ in pairs])
        responses = self._encode([" " + r.strip() for _, r in pairs])
        unconditional_cue = self._encode([prompts.UNCONDITIONAL_CUE])[0]
        # rows 0..n-1 are conditional, n..2n-1 unconditional; sorting all 2n rows by length together
        # keeps each batch's padding small (an unconditional row is shorter than its twin by the instruction)
        rows = [(c, r) for c, r in zip(cues, responses, strict=True)] + [(unconditional_cue, r) for r in responses]
        order = sorted(range(len(rows)), key=lambda k: -(len(rows[k][0]) + len(rows[k][1])))
        sums = torch.empty(len(rows), device=self.device)
        for start in range(0, len(order), 2 * batch_size):
            idx = order[start : start + 2 * batch_size]
            sums[torch.tensor(idx, device=self.device)] = self._response_logprob_sums([rows[k] for k in idx])
        per_row = sums.tolist()  # the only device-to-host sync: batches queue up back to back
        n = len(pairs)
        results = []
        for k, response in enumerate(responses):
            tokens = max(len(response), 1)
            cond, uncond = per_row[k] / tokens, per_row[n + k] / tokens
            results.append(CriticScore(cond - uncond, cond, uncond, len(response), cond - uncond >= threshold))
        return results

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _response_logprob_sums(self, rows: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Sum of log p(response tokens) after prefix + cue, for each (cue, response) row (on the device)."""
        batch = len(rows)
        width = max(len(c) + len(r) for c, r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([c + r + [pad] * (width - len(c) - len(r)) for c, r in rows])
        lengths = torch.tensor([[len(c), len(c) + len(r)] for c, r in rows])
        position = torch.arange(width)
        suffix_mask = position < lengths[:, 1:]
        response_mask = (position >= lengths[:, :1]) & suffix_mask
        # the token at suffix position p is predicted by the hidden state at p - 1; the first cue
        # token is never a response token, so every response token has a predicting position.
        # Indices are computed here on the host: a boolean mask on the device would force a sync.
        row_of, predicted_at = response_mask[:, 1:].nonzero(as_tuple=True)
        targets = ids[row_of, predicted_at + 1].to(self.device)
        row_of, predicted_at = row_of.to(self.device), predicted_at.to(self.device)
        cache = copy.deepcopy(self._prefix())
        cache.batch_repeat_interleave(batch)
        prefix_len = len(self.prefix_ids)
        attention = torch.cat([torch.ones((batch, prefix_len), dtype=torch.long), suffix_mask.long()], dim=1)
        positions = prefix_len + position.unsqueeze(0).expand(batch, -1)
        hidden = self.model.get_decoder()(
            input_ids=ids.to(self.device), attention_mask=attention.to(self.device),
            position_ids=positions.to(self.device), use_cache=True, **{self.cache_kwarg: cache},
        ).last_hidden_state  # fmt: skip
        selected = hidden[row_of, predicted_at]
        logprobs = torch.empty(len(targets), device=self.device)
        for s in range(0, len(targets), LOGIT_CHUNK):
            logits = self._logits(selected[s : s + LOGIT_CHUNK]).float()
            target_logits = logits.gather(1, targets[s : s + LOGIT_CHUNK, None])[:, 0]
            logprobs[s : s + LOGIT_CHUNK] = target_logits - torch.logsumexp(logits, dim=-1)
        return torch.zeros(batch, device=self.device).index_add_(0, row_of, logprobs)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


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


def discrimination(real: Sequence[float], shuffled: Sequence[float], threshold: float) -> Discrimination:
    """Compare each real pair's score with its shuffled twin's (same instruction, other response)."""
    n = len(real)
    return Discrimination(
        pairs=n,
        real_above_shuffled=sum(r > s for r, s in zip(real, shuffled, strict=True)),
        real_acceptance=sum(r >= threshold for r in real) / n,
        shuffled_acceptance=sum(s >= threshold for s in shuffled) / n,
        real_mean_score=sum(real) / n,
        shuffled_mean_score=sum(shuffled) / n,
    )
