"""The decode loop behind `Generator`: preallocated KV slots, a shared prompt prefix, CUDA graphs.

One `DecodeSession` serves one `Generator.generate` call:
  * blocks of tokens that prompts of a batch start with (the few-shot document of response prompts,
    the shots a group of instruction prompts shares) are run through the model once per block and
    their keys and values copied into the rows that start with them, so a batch only prefills what
    differs;
  * keys and values live in fixed slots `[rows, kv_heads, slots, head_dim]` per layer:
        [0, P)           the row's shared block (P = 0 for a row that shares none)
        [P, W)           the row's own prompt tokens, right-aligned at the longest prompt W of the
                         call (the gap before them is padding)
        [W, ...)         generated tokens, one slot per step
    Which slots a query sees (causal order, padding, sliding windows) is decided by the attention
    mask from each slot's token position, so the arithmetic is the model's own;
  * with fixed addresses, one decode step (forward, sampling) is captured as a CUDA graph per
    batch-size bucket and replayed: a step costs one launch instead of hundreds. As rows finish,
    the survivors move to the front and the next smaller bucket runs.
Per-prompt sampling noise (see core/generation.py) keeps every completion independent of which
rows share its batch, so none of this changes what a prompt produces, up to float rounding.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

log = logging.getLogger(__name__)

# A prefix shorter than this is not worth a forward pass of its own.
MIN_SHARED_PREFIX = 8
# Cuts tried when grouping a batch's prompts by the tokens they share (spread over the distinct
# figures): enough to find the few-shot blocks, few enough to cost the host ~ms while the GPU waits.
MAX_GROUPING_CUTS = 24
SLOT_ALIGNMENT = 16
# The token position of a slot no query may see yet.
UNWRITTEN = 2**40

# (logits, history, uniforms) -> one token per row
Sampler = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cache_kwarg(model: Any) -> str:
    """transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class SharedBlocks(NamedTuple):
    """How a batch's prompts split into a block computed ahead (possibly shared) and the rest of their own."""

    heads: np.ndarray  # per prompt: tokens computed as its block (0: none)
    block: np.ndarray  # per prompt: its block, an index into `rows` (-1: none)
    rows: np.ndarray  # per block: a prompt that starts with it


