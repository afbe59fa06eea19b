"""Batched sampling engine for base-model completions (CPU and CUDA alike).

Prompts are sorted by length and cut into left-padded batches (less padding). Decoding runs a
KV-cached loop written here rather than `model.generate`, for two reasons:
  * stop sequences are checked on the text as it is produced, and rows that stop (or hit EOS)
    are dropped from the batch and its cache as soon as they make up 1/8 of it, so finished rows
    stop costing compute;
  * sampling noise is drawn per (seed, step, prompt index), so a prompt's completion does not
    depend on which other prompts share its batch, nor on the batch size (up to float rounding).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .config import SamplingParams

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "eos", "length"]
# Nucleus sampling looks at the most likely tokens only; past a few hundred candidates the
# remaining probability mass is negligible at the temperatures used here, and sorting the full
# 262k-token vocabulary every step would dominate the decode time on CPU.
CANDIDATE_POOL = 512
# Finished rows leave the batch once they are at least 1/COMPACT_DIVISOR of it: compacting copies
# the whole KV cache, so doing it for every single finished row would cost more than it saves.
COMPACT_DIVISOR = 8
# Enough trailing tokens to contain any stop sequence (each token decodes to >= 1 character).
STOP_WINDOW_TOKENS = 16


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenerationStats:
    rows: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


BatchCallback = Callable[[list[int], list[Completion]], None]


def _cache_kwarg(model: Any) -> str:
    """transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def truncate_at_stop(text: str, stop_sequences: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop_sequences) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sample_next(
    logits: torch.Tensor, history: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> torch.Tensor:
    """One token per row: repetition penalty, temperature, nucleus, inverse-CDF draw from `uniforms`."""
    logits = logits.float()
    if params.repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    top_probs, top_ids = probs.topk(min(CANDIDATE_POOL, probs.shape[-1]), dim=-1)
    cumulative = top_probs.cumsum(dim=-1)
    # keep a candidate while the mass before it is below top_p (the first one always survives)
    top_probs = torch.where(cumulative - top_probs < params.top_p, top_probs, torch.zeros_like(top_probs))
    cdf = top_probs.cumsum(dim=-1)
    target = uniforms.to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1)
    return top_ids.gather(1, choice).squeeze(1)


