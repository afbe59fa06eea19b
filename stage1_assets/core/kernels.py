"""Which GPU kernels the model runs with: fused norms, Liger's kernels for training, the attention backend.

All of it matters only on CUDA; on CPU the model runs as transformers builds it.
  * `fuse_for_inference`: each of Gemma's float32 RMSNorms (seven small kernels) becomes one call of
    torch's fused `rms_norm`; a captured decode step is bound by its many small kernels
    (BENCHMARKS.md). Inference runs no Triton kernel. Liger's Triton norms, GeGLU and cross-entropy
    make a warm 1,500-pair 1B shard ~0.8 s faster, but the first process of a machine or run pod
    compiles them (that shard: 9.8-11.0 s on an empty Triton cache against 7.1-8.2 s without them),
    and importing Liger costs every process ~6 s more (BENCHMARKS.md).
  * `fuse_with_liger`: training's Liger RMSNorm and GeGLU, whose fused backward passes pay for their
    compilation over a run of thousands of steps.
  * `vocabulary_logprobs`: log p(target) over the full vocabulary, a chunk of positions at a time. On
    CUDA the output head's product is written in float32 straight from its accumulator, and one
    log-softmax pass reads it: 2.0 ms per 1,024 positions of the 262k vocabulary against 3.4 for bf16
    logits copied to float32 and a log-sum-exp, and 1.3 for Liger's fused kernel, whose bf16 logits
    are up to 1e-2 nats off a float64 reference where these are 6e-6 (H200, bench/bench_kernels.py).
  * `inference_attention`: generation and scoring run PyTorch's scaled-dot-product attention
    without its cuDNN backend. cuDNN builds an execution plan for every new input shape (a few
    milliseconds of host time per attention call), and a shard's prefills, graph captures and
    critic batches are almost all new shapes: a 1,500-pair shard, run first in its process, took
    20 s with it and 10 s without (1B shape on an H200; BENCHMARKS.md). Flash and memory-efficient
    attention compute the same function.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

NO_FUSED_KERNELS = "none"
INFERENCE_KERNELS = "torch RMSNorm"
TRAINING_KERNELS = "Liger RMSNorm, GeGLU"
# set on a model instance by the fusing functions: what was fused into it
FUSED_ATTRIBUTE = "stage1_fused_kernels"
# positions projected onto the vocabulary at once: 1024 x 262k float32 logits = 1 GiB, twice (log-softmax)
LOGIT_CHUNK = 1024


def fuse_for_inference(model: Any) -> str:
    """Torch's fused `rms_norm` for every Gemma 3 norm of this model instance. Returns what was fused."""
    if model.config.model_type != "gemma3_text":
        return NO_FUSED_KERNELS
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    for module in model.modules():
        if isinstance(module, Gemma3RMSNorm):
            module.forward = types.MethodType(fp32_rms_norm, module)
    setattr(model, FUSED_ATTRIBUTE, INFERENCE_KERNELS)
    return INFERENCE_KERNELS


def fuse_with_liger(model: Any) -> str:
    """Liger's fused RMSNorm and GeGLU kernels (with their backward) on this Gemma 3 model instance, for
    training. Returns what was fused."""
    if model.config.model_type != "gemma3_text":
        return NO_FUSED_KERNELS
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_gemma3_text
    except ImportError:
        log.warning("liger-kernel is not installed (the `cuda` extra): training without its fused kernels")
        return NO_FUSED_KERNELS
    from transformers.models.gemma3 import modeling_gemma3

    classes = modeling_gemma3.Gemma3RMSNorm, modeling_gemma3.Gemma3MLP
    try:
        apply_liger_kernel_to_gemma3_text(rope=False, fused_linear_cross_entropy=False, model=model)
    finally:  # it also swaps the module's classes, which would reach every Gemma 3 loaded later in the process
        modeling_gemma3.Gemma3RMSNorm, modeling_gemma3.Gemma3MLP = classes
    setattr(model, FUSED_ATTRIBUTE, TRAINING_KERNELS)
    return TRAINING_KERNELS


def fp32_rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """Gemma 3's RMSNorm (float32, scaled by 1 + weight, cast back) as one call of torch's fused `rms_norm`."""
    return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + norm.weight.float(), norm.eps).type_as(x)


def softcapped(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """Final-logit soft capping (Gemma 2/3): cap * tanh(logits / cap), when the config sets a cap."""
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def vocabulary_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) under `model`'s output head (float32), for [positions, hidden] states."""
    head = model.get_output_embeddings()
    return torch.cat([
        _chunk_logprobs(softcapped(float_logits(head, hidden[s : s + LOGIT_CHUNK]), model.config),
                        targets[s : s + LOGIT_CHUNK])
        for s in range(0, len(targets), LOGIT_CHUNK)
    ])  # fmt: skip


def float_logits(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)` in float32; on CUDA, a half-precision product is written from its float32 accumulator."""
    if not hidden.is_cuda or hidden.dtype == torch.float32:
        return head(hidden).float()
    logits = torch.mm(hidden, head.weight.T, out_dtype=torch.float32)
    return logits if head.bias is None else logits.add_(head.bias)


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]


def inference_sdpa_backends() -> list[Any]:
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def inference_attention(device: torch.device) -> Iterator[None]:
    """Generation and scoring attention on `device`: on CUDA, SDPA without cuDNN (see the module's docstring)."""
    if device.type != "cuda":
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(inference_sdpa_backends()):
        yield