def shared_prefixes(sequences: Sequence[Sequence[int]], width: int) -> SharedBlocks:
    """Blocks that prompts start with, chosen so that the batch prefills the fewest tokens.

    Prefill runs the blocks first, each once (as a batch padded to the longest block), then every
    prompt's own rest, padded to the longest rest. Prompts that share their first tokens form a group
    with one block: prompts group by how many tokens they share with their lexicographic neighbours,
    and up to MAX_GROUPING_CUTS cuts through those figures are tried. A prompt whose group's block
    leaves it a rest longer than the others' (one that shares nothing) is given a block of its own,
    so that it does not set every row's rest. A block leaves each prompt at least one token of its
    own (its logits start decoding) and, with the longest rest after it, fits in `width` slots.
    """
    n = len(sequences)
    nothing = SharedBlocks(np.zeros(n, dtype=np.int64), np.full(n, -1), np.zeros(0, dtype=np.int64))
    if n < 2:
        return nothing
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=n)
    tokens = np.fromiter(itertools.chain.from_iterable(sequences), np.int64, int(lengths.sum()))
    padded = np.full((n, int(lengths.max())), -1, dtype=np.int64)
    padded[np.arange(padded.shape[1])[None, :] < lengths[:, None]] = tokens
    # sorted as bytes (compared by memcmp, not token by token): prompts that start alike end up side by side
    as_bytes = [row[:length].astype(">u4").tobytes() for row, length in zip(padded, lengths.tolist(), strict=True)]
    order = np.array(sorted(range(n), key=as_bytes.__getitem__))
    lengths, padded = lengths[order], padded[order]
    same = padded[1:] == padded[:-1]
    common = np.where(same.all(axis=1), padded.shape[1], same.argmin(axis=1))  # with the next prompt
    common = np.minimum(common, np.minimum(lengths[1:], lengths[:-1]) - 1)
    never = np.iinfo(np.int64).max
    cuts = np.unique(common[common >= MIN_SHARED_PREFIX])
    cuts = cuts[np.unique(np.linspace(0, len(cuts) - 1, min(len(cuts), MAX_GROUPING_CUTS)).round().astype(int))]
    best_cost, best = n * int(lengths.max()), None
    for cut in cuts:
        joined = common >= cut  # prompts k and k + 1 share a group
        starts = np.flatnonzero(np.concatenate([[True], ~joined]))
        sizes = np.diff(np.append(starts, n))
        # a group shares the fewest tokens any two neighbours in it share (a prompt alone: none)
        group_shared = np.minimum.reduceat(np.append(np.where(joined, common, never), never), starts)
        group_shared[(group_shared == never) | (group_shared < MIN_SHARED_PREFIX)] = 0
        shared, group = np.repeat(group_shared, sizes), np.repeat(np.arange(len(starts)), sizes)
        grouped = shared > 0
        # the longest rest either over the grouped prompts (the others get blocks of their own) or over all
        for rest in {int((lengths - shared)[grouped].max()), int((lengths - shared).max())}:
            heads = np.where(grouped, np.minimum(shared, width - rest), np.maximum(lengths - rest, 0))
            blocks = np.count_nonzero(group_shared) + np.count_nonzero(heads[~grouped])
            cost = blocks * int(heads.max()) + n * rest
            if cost < best_cost:
                best_cost, best = cost, (heads, np.where(grouped, group, np.where(heads > 0, n + np.arange(n), -1)))
    if best is None:
        return nothing
    heads, block = best
    block_ids, first = np.unique(block, return_index=True)
    first, block_ids = first[block_ids >= 0], block_ids[block_ids >= 0]
    out = SharedBlocks(np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), order[first])
    out.heads[order] = heads
    out.block[order] = np.where(block >= 0, np.searchsorted(block_ids, block), -1)
    return out


def aligned_rows(
    sequences: Sequence[Sequence[int]], end: int | np.ndarray, width: int, filler: np.ndarray
) -> torch.Tensor:
    """[len(sequences), width] token ids: each sequence ending at column `end` (one for all, or one per
    sequence), its row's `filler` elsewhere."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    tokens = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    end = np.broadcast_to(np.asarray(end, dtype=np.int64), lengths.shape)[:, None]
    rows = np.repeat(filler.astype(np.int64)[:, None], width, axis=1)
    column = np.arange(width)[None, :]
    rows[(column >= end - lengths[:, None]) & (column < end)] = tokens  # row-major: the sequences in order
    return torch.from_numpy(rows)


def next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class KVSlots:
    """Keys and values of every layer in fixed slots, standing in for transformers' cache.

    Attention layers call `update`: this forward's keys and values are written at `write_at` and
    every slot is returned; the attention mask decides which of them count.
    """

    def __init__(self, config: Any, rows: int, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        shape = (rows, kv_heads, slots, head_dim)
        # zeros, not empty: a masked slot still enters the weighted sum (with weight 0), and 0 * NaN is NaN
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        rows = key_states.shape[0]
        keys, values = self.keys[layer_idx][:rows], self.values[layer_idx][:rows]
        keys.index_copy_(2, self.write_at, key_states)
        values.index_copy_(2, self.write_at, value_states)
        return keys, values

    def keep_rows(self, index: torch.Tensor) -> None:
        """Rows `index` become rows 0..len(index)-1 (the others are dropped)."""
        for buffer in (*self.keys, *self.values):
            buffer[: len(index)] = buffer.index_select(0, index)

    def share_blocks(self, source: torch.Tensor, slots: int) -> None:
        """Row `source[r]`'s first `slots` slots into row r, for every row r < len(source): the shared blocks."""
        for buffer in (*self.keys, *self.values):
            buffer[: len(source), :, :slots] = buffer[:, :, :slots].index_select(0, source)


