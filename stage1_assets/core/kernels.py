"""Which GPU kernels the model runs with: Liger's fused Gemma 3 kernels, and the attention backend.

Both matter only on CUDA; on CPU the model runs as transformers builds it.
  * `fuse_with_liger`: Liger's fused RMSNorm and GeGLU replace Gemma's many small fp32 norm and
    activation kernels, which bound a captured decode or training step (BENCHMARKS.md).
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
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

NO_FUSED_KERNELS = "none"


def fuse_with_liger(model: Any) -> str:
    """Liger's fused RMSNorm and GeGLU kernels on this Gemma 3 model instance. Returns what was fused."""
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
        apply_liger_kernel_to_gemma3_text(rope=False, fused_linear_cross_entropy=False, model=model)
    finally:  # it also swaps the module's classes, which would reach every Gemma 3 loaded later in the process
        modeling_gemma3.Gemma3RMSNorm, modeling_gemma3.Gemma3MLP = classes
    return "Liger RMSNorm, GeGLU"


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
