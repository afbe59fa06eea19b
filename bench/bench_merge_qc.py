"""Merge + dedup + decontamination + QC of 15,000 synthetic pairs: prints seconds as JSON.

Usage: .venv/bin/python bench/bench_merge_qc.py [--rows 15000]
"""

import argparse
import json
import os
import random
import time
from pathlib import Path

from stage1_assets.core.config import QCThresholds
from stage1_assets.core.merge import merge_shards
from stage1_assets.core.qc import qc_by_group, qc_summary


def vocabulary(size: int = 5_000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(size)]


# Zipf-like word frequencies, as in real text: a few very common words, a long tail of rare ones.
WORDS = vocabulary()
WEIGHTS = [1 / (rank + 1) for rank in range(len(WORDS))]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        instruction = " ".join(rng.choices(WORDS, WEIGHTS, k=rng.randint(6, 14))).capitalize() + "?"
        response = " ".join(rng.choices(WORDS, WEIGHTS, k=rng.randint(5, 60))) + "."
        if i % 500 == 0:
            response += "\nInstruction: another"
        rows.append({"id": f"shard-{i % 10:03d}-{i:06d}", "shard": f"shard-{i % 10:03d}", "instruction": instruction,
                     "response": response, "finish_reason": "length" if i % 40 == 0 else "stop",
                     "response_tokens": len(response.split()), "accepted": rng.random() < 0.7,
                     "critic_score": rng.gauss(1.2, 0.6)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=15_000)
    args = parser.parse_args()
    rows = synthetic_rows(args.rows)
    tests = [r["instruction"] for r in synthetic_rows(200, seed=1)]
    for k in range(0, args.rows, 1_000):  # planted: exact copies and contaminated rows
        rows[k + 1]["instruction"] = rows[k]["instruction"]
        rows[k + 2]["response"] += " " + tests[k % 200]
    timings = {}
    start = time.perf_counter()
    merged = merge_shards(rows, tests)
    timings["merge_dedup_decontaminate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    qc_summary(rows, QCThresholds())
    timings["qc_overall_s"] = time.perf_counter() - start
    start = time.perf_counter()
    qc_by_group(rows, QCThresholds(), "shard")
    timings["qc_per_shard_s"] = time.perf_counter() - start
    result = {"rows": args.rows, "kept": len(merged.kept), "removed_by_step": merged.removed_by_step,
              **{k: round(v, 4) for k, v in timings.items()}}  # fmt: skip
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_merge_qc.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