class StopWatch:
    """Which rows may have just produced a stop sequence, without decoding every row every step.

    A stop sequence that appears at this step begins with one of its first characters at most
    `len(stop) - 1` characters before the new token's text ends, so only rows whose recent text
    holds such a character are decoded and checked; texts of single tokens are cached. A token
    that decodes to a replacement character (part of a multi-byte character) makes its row a
    candidate until it leaves the window, since its text is only known in context.
    """

    def __init__(self, tokenizer: Any, stop_sequences: Sequence[str], window: int) -> None:
        self.tokenizer, self.stops, self.window = tokenizer, tuple(stop_sequences), window
        self.starts = {s[0] for s in self.stops}
        self.longest = max((len(s) for s in self.stops), default=0)
        self.texts: dict[int, str] = {}

    def learn(self, tokens: Sequence[int]) -> None:
        """Decode the single-token texts not seen yet, in one batch."""
        new = list({t for t in tokens if t not in self.texts})
        if new:
            texts = self.tokenizer.batch_decode([[t] for t in new], skip_special_tokens=True)
            self.texts.update(zip(new, texts, strict=True))

    def text(self, token: int) -> str:
        if token not in self.texts:
            self.learn([token])
        return self.texts[token]

    def new_row(self) -> list[int]:
        """Per-row state: [characters since the last stop-start character, steps since an unsure token]."""
        return [self.longest, self.window]

    def stopped(self, state: list[int], tokens: list[int]) -> bool:
        """`tokens` is the row's completion so far, its newest token last."""
        text = self.text(tokens[-1])
        since_start = state[0]
        last_start = max((text.rfind(c) for c in self.starts), default=-1)
        state[0] = len(text) - 1 - last_start if last_start >= 0 else since_start + len(text)
        state[1] = 0 if "\ufffd" in text else state[1] + 1
        if last_start < 0 and since_start >= self.longest and state[1] >= self.window:
            return False
        tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stops)


