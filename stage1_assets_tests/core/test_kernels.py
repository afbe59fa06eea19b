"""The GPU kernel choices of core/kernels.py, checked where they can be on a CPU host."""

import copy

import torch

from stage1_assets.core import kernels
from stage1_assets.core.kernels import (
    FUSED_ATTRIBUTE,
    INFERENCE_KERNELS,
    NO_FUSED_KERNELS,
    float_logits,
    fp32_rms_norm,
    fuse_for_inference,
    inference_attention,
    vocabulary_logprobs,
)


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


def test_a_model_loaded_on_cpu_keeps_gemmas_own_norms(tiny_model) -> None:
    assert not hasattr(tiny_model.model, FUSED_ATTRIBUTE)
    norms = [m for m in tiny_model.model.modules() if type(m).__name__ == "Gemma3RMSNorm"]
    assert norms and all("forward" not in vars(m) for m in norms)  # no instance-bound replacement


def test_inference_fusion_binds_every_norm_and_leaves_the_logits(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        assert fuse_for_inference(model) == INFERENCE_KERNELS == getattr(model, FUSED_ATTRIBUTE)
        after = model(input_ids=ids).logits
    norms = [m for m in model.modules() if type(m).__name__ == "Gemma3RMSNorm"]
    # per layer: input, post-attention, pre- and post-feed-forward, query and key norms; and the final norm
    assert len(norms) == 6 * model.config.num_hidden_layers + 1
    assert all(vars(m)["forward"].__func__ is fp32_rms_norm for m in norms)
    assert torch.allclose(after, before, atol=1e-4)


def test_float_logits_are_the_heads_output_in_float32(tiny_model) -> None:
    head = tiny_model.model.get_output_embeddings()
    hidden = torch.randn(4, head.in_features, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        logits = float_logits(head, hidden)
        assert logits.dtype == torch.float32 and torch.equal(logits, head(hidden))
        half = float_logits(copy.deepcopy(head).bfloat16(), hidden.bfloat16())  # on CPU: the bf16 product, widened
    assert half.dtype == torch.float32 and not torch.equal(half, logits)
    assert torch.allclose(half, logits, atol=0.1)


def test_vocabulary_logprobs_match_a_log_softmax_across_chunk_boundaries(tiny_model, monkeypatch) -> None:
    model = tiny_model.model
    monkeypatch.setattr(kernels, "LOGIT_CHUNK", 3)  # 7 positions: chunks of 3, 3 and 1
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, model.config.hidden_size, generator=gen)
    targets = torch.randint(0, model.config.vocab_size, (7,), generator=gen)
    with torch.inference_mode():
        expected = torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)[torch.arange(7), targets]
        got = vocabulary_logprobs(model, hidden, targets)
        shuffled = vocabulary_logprobs(model, hidden, targets.roll(1))
    assert got.dtype == torch.float32 and got.shape == (7,)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(shuffled, expected, atol=1e-3)  # each position is scored against its own target


def test_fp32_rms_norm_computes_gemmas_norm_in_its_dtype() -> None:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    gen = torch.Generator().manual_seed(0)
    norm = Gemma3RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=gen) * 0.1)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(3, 5, 48, generator=gen) * 4).to(dtype)
        got = fp32_rms_norm(norm, x)
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.allclose(got.float(), norm(x).float(), atol=1e-5, rtol=1e-5 if dtype == torch.float32 else 1e-2)
    unscaled = Gemma3RMSNorm(48, eps=1e-6)  # weight 0: a scale of exactly 1
    assert not torch.allclose(fp32_rms_norm(unscaled, x).float(), norm(x).float(), atol=1e-2)  # the weight counts
