"""What grouped instruction prompts do to the instructions, on the real embedded model (CPU is enough).

Instruction prompts come in groups that share their first shots (core/prompts.py), so the engine
prefills a shared block once per group. That changes what the model conditions on, so this script
generates instructions from both designs with the same model, sampling and seeds, and compares what
the pipeline cares about: how many survive its filters (core/pairs.py: clean, not run-on, no
delimiter, not a near-duplicate of an exemplar or of each other) and how diverse the survivors are.

    .venv/bin/python bench/instruction_prompts.py --prompts 256 --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1_assets.core import dedup, pairs, prompts  # noqa: E402
from stage1_assets.core.config import InstructionSampling  # noqa: E402
from stage1_assets.core.generation import Generator  # noqa: E402
from stage1_assets.core.model_loader import load_model  # noqa: E402

DESIGNS = {
    "own shots (group 1, 0 shared)": (1, 0),
    f"grouped ({prompts.INSTRUCTION_GROUP} prompts share {prompts.INSTRUCTION_SHARED_SHOTS} shots)": (
        prompts.INSTRUCTION_GROUP,
        prompts.INSTRUCTION_SHARED_SHOTS,
    ),
}


def words(text: str) -> list[str]:
    return dedup.normalize(text).split()


def distinct(texts: list[str], n: int) -> float:
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def opening_entropy_bits(texts: list[str]) -> float:
    counts = Counter(" ".join(words(t)[:2]) for t in texts)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def nearest_jaccard(texts: list[str], others: list[str] | None = None) -> float:
    """Mean over `texts` of the highest word-set Jaccard similarity to another text (of `others`, if given)."""
    sets = [dedup.word_set(t) for t in texts]
    targets = [dedup.word_set(t) for t in others] if others is not None else sets
    best = []
    for i, a in enumerate(sets):
        scores = [dedup.jaccard(a, b) for j, b in enumerate(targets) if others is not None or i != j]
        best.append(max(scores, default=0.0))
    return statistics.fmean(best)


def within_vs_across_group(texts: list[str], groups: list[int]) -> dict[str, float]:
    """Mean pairwise Jaccard of survivors from the same prompt group vs from different groups."""
    sets = [dedup.word_set(t) for t in texts]
    same, other = [], []
    for i, j in itertools.combinations(range(len(sets)), 2):
        (same if groups[i] == groups[j] else other).append(dedup.jaccard(sets[i], sets[j]))
    return {"same_group": round(statistics.fmean(same), 4) if same else None,
            "different_groups": round(statistics.fmean(other), 4) if other else None}  # fmt: skip


def one_round(generator: Generator, design: tuple[int, int], count: int, seed: int, batch: int) -> dict:
    """One round of core.pairs.generate_instructions with the given prompt design, and its survivors."""
    group_size, shared = design
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    texts = prompts.instruction_prompts(pool, random.Random(seed), count, group_size, shared)
    started = time.perf_counter()
    completions, stats = generator.generate(texts, InstructionSampling(), batch, seed=seed)
    seconds = time.perf_counter() - started
    removed: Counter[str] = Counter()
    candidates, groups = [], []
    for index, completion in enumerate(completions):
        text = prompts.clean_instruction(completion.text)
        problem = pairs.instruction_problem(text, completion.finish_reason)
        if problem:
            removed[problem] += 1
        else:
            candidates.append(text)
            groups.append(index // group_size)
    blocked = [e.instruction for e in pool]
    survivors, dropped = dedup.deduplicate(blocked + candidates)
    for index, (duplicate_of, how) in dropped.items():
        if index >= len(blocked):
            of = "an exemplar" if duplicate_of < len(blocked) else "another instruction"
            removed[f"{how.split(':')[0]} duplicate of {of}"] += 1
    new = [i - len(blocked) for i in survivors if i >= len(blocked)]
    kept, kept_groups = [candidates[i] for i in new], [groups[i] for i in new]
    prompt_tokens = sum(len(ids) for ids in generator.tokenizer(texts)["input_ids"])
    return {"prompts": count, "seed": seed, "seconds": round(seconds, 1), "prompt_tokens": prompt_tokens,
            "generated_tokens": stats.generated_tokens, "kept": kept, "kept_groups": kept_groups,
            "removed": dict(removed)}  # fmt: skip


def summary(rounds: list[dict], pool: list[str], sample: int) -> dict:
    kept = [r["kept"][:sample] for r in rounds]
    per_seed = {
        "survival_rate": [round(len(r["kept"]) / r["prompts"], 3) for r in rounds],
        "distinct_1": [round(distinct(k, 1), 3) for k in kept],
        "distinct_2": [round(distinct(k, 2), 3) for k in kept],
        "opening_two_words_entropy_bits": [round(opening_entropy_bits(k), 2) for k in kept],
        "nearest_neighbour_jaccard": [round(nearest_jaccard(k), 3) for k in kept],
        "nearest_exemplar_jaccard": [round(nearest_jaccard(k, pool), 3) for k in kept],
    }
    return {
        **per_seed,
        "pairwise_jaccard_by_group": [
            within_vs_across_group(r["kept"][:sample], r["kept_groups"][:sample]) for r in rounds
        ],  # fmt: skip
        "removed": [r["removed"] for r in rounds],
        "prompt_tokens": [r["prompt_tokens"] for r in rounds],
        "cpu_seconds": [r["seconds"] for r in rounds],
        "examples": rounds[0]["kept"][:12],
    }


PER_SEED = ("survival_rate", "distinct_1", "distinct_2", "opening_two_words_entropy_bits",
            "nearest_neighbour_jaccard", "nearest_exemplar_jaccard")  # fmt: skip


def compare(own: dict, grouped: dict) -> dict:
    """Per metric: each design's mean over seeds and the grouped-minus-own difference with a Welch 95% interval."""
    out = {}
    for metric in PER_SEED:
        a, b = grouped[metric], own[metric]
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        out[metric] = {"own": round(statistics.fmean(b), 4), "grouped": round(statistics.fmean(a), 4),
                       "difference": round(statistics.fmean(a) - statistics.fmean(b), 4),
                       "difference_95ci": [round(float(interval.low), 4), round(float(interval.high), 4)]}  # fmt: skip
    pairs = grouped["pairwise_jaccard_by_group"]
    out["same_over_different_group_jaccard"] = round(
        statistics.fmean(p["same_group"] for p in pairs) / statistics.fmean(p["different_groups"] for p in pairs), 3
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256, help="prompts per design and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sample", type=int, default=200, help="survivors per seed the diversity figures use")
    parser.add_argument("--out", type=Path, default=Path("bench/results/instruction_prompts_cpu.json"))
    args = parser.parse_args()
    lm = load_model(device="cpu")
    generator = Generator(lm.model, lm.tokenizer)
    pool = [e.instruction for e in prompts.load_pool(prompts.TRAIN_POOL)]
    result = {"model": lm.info.name, "device": "cpu", "sampling": InstructionSampling().model_dump(),
              "command": "python bench/instruction_prompts.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "designs": {}}  # fmt: skip
    for name, design in DESIGNS.items():
        rounds = [one_round(generator, design, args.prompts, seed, args.batch) for seed in args.seeds]
        result["designs"][name] = summary(rounds, pool, args.sample)
        print(json.dumps({name: {k: v for k, v in result["designs"][name].items() if k != "examples"}}), flush=True)
    result["grouped_vs_own"] = compare(*result["designs"].values())
    print(json.dumps({"grouped_vs_own": result["grouped_vs_own"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
