"""The inference kernels of core/kernels.py against their alternatives, on a CUDA device, side by side.

  * log p(target) over the 262k vocabulary for chunks of 1,024 positions (1B hidden size): the
    shipped `kernels.vocabulary_logprobs` (float32 product, one log-softmax), bf16 logits copied to
    float32 with a log-sum-exp (the path before it), and Liger's fused linear cross-entropy (Triton);
    each with its largest error against a float64 reference.
  * Gemma's RMSNorm on a critic-sized batch (38,000 tokens; hidden width and per-head width): HF's
    own, the shipped `kernels.fp32_rms_norm`, torch's fused norm with a bf16 weight (fast, but not
    Gemma's function: the fraction of outputs that differ is printed) and Liger's; GeGLU: torch's
    two kernels against Liger's one.

Usage on the GPU host: bash scripts/gpu_bench.sh run .bench-carry bench/bench_kernels.py
"""

import argparse
import json
import types

import torch
import torch.nn.functional as F
from bench_gpu import cuda_milliseconds

from stage1_assets.core import kernels

VOCABULARY, HIDDEN, CHUNK = 262_144, 1152, 1024


def logprob_paths(chunks: int) -> dict:
    head = torch.nn.Linear(HIDDEN, VOCABULARY, bias=False, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(head.weight, std=0.03)
    model = types.SimpleNamespace(get_output_embeddings=lambda: head, config=types.SimpleNamespace())
    hidden = torch.randn(chunks * CHUNK, HIDDEN, device="cuda").bfloat16()
    targets = torch.randint(0, VOCABULARY, (chunks * CHUNK,), device="cuda")

    def bf16_logsumexp(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            (x := head(h[s : s + CHUNK]).float()).gather(1, t[s : s + CHUNK, None])[:, 0] - torch.logsumexp(x, -1)
            for s in range(0, len(t), CHUNK)
        ])  # fmt: skip

    paths = {"shipped": lambda h, t: kernels.vocabulary_logprobs(model, h, t), "bf16_logsumexp": bf16_logsumexp}
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        paths["liger"] = lambda h, t: -liger_fused_linear_cross_entropy(h, head.weight, t, reduction="none")
    except ImportError:
        pass
    exact = (hidden[:4096].double() @ head.weight.double().T).log_softmax(-1).gather(1, targets[:4096, None])[:, 0]
    report = {}
    for name, path in paths.items():
        seconds = cuda_milliseconds(lambda path=path: path(hidden, targets), repeats=3) / chunks
        error = (path(hidden[:4096], targets[:4096]).double() - exact).abs().max().item()
        report[name] = {"ms_per_1024_positions": round(seconds, 3), "max_error_vs_float64_nats": float(f"{error:.2g}")}
    return report


def norm_paths() -> dict:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    report = {}
    for shape in ((38_000, HIDDEN), (38_000, 4, 256)):
        width = shape[-1]
        norm = Gemma3RMSNorm(width, eps=1e-6).cuda()
        norm.weight.data = torch.randn(width, device="cuda") * 0.1
        x = (torch.randn(*shape, device="cuda") * 3).bfloat16()
        scale = (1.0 + norm.weight.float()).bfloat16()
        paths = {"hf_gemma": norm, "shipped": lambda x, norm=norm: kernels.fp32_rms_norm(norm, x),
                 "bf16_weight": lambda x, w=scale, width=width: F.rms_norm(x, (width,), w, 1e-6)}  # fmt: skip
        try:
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            paths["liger"] = lambda x, norm=norm: LigerRMSNormFunction.apply(x, norm.weight, 1e-6, 1.0, "gemma")
        except ImportError:
            pass
        reference = norm(x)
        report[f"rms_norm_{'x'.join(map(str, shape))}"] = {
            name: {"ms": cuda_milliseconds(lambda path=path, x=x: path(x)),
                   "fraction_differing_from_hf": float(f"{(path(x) != reference).float().mean().item():.2g}")}
            for name, path in paths.items()
        }  # fmt: skip
    gate, up = (torch.randn(38_000, 6912, device="cuda").bfloat16() for _ in range(2))
    geglu = {"torch": cuda_milliseconds(lambda: F.gelu(gate, approximate="tanh") * up)}
    try:
        from liger_kernel.ops.geglu import LigerGELUMulFunction

        geglu["liger"] = cuda_milliseconds(lambda: LigerGELUMulFunction.apply(gate, up))
    except ImportError:
        pass
    report["geglu_ms_38000x6912"] = geglu
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", help="ignored (scripts/gpu_bench.sh passes it to every script)")
    parser.add_argument("--chunks", type=int, default=40, help="chunks of 1,024 positions timed per path")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    torch.manual_seed(0)
    with torch.inference_mode():
        result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "vocabulary_logprobs": logprob_paths(args.chunks), **norm_paths()}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
