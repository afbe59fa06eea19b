"""Batched sampling engine for base-model completions (CPU and CUDA alike).

Prompts are sorted by length and cut into batches (less padding). Decoding runs a loop written
here (core/decoding.py) rather than `model.generate`, because:
  * a block of tokens prompts of a batch start with (a few-shot document, the shots of an
    instruction-prompt group) is computed once, not once per prompt;
  * stop sequences are checked on the text as it is produced, and rows that stop (or hit EOS)
    leave the batch, so finished rows stop costing compute;
  * on CUDA a decode step is replayed as a CUDA graph instead of hundreds of kernel launches,
    and the next step is queued before the host checks this one's tokens for stops;
  * sampling noise is drawn per (seed, step, prompt index), so a prompt's completion does not
    depend on which other prompts share its batch, nor on the batch size (up to float rounding).
That independence is what makes memory back-off safe: a batch that runs out of memory, or whose
estimated working memory exceeds the configured ceiling, is split in halves and gives the same rows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .config import SamplingParams
from .decoding import DecodeSession, StopWatch, TokenFetch, next_power_of_two
from .kernels import inference_attention

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "eos", "length"]
# Nucleus sampling looks at the most likely tokens only; past a few hundred candidates the
# remaining probability mass is negligible at the temperatures used here, and sorting the full
# 262k-token vocabulary every step would dominate the decode time on CPU.
CANDIDATE_POOL = 512
# Without CUDA graphs, finished rows leave the batch once they are at least 1/COMPACT_DIVISOR of it.
COMPACT_DIVISOR = 8
# With them, the batch runs at power-of-two sizes down to this one (a graph each): below it a step
# costs about the same whatever the rows, and every size is one more capture.
MIN_GRAPH_ROWS = 16
# Enough trailing tokens to contain any stop sequence (each token decodes to >= 1 character).
STOP_WINDOW_TOKENS = 16
# Working-memory ceiling per batch, in MB, for every Generator of the process. On CPU, running out
# of memory usually brings the kernel's OOM killer (the shard dies without an exception to catch),
# so a batch must be sized before it runs; the value is host-specific, like the data directory,
# and is not a generation parameter: changing it does not change any output.
MEMORY_CEILING_ENV = "STAGE1_MEMORY_CEILING_MB"
# Full-vocabulary float32 tensors alive at once while choosing the next token: the model's logits,
# their float copy, the repetition-penalised copy and the softmax probabilities.
LOGIT_COPIES = 4
# Prefill holds, per prompt token, the MLP's gate and up projections (2 x intermediate_size).
MLP_PROJECTIONS = 2
# The classic transformer MLP width (4 x hidden), for configs that do not state intermediate_size.
MLP_WIDTH_FALLBACK = 4
FLOAT32_BYTES = 4
MB = 2**20
# Share of the free GPU memory a batch may plan to use: the estimate leaves out allocator
# fragmentation and the attention kernels' workspace.
CUDA_USABLE_FRACTION = 0.9
# torch reports a failed CPU allocation as a plain RuntimeError carrying this text.
CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"


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
    batch_splits: int = 0  # batches halved because of out-of-memory or the memory ceiling

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


BatchCallback = Callable[[list[int], list[Completion]], None]


def memory_ceiling_from_env() -> int | None:
    """`STAGE1_MEMORY_CEILING_MB` as a positive whole number of MB, or None when unset."""
    raw = os.environ.get(MEMORY_CEILING_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MEMORY_CEILING_ENV}={raw!r} must be a positive whole number of megabytes")
    return int(raw)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or torch's CPU allocator failing (a RuntimeError)."""
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and CPU_ALLOCATOR_FAILURE in str(exc)
    )


def truncate_at_stop(text: str, stop_sequences: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop_sequences) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sample_next(
    logits: torch.Tensor, history: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> torch.Tensor:
    """One token per row: repetition penalty, temperature, nucleus, inverse-CDF draw from `uniforms`.

    The full-vocabulary work is kept to a few passes (it dominates a decode step at a 262k
    vocabulary): penalty and temperature in place, then the candidates and the softmax normaliser.
    """
    logits = logits.float()  # a copy: the caller's logits are left alone
    if params.repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        logits.scatter_(1, history, seen)
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits.div_(params.temperature)
    top_logits, top_ids = logits.topk(min(CANDIDATE_POOL, logits.shape[-1]), dim=-1)
    top_probs = torch.exp(top_logits - torch.logsumexp(logits, dim=-1, keepdim=True))
    cumulative = top_probs.cumsum(dim=-1)
    # keep a candidate while the mass before it is below top_p (the first one always survives)
    top_probs = torch.where(cumulative - top_probs < params.top_p, top_probs, torch.zeros_like(top_probs))
    cdf = top_probs.cumsum(dim=-1)
    target = uniforms.to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1)
    return top_ids.gather(1, choice).squeeze(1)


