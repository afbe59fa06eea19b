"""Critic speed: the padded path against the packed, compiled one, side by side in one run.

  * padded — rows padded to a batch, the shots' KV cache copied per row, SDPA with a padding mask
  * packed — rows packed end to end against one shared prefix cache, flex attention with a block
             mask, each decoder layer and the vocabulary log-softmax compiled (on CUDA)
Each variant is timed after a first call that pays its compilation; the first call's time is
reported too (a fresh process with a warm compile cache pays less: run the script twice). Scores of
both variants are compared: pass `--dtype float32` to see the paths agree to rounding.
Usage (GPU box): python3 bench/bench_critic_variants.py --tokenizer-dir /tmp/tok --arch 1b
"""

import argparse
import json
import os
from pathlib import Path

import bench_gpu
import torch

from stage1_assets.core.config import CriticParams
from stage1_assets.core.critic import Critic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    parser.add_argument("--pairs", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="padded,packed")
    parser.add_argument("--profile", action="store_true", help="profile one more call of each variant into $OUT")
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = bench_gpu.build_model(args.tokenizer_dir, args.arch, args.device, dtype)
    data = bench_gpu.critic_pairs(args.pairs)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    result: dict = {"arch": f"gemma3-{args.arch} (random weights)", "gpu": gpu, "dtype": str(model.dtype),
                    "pairs": args.pairs, "batch_size": args.batch, "variants": {}}  # fmt: skip
    reference = None
    for name in args.variants.split(","):
        critic = Critic(model, tokenizer, CriticParams(batch_size=args.batch), packed=name == "packed")

        def score(critic=critic):
            return critic.score(data)

        _, first_s = bench_gpu.timed(args.device, score)
        runs = []
        for _ in range(args.repeats):
            scores, seconds = bench_gpu.timed(args.device, score)
            runs.append(seconds)
        values = torch.tensor([s.score for s in scores])
        reference = values if reference is None else reference
        runs.sort()
        result["variants"][name] = {
            "first_call_seconds": round(first_s, 2), "seconds": [round(s, 3) for s in runs],
            "pairs_per_s_median": round(args.pairs / runs[len(runs) // 2], 1),
            "pairs_per_s_best": round(args.pairs / runs[0], 1),
            "max_abs_score_diff_vs_first_variant": float((values - reference).abs().max()),
            "mean_abs_score": float(values.abs().mean()),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1) if args.device.startswith("cuda") else None,
        }  # fmt: skip
        print(name, json.dumps(result["variants"][name]), flush=True)
        if args.profile:
            bench_gpu.profiled(score, out_dir / f"profile_critic_{name}_{args.arch}.txt")
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        (out_dir / f"bench_critic_variants_{args.arch}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
