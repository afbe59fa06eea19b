"""A training micro-batch as fixed-shape chunks of packed sequences, each chunk one CUDA-graph replay.

Why: LoRA training of a ~1B model on short sequences is bound by the host, not the GPU. One eager
step launches thousands of small kernels (4-bit dequantisation, the casts and dropout of every LoRA
pair, Gemma's fp32 norms) and the GPU waits on Python between them (BENCHMARKS.md, training). So a
micro-batch's sequences are packed first-fit into rows of `width` tokens (several sequences per row,
each attending only to itself, positions restarting at 0) and the rows are cut into chunks of one
shape, `[rows, width]`. On CUDA the forward, the loss and the backward of a chunk are captured once
as a graph and replayed for every chunk: the host issues one replay per chunk, and no padding is
computed beyond a chunk's unused tail. On CPU the same chunks run eagerly.

The gradient of every chunk is added into the trainable parameters' `.grad` (allocated once, zeroed
in place after each optimizer step), scaled so that a micro-batch contributes the mean cross-entropy
over its response tokens, as a padded batch did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .kernels import softcapped

log = logging.getLogger(__name__)

IGNORE = -100  # a position whose next token carries no loss (prompt, padding, end of a sequence)
WARMUP_PASSES = 2  # eager passes on a side stream before capture (cuBLAS workspaces, autograd state)


class Encoded(Protocol):
    input_ids: list[int]
    labels: list[int]  # IGNORE where a token is not trained on (the prompt)


@dataclass(frozen=True)
class Chunk:
    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # position inside the token's own sequence
    sequence_ids: torch.Tensor  # tokens attend only to tokens of their own sequence
    targets: torch.Tensor  # the next token where it is trained on, else IGNORE
    tokens: int  # real (non-padding) tokens
    labelled: int  # positions with a target

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.input_ids, self.position_ids, self.sequence_ids, self.targets


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: indices of sequences per row of `width` tokens (every length <= width)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pack_chunks(examples: Sequence[Encoded], rows: int, width: int, pad_id: int, fixed_shape: bool) -> list[Chunk]:
    """The examples packed into chunks of `rows` x `width` tokens; the last chunk keeps `rows` rows
    when `fixed_shape` (one CUDA graph serves every chunk), else only the rows it uses."""
    if any(len(e.input_ids) > width for e in examples):
        raise ValueError(f"a sequence is longer than the packing width {width}")
    placed = pack_rows([len(e.input_ids) for e in examples], width)
    chunks = []
    for start in range(0, len(placed), rows):
        members = placed[start : start + rows]
        chunks.append(_chunk(examples, members, rows if fixed_shape else len(members), width, pad_id))
    return chunks


def _chunk(examples: Sequence[Encoded], members: list[list[int]], rows: int, width: int, pad_id: int) -> Chunk:
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    sequences = torch.zeros((rows, width), dtype=torch.long)
    targets = torch.full((rows, width), IGNORE, dtype=torch.long)
    sequence, tokens = 0, 0
    for row in range(rows):
        column = 0
        for i in members[row] if row < len(members) else []:
            e, n = examples[i], len(examples[i].input_ids)
            ids[row, column : column + n] = torch.tensor(e.input_ids)
            positions[row, column : column + n] = torch.arange(n)
            sequences[row, column : column + n] = sequence
            targets[row, column : column + n - 1] = torch.tensor(e.labels[1:])  # position t predicts token t+1
            column, sequence, tokens = column + n, sequence + 1, tokens + n
        # the padding tail is a sequence of its own, positions from 0: every query attends to at least itself
        positions[row, column:] = torch.arange(width - column)
        sequences[row, column:] = sequence
        sequence += 1
    return Chunk(ids, positions, sequences, targets, tokens, int((targets != IGNORE).sum()))


def attention_masks(position_ids: torch.Tensor, sequence_ids: torch.Tensor, config: Any) -> dict[str, torch.Tensor]:
    """Boolean [rows, 1, width, width] masks (True = attend): causal within each packed sequence, and
    within the sliding window for sliding-attention layers."""
    query, key = position_ids[:, :, None], position_ids[:, None, :]
    full = (sequence_ids[:, :, None] == sequence_ids[:, None, :]) & (key <= query)
    masks = {"full_attention": full[:, None]}
    window = getattr(config, "sliding_window", None)
    if window:
        masks["sliding_attention"] = (full & (query - key < window))[:, None]
    return masks


def loss_sum(model: Any, chunk: Sequence[torch.Tensor], labelled_only: bool, autocast: bool = False) -> torch.Tensor:
    """Summed cross-entropy of a chunk's targets. `labelled_only` projects only the labelled positions
    onto the 262k vocabulary (eager); a captured graph needs fixed shapes and projects every position.
    `autocast` runs the forward under bf16 autocast (CUDA): the LoRA matmuls then read the bf16
    activations as they are, instead of an fp32 copy per adapter (the fp32 LoRA weights stay the masters)."""
    input_ids, position_ids, sequence_ids, targets = chunk
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        hidden = causal.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False,
            attention_mask=attention_masks(position_ids, sequence_ids, causal.config),
        ).last_hidden_state  # fmt: skip
    if labelled_only:
        keep = targets != IGNORE
        hidden, targets = hidden[keep], targets[keep]
    logits = softcapped(causal.get_output_embeddings()(hidden), causal.config).float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


class ChunkStep:
    """Adds `scale` x the gradient of a chunk's summed loss into the trainable parameters' `.grad`.

    On CUDA (`graphed`), the first chunk is run eagerly on a side stream, its gradient discarded, and the
    work captured as one graph into which every later chunk's tensors are copied; a model whose step
    cannot be captured runs eagerly, with a warning.
    """

    def __init__(self, model: Any, graphed: bool, autocast: bool = False) -> None:
        self.model, self.autocast = model, autocast
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        for p in self.trainable:
            p.grad = torch.zeros_like(p)  # the gradient accumulates here; zeroed in place, never freed
        self.graphed = graphed
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] = ()
        self.static_scale = torch.zeros((), device=self.trainable[0].device)
        self.static_loss = torch.zeros((), device=self.trainable[0].device)

    def __call__(self, chunk: Chunk, scale: float) -> torch.Tensor:
        """The chunk's summed loss (a detached device tensor; reading it waits for the GPU)."""
        device = self.static_scale.device
        if self.graphed and self.graph is None:
            self._capture([t.to(device) for t in chunk.tensors()])
        if self.graph is None:
            return self._accumulate([t.to(device) for t in chunk.tensors()], torch.tensor(scale, device=device))
        for static, value in zip(self.static, chunk.tensors(), strict=True):
            static.copy_(value, non_blocking=True)
        self.static_scale.fill_(scale)
        self.graph.replay()
        return self.static_loss.clone()

    def _accumulate(self, chunk: Sequence[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        labelled_only = self.graph is None and not self.graphed
        loss = loss_sum(self.model, chunk, labelled_only, self.autocast)
        for p, grad in zip(self.trainable, torch.autograd.grad(loss * scale, self.trainable), strict=True):
            p.grad.add_(grad)
        return loss.detach()

    def _capture(self, chunk: list[torch.Tensor]) -> None:
        self.static = tuple(chunk)
        self.static_scale.fill_(0.0)  # the warm-up passes add nothing to the gradient
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_PASSES):
                    self._accumulate(self.static, self.static_scale)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_loss = self._accumulate(self.static, self.static_scale)
            self.graph = graph
        except RuntimeError as error:  # e.g. an op that synchronises with the host
            log.warning("training step not captured as a CUDA graph, running eagerly: %s", error)
            self.graphed = False
        torch.cuda.synchronize()
