"""Batched log-probabilities of continuations after a shared document, no sampling.

`LogprobScorer(model, tokenizer, document)` answers: for each (cue, continuation) row, what is
log p(each continuation token | document + cue + earlier continuation tokens)? The critic and the
judge are built on it. The document's KV cache is computed once and shared by every batch; only
the short cue/continuation suffixes run, and the output projection is applied to continuation
positions only (the 262k-token vocabulary dominates the cost otherwise). Rows are
padded to the longest of their batch, each with its own copy of the document's cache. (A packed,
compiled path was removed: it paid only on calls far larger than the pipeline makes; BENCHMARKS.md.)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .decoding import cache_kwarg
from .generation import is_out_of_memory
from .kernels import inference_attention, vocabulary_logprobs

log = logging.getLogger(__name__)

Text = str | Sequence[int]  # text, or its token ids


@dataclass
class _Batch:
    """One forward pass: decoder inputs, and the state that predicts each continuation token."""

    ids: torch.Tensor
    positions: torch.Tensor
    attention: torch.Tensor  # padding mask over the prefix and the suffixes
    cache: Any
    predicting: tuple[torch.Tensor, torch.Tensor]  # (batch row, position) of each state that predicts a token
    targets: torch.Tensor  # the continuation token each of those states predicts
    slots: torch.Tensor  # where each predicted token's log-probability goes in the call's output


class LogprobScorer:
    def __init__(self, model: Any, tokenizer: Any, document: str) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.decoder = model.get_decoder()
        self.device = model.device
        self.cache_kwarg = cache_kwarg(model)
        self.prefix_ids = tokenizer(document, add_special_tokens=True)["input_ids"]
        self._prefix_cache: Any = None

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
        cues, continuations = self._ids([c for c, _ in rows]), self._ids([t for _, t in rows])
        if (empty := next((k for k, cue in enumerate(cues) if not cue), None)) is not None:
            raise ValueError(f"row {empty}: an empty cue leaves the first continuation token unpredicted")
        lengths = [len(t) for t in continuations]
        while True:
            try:
                logprobs, slots = self._scored(cues, continuations, batch_size)
                break
            except (RuntimeError, MemoryError) as exc:
                if batch_size == 1 or not is_out_of_memory(exc):
                    raise
                # each row carries its own copy of the document's keys and values: a batch sized for one
                # GPU can exceed a smaller one's memory; the rows' scores do not depend on their batch
                log.warning("scoring %d rows in batches of %d ran out of memory (%s); again in batches of %d",
                            len(rows), batch_size, str(exc).splitlines()[0][:120], batch_size // 2)  # fmt: skip
                batch_size //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        flat = np.empty(sum(lengths), dtype=np.float64)
        # the only device-to-host sync of the call: batches queue up back to back
        flat[torch.cat(slots).cpu().numpy()] = torch.cat(logprobs).double().cpu().numpy()
        return np.split(flat, np.cumsum(lengths)[:-1])

    def _scored(
        self, cues: list[list[int]], continuations: list[list[int]], batch_size: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each batch's log-probabilities (on the device) and where they go in the call's output."""
        logprobs, slots = [], []
        with inference_attention(self.device):
            for batch in self._batches(cues, continuations, batch_size):
                logprobs.append(self._token_logprobs_of(batch))
                slots.append(batch.slots)
        return logprobs, slots

    @torch.inference_mode()
    def _prefix(self) -> Any:
        """KV cache of the document, computed once per scorer."""
        if self._prefix_cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
            ids = torch.tensor([self.prefix_ids], device=self.device)
            self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
            self._prefix_cache = cache
        return self._prefix_cache

    def _batches(self, cues: list[list[int]], continuations: list[list[int]], rows_per_batch: int) -> Iterator[_Batch]:
        """Rows padded to the longest of their batch, each with its own copy of the prefix cache. Rows are
        sorted by length first, which keeps each batch's padding small."""
        first_slots = np.cumsum([0] + [len(t) for t in continuations[:-1]]).tolist()
        order = sorted(range(len(cues)), key=lambda k: -(len(cues[k]) + len(continuations[k])))
        prefix_len = len(self.prefix_ids)
        pad = self.tokenizer.pad_token_id or 0
        self._prefix()
        for start in range(0, len(order), rows_per_batch):
            batch = [(cues[k], continuations[k], first_slots[k]) for k in order[start : start + rows_per_batch]]
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

    def _on_device(self, batch: _Batch) -> _Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, non_blocking=True)

        return _Batch(
            ids=move(batch.ids), positions=move(batch.positions), attention=move(batch.attention), cache=batch.cache,
            predicting=tuple(map(move, batch.predicting)), targets=move(batch.targets), slots=move(batch.slots),
        )  # fmt: skip

    @torch.inference_mode()
    def _token_logprobs_of(self, batch: _Batch) -> torch.Tensor:
        """log p of each predicted continuation token of `batch`, in `batch.slots` order (on the device)."""
        hidden = self.decoder(
            input_ids=batch.ids, attention_mask=batch.attention, position_ids=batch.positions,
            use_cache=True, **{self.cache_kwarg: batch.cache},
        ).last_hidden_state  # fmt: skip
        return vocabulary_logprobs(self.model, hidden[batch.predicting], batch.targets)