class Generator:
    """Batched generation with one model and tokenizer.

    `memory_ceiling_mb` caps the estimated working memory of one batch (KV cache, logits and
    prefill activations, on top of the weights): larger batches are split before they run. None
    reads `STAGE1_MEMORY_CEILING_MB`. Unset, the ceiling on CUDA is the device memory free when a
    batch starts, so the configured batch size is an upper bound that shrinks to what fits; on CPU
    there is none (out-of-memory errors still split).
    """

    def __init__(self, model: Any, tokenizer: Any, memory_ceiling_mb: int | None = None) -> None:
        if memory_ceiling_mb is not None and memory_ceiling_mb < 1:
            raise ValueError(f"memory_ceiling_mb must be at least 1, got {memory_ceiling_mb}")
        self.memory_ceiling_mb = memory_ceiling_mb if memory_ceiling_mb is not None else memory_ceiling_from_env()
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
        self.eos_set = {int(e) for e in eos_ids if e is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_set)
        self._call: tuple[int, int, SamplingParams] = (0, 0, SamplingParams())  # widest prompt, longest cap
        self._decode: DecodeSession | None = None

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
        all_caps = [min(params.max_new_tokens, length_caps[i]) if length_caps else params.max_new_tokens for i in order]
        widest = max((len(encoded[i]) for i in order), default=1)
        self._call, self._decode = (widest, max(all_caps, default=1), params), None
        started, generated, splits = time.perf_counter(), 0, 0
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            caps = all_caps[start : start + batch_size]
            with inference_attention(self.device):
                completions, batch_splits = self._generate_with_backoff(
                    [encoded[i] for i in indices], indices, params, seed, caps
                )
            splits += batch_splits
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
        self._decode = None  # the slots are the size of a batch: give them back
        if splits:
            log.warning("%d batch splits to stay within memory (batch size %d)", splits, batch_size)
        return results, GenerationStats(len(order), generated, time.perf_counter() - started, splits)

    def estimate_batch_bytes(self, rows: int, prompt_tokens: int, new_tokens: int) -> int:
        """Estimated peak working memory of a batch of `rows` left-padded to `prompt_tokens`.

        The KV cache (keys and values of every layer at full length: sliding-window layers keep
        less, and over-estimating errs on the safe side) lives throughout; on top of it come either
        the prefill's MLP activations and attention scores or, later, the full-vocabulary tensors
        of one sampling step — the prefill's are freed before the first token is sampled.
        """
        config = self.model.config.get_text_config()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        mlp_width = getattr(config, "intermediate_size", None) or MLP_WIDTH_FALLBACK * config.hidden_size
        dtype_bytes = torch.empty((), dtype=self.model.dtype).element_size()
        kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * (prompt_tokens + new_tokens) * dtype_bytes
        sampling = config.vocab_size * (dtype_bytes + LOGIT_COPIES * FLOAT32_BYTES)
        prefill = prompt_tokens * (MLP_PROJECTIONS * mlp_width + heads * prompt_tokens) * dtype_bytes
        return rows * (kv_cache + max(sampling, prefill))

    def _free_device_mb(self) -> int | None:
        """On CUDA, the memory a batch can still use: free on the device plus what torch holds unused."""
        if self.device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        held_unused = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int((free + held_unused) * CUDA_USABLE_FRACTION / MB)

    def _generate_with_backoff(
        self, sequences: list[list[int]], global_ids: list[int], params: SamplingParams, seed: int, caps: list[int]
    ) -> tuple[list[Completion], int]:
        """Run a batch, split in halves while it is over the memory ceiling or runs out of memory.

        Completions do not depend on batch composition (per-prompt noise), so a split batch gives
        the same rows. Raises only when a single row does not fit. Returns the completions and
        how many splits it took.
        """
        ceiling = self.memory_ceiling_mb or self._free_device_mb()
        needed_mb = (
            self.estimate_batch_bytes(len(sequences), max(map(len, sequences)), max(caps)) / MB if ceiling else 0
        )
        # a lone row over the free GPU memory is still tried: the estimate errs high, and a real
        # out-of-memory error is clear enough; only a ceiling the user set is enforced for it
        lone_row_on_free_memory = len(sequences) == 1 and self.memory_ceiling_mb is None
        if ceiling is None or needed_mb <= ceiling or lone_row_on_free_memory:
            try:
                return self._generate_batch(sequences, global_ids, params, seed, caps), 0
            except (RuntimeError, MemoryError) as exc:
                if len(sequences) == 1 or not is_out_of_memory(exc):
                    raise
                self._decode = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                why = f"out of memory ({str(exc).splitlines()[0][:120]})"
        elif len(sequences) == 1:
            raise MemoryError(
                f"one row of {len(sequences[0])} prompt + {caps[0]} new tokens needs an estimated {needed_mb:.0f} MB, "
                f"above the memory ceiling of {ceiling} MB ({MEMORY_CEILING_ENV}); raise the "
                "ceiling or lower max_new_tokens"
            )
        else:
            why = f"estimated {needed_mb:.0f} MB is above the memory ceiling of {ceiling} MB"
        half = len(sequences) // 2
        log.warning("batch of %d: %s; running it as batches of %d and %d",
                    len(sequences), why, half, len(sequences) - half)  # fmt: skip
        first, first_splits = self._generate_with_backoff(
            sequences[:half], global_ids[:half], params, seed, caps[:half]
        )
        second, second_splits = self._generate_with_backoff(
            sequences[half:], global_ids[half:], params, seed, caps[half:]
        )
        return [*first, *second], 1 + first_splits + second_splits

    def _session(self, rows: int) -> DecodeSession:
        """The call's decode session, made (again) when none holds `rows` rows."""
        if self._decode is None or self._decode.rows < rows:
            self._decode = None  # free the old slots before allocating new ones
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            prompt_width, new_tokens, params = self._call
            self._decode = DecodeSession(
                self.model, prompt_width, rows, new_tokens,
                sampler=lambda logits, history, uniforms: sample_next(logits, history, params, uniforms),
            )  # fmt: skip
        return self._decode

    @staticmethod
    def _noise(global_ids: list[int], seed: int, steps: int) -> torch.Tensor:
        """[steps, rows] uniforms: step t of prompt i draws from a generator seeded by (seed, t), at index i."""
        size, columns = max(global_ids) + 1, torch.tensor(global_ids)
        return torch.stack([
            torch.rand(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))[columns]
            for step in range(steps)
        ])  # fmt: skip

    def _running_rows(self, survivors: int, running: int, graphs: bool) -> int:
        """How many rows the next step runs: compacting copies every slot, so it waits until it pays.

        With CUDA graphs the batch shrinks through powers of two (one graph each); without, once
        1/COMPACT_DIVISOR of it has finished.
        """
        if graphs:
            return min(running, max(MIN_GRAPH_ROWS, next_power_of_two(survivors)))
        return survivors if running - survivors >= max(1, running // COMPACT_DIVISOR) else running

    @torch.inference_mode()
    def _generate_batch(
        self, sequences: list[list[int]], global_ids: list[int], params: SamplingParams, seed: int, caps: list[int]
    ) -> list[Completion]:
        batch, width = len(sequences), max(len(s) for s in sequences)
        session = self._session(batch)
        # the repetition penalty sees what the model saw: a padded row also sees the pad token
        filler = [self.pad_id if len(s) < width else s[0] for s in sequences]
        first = session.start_batch(sequences, self._noise(global_ids, seed, max(caps)), filler, self.pad_id)
        watch = StopWatch(self.tokenizer, params.stop_sequences, STOP_WINDOW_TOKENS)
        watching = [watch.new_row() for _ in range(batch)]
        new_tokens: list[list[int]] = [[] for _ in range(batch)]
        finish: list[FinishReason | None] = [None] * batch
        at = list(range(batch))  # at[p]: the batch row in position p of the session's buffers
        # with graphs, a batch runs at a graph's size: the spare rows compute nothing anyone reads
        running = min(session.rows, max(MIN_GRAPH_ROWS, next_power_of_two(batch))) if session.use_graphs else batch
        # the tokens of the step being read, with the layout (`at`) of the buffers that step ran on; `at` is
        # only ever replaced, never changed in place, so a step's layout is kept without a copy
        fetched, fetched_at = TokenFetch(first), at
        for step in range(max(caps)):
            # the next step is queued before this one's tokens are read, so the device decodes while the host
            # checks stops; a row that finishes now runs one step nobody reads
            ahead = (TokenFetch(session.decode(running, step)), at) if step < max(caps) - 1 else None
            tokens = fetched.tolist()
            watch.learn(tokens)
            survivors: list[int] = []  # rows
            for pos, row in enumerate(fetched_at):
                if finish[row] is not None:
                    continue  # finished earlier, waiting for the next compaction
                if tokens[pos] in self.eos_set:
                    finish[row] = "eos"
                    continue
                new_tokens[row].append(tokens[pos])
                if watch.stopped(watching[row], new_tokens[row]):
                    finish[row] = "stop"
                elif len(new_tokens[row]) >= caps[row]:
                    finish[row] = "length"
                else:
                    survivors.append(row)
            if not survivors or ahead is None:
                break
            next_running = self._running_rows(len(survivors), running, session.use_graphs)
            if next_running < running:
                # the queued step ran on `at`: the survivors move to the front after it
                position = {row: pos for pos, row in enumerate(at)}
                session.keep_rows([position[row] for row in survivors], running)
                at, running = survivors, next_running
            fetched, fetched_at = ahead

        completions = []
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for row, (seq, text) in enumerate(zip(sequences, texts, strict=True)):
            text, stopped = truncate_at_stop(text, params.stop_sequences)
            reason: FinishReason = "stop" if stopped else (finish[row] or "length")
            completion_tokens = len(new_tokens[row]) + (1 if reason == "eos" else 0)
            completions.append(Completion(text.strip(), reason, len(seq), completion_tokens))
        return completions
