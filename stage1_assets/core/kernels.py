"""Which GPU kernels the model runs with: Liger's fused Gemma 3 kernels, and the attention backend.

Both matter only on CUDA; on CPU the model runs as transformers builds it.
  * `fuse_with_liger`: Liger's fused RMSNorm and GeGLU replace Gemma's many small fp32 norm and
    activation kernels, which bound a captured decode or training step (BENCHMARKS.md). For
    inference the norms run torch's own fused `rms_norm` instead: Liger's are five Triton kernel
    variants that a process compiles when Triton's cache is empty, 1-3 s of a 1,500-pair 1B shard;
    the critic's long forwards are up to ~0.5 s slower without them (BENCHMARKS.md).
  * `vocabulary_logprobs`: log p(target) over the full vocabulary. On a model fused with Liger it is
    Liger's fused linear cross-entropy: the bf16 logits are read once by a kernel that keeps the
    log-sum-exp in fp32, instead of being copied to fp32 and reduced in several passes (the critic's
    evidence for 1,500 pairs: 2.13 -> 1.78 s on the 1B shape, the same values to 2e-6 nats;
    BENCHMARKS.md).
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
# set on a model instance by `fuse_with_liger`: what was fused into it
FUSED_ATTRIBUTE = "stage1_fused_kernels"
# positions projected onto the vocabulary at once without Liger: 1024 x 262k fp32 logits = 1 GiB
LOGIT_CHUNK = 1024


def fuse_with_liger(model: Any, for_inference: bool = False) -> str:
    """Liger's fused RMSNorm and GeGLU kernels on this Gemma 3 model instance. Returns what was fused.
    `for_inference`: the norms run torch's fused `rms_norm` (no compilation) instead of Liger's."""
    if model.config.model_type != "gemma3_text":
        return NO_FUSED_KERNELS
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_gemma3_text
    except ImportError:
        log.warning("liger-kernel is not installed (the `cuda` extra): running without its fused kernels")
        return NO_FUSED_KERNELS
    from transformers.models.gemma3 import modeling_gemma3

    classes = modeling_gemma3.Gemma3RMSNorm, modeling_gemma3.Gemma3MLP
    try:
        apply_liger_kernel_to_gemma3_text(rope=False, fused_linear_cross_entropy=False, rms_norm=not for_inference,
                                          model=model)  # fmt: skip
    finally:  # it also swaps the module's classes, which would reach every Gemma 3 loaded later in the process
        modeling_gemma3.Gemma3RMSNorm, modeling_gemma3.Gemma3MLP = classes
    if for_inference:
        for module in model.modules():
            if isinstance(module, modeling_gemma3.Gemma3RMSNorm):
                module.forward = types.MethodType(fp32_rms_norm, module)
    fused = "Liger GeGLU, torch RMSNorm" if for_inference else "Liger RMSNorm, GeGLU"
    setattr(model, FUSED_ATTRIBUTE, fused)
    return fused


def fp32_rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """Gemma 3's RMSNorm (float32, scaled by 1 + weight, cast back) as one call of torch's fused `rms_norm`."""
    return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + norm.weight.float(), norm.eps).type_as(x)


def is_fused(model: Any) -> bool:
    """Whether `fuse_with_liger` fused this model instance (callers fuse only models on CUDA)."""
    return getattr(model, FUSED_ATTRIBUTE, NO_FUSED_KERNELS) != NO_FUSED_KERNELS


def softcapped(logits: torch.Tensor, config: Any) -> torch.Tensor:
    """Final-logit soft capping (Gemma 2/3): cap * tanh(logits / cap), when the config sets a cap."""
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def vocabulary_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) under `model`'s output head (float32), for [positions, hidden] states."""
    head = model.get_output_embeddings()
    if is_fused(model):
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        cap = getattr(model.config, "final_logit_softcapping", None)
        bias = getattr(head, "bias", None)
        return -liger_fused_linear_cross_entropy(hidden, head.weight, targets, bias=bias, reduction="none",
                                                 softcap=cap)  # fmt: skip
    return torch.cat([
        _chunk_logprobs(softcapped(head(hidden[s : s + LOGIT_CHUNK]), model.config).float(),
                        targets[s : s + LOGIT_CHUNK])
        for s in range(0, len(targets), LOGIT_CHUNK)
    ])  # fmt: skip


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


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
