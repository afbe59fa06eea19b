"""Generated tokens/s of the engine at batch 1 vs a larger batch, same prompts, same run.

Uses the embedded model (CPU here; on a GPU box pass --device cuda). Prompts are the real response
prompts with mixed lengths and the real stop sequences.
Usage: .venv/bin/python bench/bench_generation.py [--rows 16] [--batch 16] [--device cpu]
"""

import argparse
import json
import os
import random
import time
from pathlib import Path

from stage1_assets.core import model_loader, prompts
from stage1_assets.core.config import ResponseSampling
from stage1_assets.core.generation import Generator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    lm = model_loader.load_model(device=args.device)
    shots = prompts.load_pool(prompts.QA_SHOTS)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    rng = random.Random(0)
    instructions = [rng.choice(pool).instruction for _ in range(args.rows)]
    prompt_texts = [prompts.response_prompt(i, shots) for i in instructions]
    gen = Generator(lm.model, lm.tokenizer)
    params = ResponseSampling()
    result = {"device": lm.info.device, "model": lm.info.name, "rows": args.rows}
    for label, batch in (("batch_1", 1), (f"batch_{args.batch}", args.batch)):
        start = time.perf_counter()
        _, stats = gen.generate(prompt_texts, params, batch_size=batch, seed=0)
        seconds = time.perf_counter() - start
        result[label] = {"seconds": round(seconds, 2), "generated_tokens": stats.generated_tokens,
                         "tokens_per_s": round(stats.generated_tokens / seconds, 2),
                         "rows_per_s": round(args.rows / seconds, 3)}  # fmt: skip
    result["speedup"] = round(result[f"batch_{args.batch}"]["tokens_per_s"] / result["batch_1"]["tokens_per_s"], 2)
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_generation.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