class Generator:
    """Batched generation with one model and tokenizer."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.cache_kwarg = _cache_kwarg(model)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
        self.eos_ids = torch.tensor(sorted({int(e) for e in eos_ids if e is not None}), device=self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(self.eos_ids[0])

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        batch_size: int,
        seed: int,
        on_batch: BatchCallback | None = None,
        skip: set[int] | frozenset[int] = frozenset(),
        length_caps: Sequence[int] | None = None,
    ) -> tuple[list[Completion | None], GenerationStats]:
        """Complete every prompt; `skip` lists indices already done (resume), left as None.

        `on_batch(indices, completions)` is called after each batch, e.g. to checkpoint it.
        `length_caps` lowers max_new_tokens per prompt: benchmarks use it to give random-weight
        models (which never emit a stop) a realistic mix of output lengths.
        """
        encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        order = sorted((i for i in range(len(prompts)) if i not in skip), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(prompts)
        started, generated = time.perf_counter(), 0
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            caps = [
                min(params.max_new_tokens, length_caps[i]) if length_caps else params.max_new_tokens for i in indices
            ]
            completions = self._generate_with_backoff([encoded[i] for i in indices], indices, params, seed, caps)
            for i, completion in zip(indices, completions, strict=True):
                results[i] = completion
            generated += sum(c.completion_tokens for c in completions)
            if on_batch:
                on_batch(indices, completions)
            elapsed = time.perf_counter() - started
            done = min(start + batch_size, len(order))
            log.info(
                "generated %d/%d rows, %.2f rows/s, %.1f tokens/s",
                done, len(order), done / elapsed, generated / elapsed,
            )  # fmt: skip
        return results, GenerationStats(len(order), generated, time.perf_counter() - started)

    def _generate_with_backoff(
        self, sequences: list[list[int]], global_ids: list[int], params: SamplingParams, seed: int, caps: list[int]
    ) -> list[Completion]:
        """Run a batch; on out-of-memory, split it in halves and run those instead of failing.

        Completions do not depend on batch composition (per-prompt noise), so a split batch gives
        the same rows. Raises only when a single row does not fit.
        """
        try:
            return self._generate_batch(sequences, global_ids, params, seed, caps)
        except (torch.OutOfMemoryError, MemoryError):
            if len(sequences) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(sequences) // 2
            log.warning("out of memory at batch %d; retrying as two batches of %d and %d",
                        len(sequences), half, len(sequences) - half)  # fmt: skip
            return [
                *self._generate_with_backoff(sequences[:half], global_ids[:half], params, seed, caps[:half]),
                *self._generate_with_backoff(sequences[half:], global_ids[half:], params, seed, caps[half:]),
            ]

    @torch.inference_mode()
    def _generate_batch(
        self, sequences: list[list[int]], global_ids: list[int], params: SamplingParams, seed: int, caps: list[int]
    ) -> list[Completion]:
        from transformers import DynamicCache

        batch, width = len(sequences), max(len(s) for s in sequences)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            attention[row, width - len(seq) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)

        active = torch.arange(batch, device=self.device)  # row -> index into `sequences`
        history = input_ids
        new_tokens: list[list[int]] = [[] for _ in range(batch)]
        finish: list[FinishReason | None] = [None] * batch
        row_ids = torch.tensor(global_ids)
        step_input, step_positions = input_ids, positions
        for step in range(max(caps)):
            out = self.model(
                input_ids=step_input, attention_mask=attention, position_ids=step_positions,
                use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache},
            )  # fmt: skip
            noise = torch.Generator().manual_seed(seed * 1_000_003 + step)
            uniforms = torch.rand(int(row_ids.max()) + 1, generator=noise)[row_ids[active.cpu()]]
            tokens = sample_next(out.logits[:, -1, :], history, params, uniforms)
            history = torch.cat([history, tokens[:, None]], dim=1)
            token_list = tokens.tolist()
            is_eos = torch.isin(tokens, self.eos_ids).tolist()
            keep: list[int] = []
            for pos, row in enumerate(active.tolist()):
                if finish[row] is not None:
                    continue  # finished earlier, waiting for the next compaction
                if is_eos[pos]:
                    finish[row] = "eos"
                    continue
                new_tokens[row].append(token_list[pos])
                tail = self.tokenizer.decode(new_tokens[row][-STOP_WINDOW_TOKENS:], skip_special_tokens=True)
                if any(s in tail for s in params.stop_sequences):
                    finish[row] = "stop"
                elif len(new_tokens[row]) >= caps[row]:
                    finish[row] = "length"
                else:
                    keep.append(pos)
            if not keep:
                break
            attention = torch.cat([attention, torch.ones_like(tokens)[:, None]], dim=1)
            step_positions = step_positions[:, -1:] + 1
            step_input = tokens[:, None]
            if len(token_list) - len(keep) >= max(1, len(token_list) // COMPACT_DIVISOR):
                keep_t = torch.tensor(keep, device=self.device)  # finished rows leave the batch and the cache
                cache.batch_select_indices(keep_t)
                active, attention, history = active[keep_t], attention[keep_t], history[keep_t]
                step_input, step_positions = step_input[keep_t], step_positions[keep_t]

        completions = []
        for row, seq in enumerate(sequences):
            text = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True)
            text, stopped = truncate_at_stop(text, params.stop_sequences)
            reason: FinishReason = "stop" if stopped else (finish[row] or "length")
            completion_tokens = len(new_tokens[row]) + (1 if reason == "eos" else 0)
            completions.append(Completion(text.strip(), reason, len(seq), completion_tokens))
        return completions