class TokenFetch:
    """A step's sampled tokens on their way to the host. On CUDA the copy is queued behind the step, so the
    host can queue the next step and do its own work before it waits; on CPU the step has already run."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self._tokens: list[int] | None = None
        if tokens.device.type == "cuda":
            self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self._host.copy_(tokens, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:  # the buffer behind `tokens` is overwritten by the next step: read it now
            self._tokens = tokens.tolist()

    def tolist(self) -> list[int]:
        if self._tokens is None:
            self._copied.synchronize()
            self._tokens = self._host.tolist()
        return self._tokens


class DecodeSession:
    """Slots, masks and decode-step graphs for the batches of one `generate` call."""

    def __init__(self, model: Any, prompt_width: int, rows: int, new_tokens: int, sampler: Sampler) -> None:
        """`prompt_width`: the longest prompt of the call, in tokens; `new_tokens`: its longest completion."""
        self.model, self.sampler = model, sampler
        self.cache_kwarg = cache_kwarg(model)
        self.device = model.device
        self.config = model.config.get_text_config()
        self.prompt_width = prompt_width
        self.rows = rows
        # memory-efficient attention wants the key length a multiple of 8 (else its mask is copied)
        slots = -(-(self.prompt_width + new_tokens) // SLOT_ALIGNMENT) * SLOT_ALIGNMENT
        self.cache = KVSlots(self.config, rows, slots, model.dtype, self.device)
        device = self.device
        self.slot = torch.arange(slots, device=device)
        # until a batch lays out its rows, every slot is in the future of every query: nobody sees it
        self.key_position = torch.full((rows, slots), UNWRITTEN, dtype=torch.long, device=device)
        self.not_padding = torch.ones((rows, slots), dtype=torch.bool, device=device)
        self.first_position = torch.zeros(rows, dtype=torch.long, device=device)  # the first generated token's
        self.history = torch.zeros((rows, self.prompt_width + new_tokens + 1), dtype=torch.long, device=device)
        self.noise = torch.zeros((new_tokens + 1, rows), dtype=torch.float32, device=device)
        self.noise_column = torch.arange(rows, device=device)  # which batch row sits in each row of the buffers
        self.fed = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.sampled = torch.zeros(rows, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.use_graphs = self.device.type == "cuda"
        self.graph_pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.windows = {
            layer_type: self.config.sliding_window if "sliding" in layer_type else None
            for layer_type in (getattr(self.config, "layer_types", None) or ["full_attention"])
        }

    # --- masks ------------------------------------------------------------------------------------
    def _masks(self, rows: int, query_position: torch.Tensor, own_slot: torch.Tensor) -> Any:
        """Per layer type, [rows, 1, queries, slots]: what each query may attend to.

        Every query also sees its own slot (`own_slot`, one per query), so that one that sees nothing
        else (a padding query, a spare row of a graph's batch) does not turn into NaN: its keys and
        values stay in the slots, where a NaN would poison every later query (0 weight * NaN).
        """
        key_position = self.key_position[:rows, None, :]
        query = query_position[:, :, None]
        visible = self.not_padding[:rows, None, :] & (key_position <= query)
        masks = {}
        for layer_type, window in self.windows.items():
            mask = visible & (key_position > query - window) if window else visible
            mask = mask | (self.slot[None, None, :] == own_slot[None, :, None])
            masks[layer_type] = self._model_mask(mask[:, None])
        return masks if getattr(self.config, "layer_types", None) else masks["full_attention"]

    def _model_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        if self.config._attn_implementation == "eager":  # eager attention adds the mask to its scores
            return torch.zeros(allowed.shape, dtype=self.model.dtype, device=self.device).masked_fill(
                ~allowed, torch.finfo(self.model.dtype).min
            )
        return allowed

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, masks: Any) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, position_ids=positions, attention_mask=masks, logits_to_keep=1,
            **{self.cache_kwarg: self.cache},
        )  # fmt: skip
        return out.logits[:, -1, :]

    # --- prefill ----------------------------------------------------------------------------------
    def _prefill_blocks(self, blocks: Sequence[Sequence[int]], source: torch.Tensor, pad_id: int) -> None:
        """A batch's blocks through the model once each (rows 0.., left-aligned), then copied to the rows that
        start with them (`source[r]`: row r's block)."""
        rows, width = len(blocks), max(map(len, blocks))
        lengths = np.array([len(b) for b in blocks])
        ids = aligned_rows(blocks, lengths, width, np.full(rows, pad_id))  # left-aligned: each ends at its length
        ends = torch.from_numpy(lengths).to(self.device)[:, None]
        self.key_position[:rows] = torch.where(self.slot < ends, self.slot, UNWRITTEN)
        self.not_padding[:rows] = True
        self.cache.write_at = self.slot[:width]
        positions = self.slot[None, :width].expand(rows, width)
        self._forward(ids.to(self.device), positions, self._masks(rows, positions, self.slot[:width]))
        self.cache.share_blocks(source, width)

    def start_batch(
        self, sequences: Sequence[Sequence[int]], noise: torch.Tensor, history_filler: Sequence[int], pad_id: int
    ) -> torch.Tensor:
        """Lay out a batch's rows, prefill their own tokens and sample each row's first token.

        Blocks that prompts share (a few-shot document; the shots an instruction-prompt group starts
        with) are computed once per block (`shared_prefixes`); each row then prefills only its own tokens.
        """
        rows, width = len(sequences), self.prompt_width
        blocks = shared_prefixes(sequences, width)
        if len(blocks.rows):
            heads = [sequences[r][: blocks.heads[r]] for r in blocks.rows.tolist()]
            # a row without a block copies one it never sees (its slots before its own tokens are padding)
            self._prefill_blocks(heads, torch.from_numpy(blocks.block.clip(min=0)).to(self.device), pad_id)
        shared = blocks.heads
        suffixes = [s[p:] for s, p in zip(sequences, shared.tolist(), strict=True)]
        batch_width = max(map(len, suffixes))
        start = width - batch_width  # a row's slots [its block, start) are padding
        ids = aligned_rows(suffixes, batch_width, batch_width, np.full(rows, pad_id))
        history = aligned_rows(sequences, width, self.history.shape[1], np.asarray(history_filler))
        lengths = torch.tensor([len(s) for s in suffixes])
        prefix = torch.from_numpy(shared)[:, None]
        ids, lengths, prefix = ids.to(self.device), lengths.to(self.device), prefix.to(self.device)
        self.history[:rows] = history.to(self.device)
        padding = (width - lengths)[:, None]  # a row's slot minus its token position, past its block
        slots = self.slot[None, :]
        self.key_position[:rows] = torch.where(slots < prefix, slots, slots - padding + prefix)
        self.not_padding[:rows] = (slots < prefix) | (slots >= width - lengths[:, None])
        self.first_position[:rows] = prefix[:, 0] + lengths
        self.noise[: noise.shape[0], :rows] = noise.to(self.device)
        self.noise_column[:rows] = torch.arange(rows, device=self.device)
        self.cache.write_at = self.slot[start:width]
        positions = self.key_position[:rows, start:width].clamp(min=0)
        logits = self._forward(ids, positions, self._masks(rows, positions, self.slot[start:width]))
        first = self.sampler(logits, self.history[:rows], self.noise[0, :rows])
        self.history[:rows, width] = first
        self.fed[:rows, 0] = first
        return first

    # --- decode -----------------------------------------------------------------------------------
    def _decode(self, rows: int) -> None:
        """Feed `fed` (token `step`), sample token `step + 1` into `sampled` and the history."""
        position = self.first_position[:rows, None] + self.step
        self.cache.write_at = (self.prompt_width + self.step).view(1)
        logits = self._forward(self.fed[:rows], position, self._masks(rows, position, self.cache.write_at))
        uniforms = self.noise.index_select(0, (self.step + 1).view(1))[0].index_select(0, self.noise_column[:rows])
        sampled = self.sampler(logits, self.history[:rows], uniforms)
        self.history[:rows].index_copy_(1, (self.prompt_width + 1 + self.step).view(1), sampled[:, None])
        self.sampled[:rows] = sampled

    def decode(self, rows: int, step: int) -> torch.Tensor:
        """Run decode step `step` on the first `rows` rows; the sampled tokens."""
        self.step.fill_(step)
        graph = self._graph(rows) if self.use_graphs else None
        if graph is None:
            self._decode(rows)
        else:
            graph.replay()
        self.fed[:rows, 0] = self.sampled[:rows]
        return self.sampled[:rows]

    def _graph(self, rows: int) -> torch.cuda.CUDAGraph | None:
        if rows not in self.graphs:
            # the first capture is preceded by a warm-up on a side stream (lazy initialisations must not
            # be captured); a step is idempotent, so running it before its replay is harmless
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            try:
                if not self.graphs:
                    with torch.cuda.stream(stream):
                        self._decode(rows)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.graph_pool):
                    self._decode(rows)
            except RuntimeError as exc:  # a model whose forward cannot be captured still decodes, eagerly
                torch.cuda.current_stream(self.device).wait_stream(stream)
                log.warning("decode step not captured as a CUDA graph (%s); running it eagerly", str(exc)[:200])
                self.use_graphs = False
                return None
            self.graphs[rows] = graph
        return self.graphs[rows]

    def keep_rows(self, positions: Sequence[int], rows: int) -> None:
        """Rows `positions` of the first `rows` move to the front; the rest leave the batch."""
        index = torch.tensor(positions, device=self.device)
        self.cache.keep_rows(index)
        for buffer in (self.key_position, self.not_padding, self.first_position, self.history,
                       self.noise_column, self.fed):  # fmt: skip
            buffer[: len(positions)] = buffer[:rows].index_select(0, index)
