"""The GPU kernel choices of core/kernels.py, checked where they can be on a CPU host."""

import torch

from stage1_assets.core.kernels import NO_FUSED_KERNELS, inference_attention


def test_inference_attention_leaves_out_cudnn_on_cuda_and_restores_the_backends() -> None:
    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled())  # fmt: skip
    with inference_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    after = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled())  # fmt: skip
    assert after == before


def test_inference_attention_changes_nothing_on_cpu() -> None:
    torch.backends.cuda.enable_cudnn_sdp(True)
    with inference_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_a_model_loaded_on_cpu_runs_unfused(tiny_model) -> None:
    assert tiny_model.info.fused_kernels == NO_FUSED_KERNELS
    assert tiny_model.info.as_dict()["fused_kernels"] == NO_FUSED_KERNELS  # recorded with the model's provenance
