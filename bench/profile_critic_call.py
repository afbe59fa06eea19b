"""Host-side profile (cProfile) of one packed critic call, after a warm-up call that compiles.

Usage (GPU box): python3 bench/profile_critic_call.py --tokenizer-dir /tmp/tok --pairs 1500
"""

import argparse
import cProfile
import os
import pstats
from pathlib import Path

import bench_critic_variants
import bench_gpu

from stage1_assets.core import prompts
from stage1_assets.core.critic import Critic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    model, tokenizer = bench_gpu.build_model(args.tokenizer_dir, args.arch, args.device)
    critic = Critic(model, tokenizer, prompts.load_pool(prompts.QA_SHOTS), packed=True)
    data = bench_critic_variants.bench_pairs(args.pairs)
    critic.score(data, 1.0, args.batch)
    path = Path(os.environ.get("OUT", ".")) / "profile_critic_call.prof"
    cProfile.runctx("bench_gpu.timed(args.device, lambda: critic.score(data, 1.0, args.batch))", globals(), locals(),
                    str(path))  # fmt: skip
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
