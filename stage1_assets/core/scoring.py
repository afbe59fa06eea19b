"""Batched log-probabilities of continuations after a shared document, no sampling.

`LogprobScorer(model, tokenizer, document)` answers: for each (cue, continuation) row, what is
log p(each continuation token | document + cue + earlier continuation tokens)? The critic and the
judge are built on it. The document's KV cache is computed once and shared by every batch; only
the short cue/continuation suffixes run, and the output projection is applied to continuation
positions only (the 262k-token vocabulary dominates the cost otherwise).

Two batching strategies give the same numbers:
  * padded: rows padded to the longest of their batch, each with its own copy of the document's
    cache (any architecture, CPU or CUDA);
  * packed: rows laid end to end in one sequence against a single shared copy of the cache, with
    flex attention over a block mask that keeps rows apart (Gemma 3; on CUDA each decoder layer is
    compiled). It pays off for large calls on a GPU, after a compilation of several seconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from itertools import chain, islice
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface

from .generation import cache_kwarg

LOGIT_CHUNK = 1024  # positions projected onto the vocabulary at once: 1024 x 262k fp32 logits = 1 GiB
ENCODE_CHUNK = 2048  # rows tokenized at once; packed, the GPU runs the batches before them meanwhile
PACK_BLOCK = 128  # flex attention's tile; a packed batch is a whole number of tiles
PACKED_ATTENTION = "stage1_packed_prefix"
# Below this many rows a call stays padded: packed and compiled scoring saves ~0.3 ms a row on an
# H100 after a compilation of ~7 s (BENCHMARKS.md, critic), so the two meet near 20,000 rows.
COMPILE_MIN_ROWS = 20_000
# architectures whose decoder takes one prepared mask per layer type (full / sliding window)
PACKED_MODEL_TYPES = frozenset({"gemma3_text"})

Row = tuple[list[int], list[int], int]  # (cue tokens, continuation tokens, slot of its first token)
Text = str | Sequence[int]  # text, or its token ids


@dataclass
class _Batch:
    """One forward pass: decoder inputs, and the state that predicts each continuation token."""

    ids: torch.Tensor
    positions: torch.Tensor
    attention: Any  # padding mask (padded) or one flex BlockMask per layer type (packed)
    cache: Any
    predicting: tuple[torch.Tensor, torch.Tensor]  # (batch row, position) of each state that predicts a token
    targets: torch.Tensor  # the continuation token each of those states predicts
    slots: torch.Tensor  # where each predicted token's log-probability goes in the call's output


class LogprobScorer:
    def __init__(self, model: Any, tokenizer: Any, document: str, packed: bool | None = None) -> None:
        """`packed` picks how rows are batched: False padded, True packed, None (the default) packed on
        CUDA for calls of at least `COMPILE_MIN_ROWS` rows, where the faster scoring repays compilation."""
        self.model, self.tokenizer = model, tokenizer
        self.decoder = model.get_decoder()
        self.device = model.device
        self.cache_kwarg = cache_kwarg(model)
        self.prefix_ids = tokenizer(document, add_special_tokens=True)["input_ids"]
        self.supports_packing = model.config.model_type in PACKED_MODEL_TYPES
        if packed and not self.supports_packing:
            raise ValueError(f"packed scoring supports {sorted(PACKED_MODEL_TYPES)}, not {model.config.model_type!r}")
        self.packed = packed
        self._prefix_cache: Any = None
        self._compiled: tuple[list[Any], Any] | None = None

    def packs(self, rows: int) -> bool:
        """Whether a call scoring `rows` rows runs packed."""
        if self.packed is not None:
            return self.packed
        return self.supports_packing and self.device.type == "cuda" and rows >= COMPILE_MIN_ROWS

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def _ids(self, items: Sequence[Text]) -> list[list[int]]:
        texts = [t for t in items if isinstance(t, str)]
        encoded = iter(self.encode(texts))
        return [next(encoded) if isinstance(t, str) else list(t) for t in items]

    def continuation_logprobs(self, rows: Sequence[tuple[Text, Text]], batch_size: int = 32) -> list[np.ndarray]:
        """log p of every token of each row's continuation, after the document and the row's cue. Cue and
        continuation are text, or token ids where a caller needs to know which token is which."""
        if not rows:
            return []
        lengths: list[int] = []

        def tokenized() -> Iterator[tuple[int, Row]]:
            slot = 0
            for start in range(0, len(rows), ENCODE_CHUNK):
                chunk = rows[start : start + ENCODE_CHUNK]
                cues, continuations = self._ids([c for c, _ in chunk]), self._ids([t for _, t in chunk])
                for k, (cue, continuation) in enumerate(zip(cues, continuations, strict=True), start):
                    if not cue:
                        raise ValueError(f"row {k}: an empty cue leaves the first continuation token unpredicted")
                    lengths.append(len(continuation))
                    yield k, (cue, continuation, slot)
                    slot += len(continuation)

        packed = self.packs(len(rows))
        batches = self._packed_batches if packed else self._padded_batches
        logprobs, slots = [], []
        self._prefix()  # run with the model's own attention, before scoring may switch it
        with self._packed_attention(packed):
            for batch in batches(tokenized(), batch_size):
                logprobs.append(self._token_logprobs_of(batch, packed))
                slots.append(batch.slots)
        flat = np.empty(sum(lengths), dtype=np.float64)
        # the only device-to-host sync of the call: batches queue up back to back
        flat[torch.cat(slots).cpu().numpy()] = torch.cat(logprobs).double().cpu().numpy()
        return np.split(flat, np.cumsum(lengths)[:-1])

    @torch.inference_mode()
    def _prefix(self) -> Any:
        """KV cache of the document, every position on every layer: the masks of both paths apply the
        sliding window, so one cache serves both."""
        if self._prefix_cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
            ids = torch.tensor([self.prefix_ids], device=self.device)
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
            self._prefix_cache = cache
        return self._prefix_cache

    def _padded_batches(self, tokenized: Iterator[tuple[int, Row]], rows_per_batch: int) -> Iterator[_Batch]:
        """Rows padded to the longest of their batch, each with its own copy of the prefix cache. Rows are
        sorted by length first, which keeps each batch's padding small."""
        rows = dict(tokenized)
        order = sorted(rows, key=lambda k: -(len(rows[k][0]) + len(rows[k][1])))
        prefix_len = len(self.prefix_ids)
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), rows_per_batch):
            batch = [rows[k] for k in order[start : start + rows_per_batch]]
            width = max(len(c) + len(t) for c, t, _ in batch)
            ids = torch.tensor([c + t + [pad] * (width - len(c) - len(t)) for c, t, _ in batch])
            lengths = torch.tensor([[len(c), len(c) + len(t)] for c, t, _ in batch])
            position = torch.arange(width)
            suffix_mask = position < lengths[:, 1:]
            continuation_mask = (position >= lengths[:, :1]) & suffix_mask
            # the token at suffix position p is predicted by the hidden state at p - 1; the first cue
            # token is never a continuation token, so every continuation token has a predicting position.
            # Indices are computed here on the host: a boolean mask on the device would force a sync.
            row_of, predicted_at = continuation_mask[:, 1:].nonzero(as_tuple=True)
            first_slot = torch.tensor([s - len(c) for c, _, s in batch])
            cache = copy.deepcopy(self._prefix())
            cache.batch_repeat_interleave(len(batch))
            attention = torch.cat([torch.ones((len(batch), prefix_len), dtype=torch.long), suffix_mask.long()], dim=1)
            yield self._on_device(
                _Batch(
                    ids=ids,
                    positions=prefix_len + position.expand(len(batch), -1),
                    attention=attention,
                    cache=cache,
                    predicting=(row_of, predicted_at),
                    targets=ids[row_of, predicted_at + 1],
                    slots=first_slot[row_of] + predicted_at + 1,
                )  # fmt: skip
            )

    def _packed_batches(self, rows: Iterator[tuple[int, Row]], rows_per_batch: int) -> Iterator[_Batch]:
        """Rows laid end to end in one sequence of a fixed number of tokens; each row sees the shared
        prefix and its own earlier tokens, as it would alone (positions restart after the prefix).
        A batch is laid out on the host while the previous one runs, and goes up in one copy. Its size
        comes from the first chunk of rows (`pack_tokens`); rows need no sorting, packing leaves no padding."""
        first = list(islice(rows, ENCODE_CHUNK))
        budget = pack_tokens([len(c) + len(t) for _, (c, t, _) in first], rows_per_batch)
        prefix_len = len(self.prefix_ids)
        pad = self.tokenizer.pad_token_id or 0
        for tokens, pack in pack_rows(chain(first, rows), budget):
            lengths = np.array([len(c) + len(t) for _, (c, t, _) in pack])
            cue_lengths = np.array([len(c) for _, (c, _, _) in pack])
            layout = pack_layout(lengths, cue_lengths, tokens)
            ids = np.full(tokens, pad, dtype=np.int64)
            ids[: lengths.sum()] = list(chain.from_iterable(c + t for _, (c, t, _) in pack))
            first_slots = np.array([s for _, (_, _, s) in pack])
            on_device = self._upload(
                ids, prefix_len + layout.offsets, layout.row_of, layout.offsets, layout.row_start,
                layout.predicting, ids[layout.predicting + 1], first_slots[layout.response_row] + layout.token_index,
            )  # fmt: skip
            ids, positions, row_of, offsets, row_start, predicting, targets, slots = on_device
            masks = {
                layer_type: packed_block_mask(row_of, offsets, row_start, prefix_len, self._window(layer_type))
                for layer_type in set(self.model.config.layer_types)
            }
            yield _Batch(
                ids=ids[None], positions=positions[None], attention=masks, cache=None,
                predicting=(torch.zeros_like(predicting), predicting), targets=targets, slots=slots,
            )  # fmt: skip

    def _upload(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """Integer arrays to the device in one copy. Pinned, the copy queues behind the batch that is
        running; from pageable memory it would wait for it, and the GPU would idle between batches."""
        host = torch.from_numpy(np.concatenate(arrays).astype(np.int64, copy=False))
        if self.device.type == "cuda":
            host = host.pin_memory()
        return list(host.to(self.device, non_blocking=True).split([len(a) for a in arrays]))

    def _window(self, layer_type: str) -> int | None:
        return self.model.config.sliding_window if layer_type == "sliding_attention" else None

    def _on_device(self, batch: _Batch) -> _Batch:
        def move(t: Any) -> Any:
            return t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t

        return _Batch(
            ids=move(batch.ids), positions=move(batch.positions), attention=move(batch.attention), cache=batch.cache,
            predicting=tuple(map(move, batch.predicting)), targets=move(batch.targets), slots=move(batch.slots),
        )  # fmt: skip

    @contextmanager
    def _packed_attention(self, packed: bool) -> Iterator[None]:
        """For this call only: the model's attention goes to flex attention over the packed masks, each
        layer's attention holding its share of the prefix cache (looked up by layer index, it would make
        every layer a different program for torch.compile), and on CUDA the compiled layers stand in."""
        if not packed:
            yield
            return
        previous = self.model.config._attn_implementation
        layers = list(self.decoder.layers)
        for layer, cached in zip(layers, self._prefix().layers, strict=True):
            layer.self_attn.stage1_prefix = (cached.keys, cached.values)
        self.model.set_attn_implementation(PACKED_ATTENTION)
        if self.device.type == "cuda":
            for k, compiled in enumerate(self._compiled_layers()):
                self.decoder.layers[k] = compiled
        try:
            yield
        finally:
            for k, layer in enumerate(layers):
                self.decoder.layers[k] = layer
                del layer.self_attn.stage1_prefix
            self.model.set_attn_implementation(previous)

    def _compiled_layers(self) -> list[Any]:
        """Each decoder layer compiled (fusing the fp32 RMSNorms, GELU and rotary embedding between the
        matmuls): torch.compile shares one program among the layers of a kind, sliding or full."""
        if self._compiled is None:
            self._compiled = (
                [torch.compile(layer, dynamic=False) for layer in self.decoder.layers],
                torch.compile(self._vocabulary_logprobs),
            )
        return self._compiled[0]

    @torch.inference_mode()
    def _token_logprobs_of(self, batch: _Batch, packed: bool) -> torch.Tensor:
        """log p of each predicted continuation token of `batch`, in `batch.slots` order (on the device)."""
        hidden = self.decoder(
            input_ids=batch.ids, attention_mask=batch.attention, position_ids=batch.positions,
            use_cache=batch.cache is not None, **{self.cache_kwarg: batch.cache},
        ).last_hidden_state  # fmt: skip
        selected = hidden[batch.predicting]
        logprobs = self._compiled[1] if packed and self._compiled else self._vocabulary_logprobs
        return torch.cat([
            logprobs(selected[s : s + LOGIT_CHUNK], batch.targets[s : s + LOGIT_CHUNK])
            for s in range(0, len(batch.targets), LOGIT_CHUNK)
        ])  # fmt: skip

    def _vocabulary_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = softcapped(self.model.get_output_embeddings()(hidden), self.model.config).float()
        return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def softcapped(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """Final-logit soft capping (Gemma 2/3): cap * tanh(logits / cap), when the config sets a cap."""
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def pack_tokens(lengths: Sequence[int], rows_per_batch: int) -> int:
    """Tokens per packed batch: about `rows_per_batch` rows of mean length, at least the longest row,
    rounded up to a power of two so that a few shapes (each a compiled attention kernel) serve every call."""
    wanted = max(rows_per_batch * sum(lengths) / len(lengths), max(lengths), PACK_BLOCK)
    return 1 << (math.ceil(wanted) - 1).bit_length()


def pack_rows(rows: Iterable[tuple[int, Row]], tokens: int) -> Iterator[tuple[int, list[tuple[int, Row]]]]:
    """Consecutive runs of `rows` that fit in `tokens` tokens each, as (tokens, run). A row longer than
    `tokens` raises it (`pack_tokens`) for the rest of the call: one more compiled shape, once."""
    run: list[tuple[int, Row]] = []
    used = 0
    for k, row in rows:
        length = len(row[0]) + len(row[1])
        if used + length > tokens and run:
            yield tokens, run
            run, used = [], 0
        if length > tokens:
            tokens = pack_tokens([length], 1)
        run.append((k, row))
        used += length
    if run:
        yield tokens, run


@dataclass
class PackedLayout:
    """Where each token of a packed batch sits. The space after the last row is filler, each filler
    token a row of its own: one long filler row would attend to itself causally, at a cost quadratic
    in the unused space."""

    row_of: np.ndarray  # the row of each token
    offsets: np.ndarray  # each token's position within its row
    row_start: np.ndarray  # where each token's row begins
    predicting: np.ndarray  # the tokens whose states predict a continuation token
    response_row: np.ndarray  # the row of each of those
    token_index: np.ndarray  # which continuation token of its row each of those predicts


def pack_layout(lengths: np.ndarray, cue_lengths: np.ndarray, tokens: int) -> PackedLayout:
    """Layout of rows of `lengths` tokens (cue then continuation) packed into `tokens` tokens."""
    used = int(lengths.sum())
    row_len = np.concatenate([lengths, np.ones(tokens - used, dtype=lengths.dtype)])
    starts = np.cumsum(row_len) - row_len
    row_start = np.repeat(starts, row_len)
    response_len = lengths - cue_lengths
    # the token at packed position p is predicted by the state at p - 1
    first_predicting = starts[: len(lengths)] + cue_lengths - 1
    within = np.arange(response_len.sum()) - np.repeat(np.cumsum(response_len) - response_len, response_len)
    return PackedLayout(
        row_of=np.repeat(np.arange(len(row_len)), row_len),
        offsets=np.arange(tokens) - row_start,
        row_start=row_start,
        predicting=np.repeat(first_predicting, response_len) + within,
        response_row=np.repeat(np.arange(len(lengths)), response_len),
        token_index=within,
    )


def packed_block_mask(
    row_of: torch.Tensor, offsets: torch.Tensor, row_start: torch.Tensor, prefix_len: int, window: int | None
) -> Any:
    """Flex-attention mask of a packed batch, built on the device its layout (`PackedLayout`) is on.
    Keys are the prefix (0..prefix_len-1) then the packed tokens; a token sees the prefix and the
    earlier tokens of its own row, within `window` positions on sliding-window layers. Tiles of keys
    that no query of a tile can see are skipped; prefix tiles that every query of a tile sees are
    "full" (no mask evaluated); the rest are masked element-wise."""
    from torch.nn.attention.flex_attention import BlockMask

    tokens, device = len(row_of), row_of.device
    key_lo = torch.arange(0, prefix_len + tokens, PACK_BLOCK, device=device)  # first key of each key tile
    key_hi = torch.clamp(key_lo + PACK_BLOCK, max=prefix_len + tokens)[None] - 1
    key_lo = key_lo[None]
    query_tiles = offsets.view(-1, PACK_BLOCK)
    first_row_start = row_start[::PACK_BLOCK, None]  # own-row keys of a query tile begin at its first row's start
    query_hi = torch.arange(PACK_BLOCK - 1, tokens, PACK_BLOCK, device=device)[:, None]
    in_prefix = key_hi < prefix_len
    seen = (key_lo < prefix_len) | ((key_hi >= prefix_len + first_row_start) & (key_lo <= prefix_len + query_hi))
    full = in_prefix & seen
    if window is not None:
        # a query at offset o sits at position prefix_len + o; a prefix key k is in reach when the distance is < window
        nearest_query = prefix_len + query_tiles.min(dim=1, keepdim=True).values
        farthest_query = prefix_len + query_tiles.max(dim=1, keepdim=True).values
        seen &= ~(in_prefix & (nearest_query - key_hi >= window))
        full &= seen & (farthest_query - key_lo < window)
    partial = seen & ~full

    def visible(batch: Any, head: Any, q: Any, kv: Any) -> Any:
        packed = (kv - prefix_len).clamp(min=0)
        in_prefix = kv < prefix_len
        sees = in_prefix | ((row_of[packed] == row_of[q]) & (offsets[packed] <= offsets[q]))
        if window is None:
            return sees
        key_position = torch.where(in_prefix, kv, prefix_len + offsets[packed])
        return sees & (prefix_len + offsets[q] - key_position < window)

    def ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(count, key-tile indices, in order) of the True tiles of each query tile, as BlockMask takes them."""
        counts = tiles.sum(dim=1, dtype=torch.int32)
        indices = torch.argsort((~tiles).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return counts[None, None], indices[None, None]

    return BlockMask.from_kv_blocks(
        *ordered(partial), *ordered(full), BLOCK_SIZE=PACK_BLOCK, mask_mod=visible,
        seq_lengths=(tokens, prefix_len + tokens),
    )  # fmt: skip


@cache
def _flex_attention(device_type: str) -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    # compiled, flex attention is one fused kernel that skips masked tiles; uncompiled (CPU) it is
    # the reference implementation, which is what the tests compare against the padded path
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _packed_prefix_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    softcap: float | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function `LogprobScorer` routes the model to while it scores packed batches."""
    prefix_keys, prefix_values = module.stage1_prefix
    key, value = torch.cat([prefix_keys, key], dim=2), torch.cat([prefix_values, value], dim=2)

    def capped(score: Any, batch: Any, head: Any, q: Any, kv: Any) -> Any:
        return softcap * torch.tanh(score / softcap)

    out = _flex_attention(query.device.type)(
        query, key, value, score_mod=capped if softcap else None, block_mask=attention_mask, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )  # fmt: skip
    return out.transpose(1, 2), None


AttentionInterface.register(PACKED_ATTENTION, _packed_prefix_attention)
