"""Critic signals side by side on the labelled control set (data/exemplars/critic_controls.jsonl).

Each control instruction has a good response and six bad variants (wrong, restated, content-free,
runaway, drift, truncated). For every candidate critic the table gives, per bad kind, how often
the good response is ranked above the bad one and how often the bad one is accepted; the overall
pairwise accuracy; the good responses' acceptance; and the scoring cost in seconds per 1,000 pairs
(on this machine). A candidate's acceptance threshold is chosen on the development half (the value
that best separates good from bad there) and reused unchanged on the held-out half.

Usage (CPU is fine, a few minutes):
    .venv/bin/python bench/bench_critic_signals.py                 # development half
    .venv/bin/python bench/bench_critic_signals.py --split heldout # held-out half, dev thresholds
    .venv/bin/python bench/bench_critic_signals.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stage1_assets.core import critic_controls, model_loader, prompts
from stage1_assets.core.config import CriticParams
from stage1_assets.core.critic import BAD_HEADER, RESPONSE_END, Critic
from stage1_assets.core.response_rules import informative_words, novelty, rule_reason
from stage1_assets.core.scoring import LogprobScorer

BT_HEADER = "Below are answers from a helpful assistant, each followed by the request it answered.\n\n"
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


@dataclass
class Pairs:
    instructions: list[str]
    responses: list[str]
    kinds: list[str]
    items: list[int]  # control item of each pair


OFF_TOPIC = "off_topic"  # another request's good answer: relevance, which the shuffled-response check tests


def control_pairs(split: str) -> Pairs:
    items = [r for r in critic_controls.load() if r.split == split]
    found = critic_controls.control_pairs(items)
    found += [{"item": item.id, "kind": OFF_TOPIC, "instruction": item.instruction,
               "response": items[(k + 1) % len(items)].good} for k, item in enumerate(items)]  # fmt: skip
    return Pairs(
        [p["instruction"] for p in found],
        [p["response"] for p in found],
        [p["kind"] for p in found],
        [p["item"] for p in found],
    )


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def model_signals(lm: model_loader.LoadedModel, pairs: Pairs, samples: int) -> tuple[dict, dict]:
    """Raw per-pair signals (higher = better) and the seconds each group of them took."""
    tok = lm.tokenizer
    shots = prompts.load_pool(prompts.QA_SHOTS)
    bad_shots = prompts.load_pool(prompts.BAD_SHOTS)
    good = LogprobScorer(lm.model, tok, prompts.shots_document(shots))
    bad = LogprobScorer(
        lm.model,
        tok,
        BAD_HEADER
        + "".join(prompts.PAIR_BLOCK.format(instruction=s.instruction, response=s.response) for s in bad_shots),
    )
    back = LogprobScorer(
        lm.model, tok, BT_HEADER + "".join(f"Response: {s.response}\nInstruction: {s.instruction}\n\n" for s in shots)
    )
    end_ids = tok(RESPONSE_END, add_special_tokens=False)["input_ids"]
    responses = [tok(" " + r.strip(), add_special_tokens=False)["input_ids"] for r in pairs.responses]
    cues = [prompts.RESPONSE_CUE.format(instruction=i.strip()) for i in pairs.instructions]
    signals, seconds = {}, {}

    (cond, uncond), seconds["pmi"] = timed(
        lambda: (
            good.continuation_logprobs([(c, r + end_ids) for c, r in zip(cues, responses, strict=True)]),
            good.continuation_logprobs([(prompts.UNCONDITIONAL_CUE, r + end_ids) for r in responses]),
        )
    )
    n_end = len(end_ids)
    body = [(c[:-n_end], u[:-n_end]) for c, u in zip(cond, uncond, strict=True)]
    signals["pmi_mean"] = [float(np.mean(c - u)) for c, u in body]
    signals["pmi_sum"] = [float(np.sum(c - u)) for c, u in body]
    signals["cond_mean"] = [float(np.mean(c)) for c, _ in body]
    signals["end_logprob"] = [float(np.sum(c[-n_end:])) for c in cond]
    signals["pmi_sum_with_end"] = [float(np.sum(c - u)) for c, u in zip(cond, uncond, strict=True)]

    bad_cond, seconds["contrastive"] = timed(
        lambda: bad.continuation_logprobs([(c, r) for c, r in zip(cues, responses, strict=True)])
    )
    signals["contrastive_mean"] = [float(np.mean(c - b)) for (c, _), b in zip(body, bad_cond, strict=True)]

    def back_translation() -> list[float]:
        asked = [" " + i.strip() for i in pairs.instructions]
        given = back.continuation_logprobs(
            [(f"Response: {r.strip()}\nInstruction:", a) for r, a in zip(pairs.responses, asked, strict=True)]
        )
        alone = back.continuation_logprobs([("Response: …\nInstruction:", a) for a in asked])
        return [float(np.mean(g - a)) for g, a in zip(given, alone, strict=True)]

    signals["back_translation"], seconds["back_translation"] = timed(back_translation)

    def weakest_sentence() -> list[float]:
        rows, owner = [], []
        for k, (cue, response) in enumerate(zip(cues, pairs.responses, strict=True)):
            for sentence in SENTENCE.split(response.strip()):
                rows += [(cue, " " + sentence), (prompts.UNCONDITIONAL_CUE, " " + sentence)]
                owner.append(k)
        scores = good.continuation_logprobs(rows)
        out = [np.inf] * len(cues)
        for j, k in enumerate(owner):
            out[k] = min(out[k], float(np.mean(scores[2 * j] - scores[2 * j + 1])))
        return out

    signals["min_sentence_pmi"], seconds["sentences"] = timed(weakest_sentence)

    if samples:
        from stage1_assets.core.config import ResponseSampling
        from stage1_assets.core.generation import Generator

        def agreement() -> list[float]:
            unique = sorted(set(pairs.instructions))
            params = ResponseSampling(temperature=0.7, max_new_tokens=60)
            prompts_ = [prompts.response_prompt(i, shots) for i in unique for _ in range(samples)]
            done, _ = Generator(lm.model, tok).generate(prompts_, params, batch_size=32, seed=5)
            drawn = {
                i: [informative_words(done[k * samples + s].text) for s in range(samples)] for k, i in enumerate(unique)
            }

            def f1(a: set, b: set) -> float:
                common = len(a & b)
                return 2 * common / (len(a) + len(b)) if common else 0.0

            return [
                float(np.mean([f1(informative_words(r), d) for d in drawn[i]]))
                for i, r in zip(pairs.instructions, pairs.responses, strict=True)
            ]

        signals["sample_agreement"], seconds["samples"] = timed(agreement)
    return signals, seconds


def derived_signals(signals: dict, pairs: Pairs) -> dict:
    """Signals computed from the model's (no model work): the shipped formula's pieces and sums."""
    new = [novelty(i, r) for i, r in zip(pairs.instructions, pairs.responses, strict=True)]
    base = [
        e + m + 10 * c
        for e, m, c in zip(signals["end_logprob"], signals["pmi_mean"], signals["contrastive_mean"], strict=True)
    ]
    return {"zero": [0.0] * len(new), "novelty": new, "end_pmi_contrast": base,
            "answer": [b + 2 * n for b, n in zip(base, new, strict=True)]}  # fmt: skip


@dataclass
class Candidate:
    name: str
    signal: str
    rules: tuple[str, ...] | None  # None: no rules; () would mean all rules
    groups: tuple[str, ...]  # signal groups whose time it costs
    shipped: bool = False


RULES = ("runaway", "content_free", "restated", "arithmetic")
CANDIDATES = [
    Candidate("per-token PMI (before)", "pmi_mean", None, ("pmi",)),
    Candidate("summed PMI", "pmi_sum", None, ("pmi",)),
    Candidate("mean log p(response | instruction)", "cond_mean", None, ("pmi",)),
    Candidate("end-of-response log p", "end_logprob", None, ("pmi",)),
    Candidate("summed PMI incl. end of response", "pmi_sum_with_end", None, ("pmi",)),
    Candidate("contrastive (good vs bad shots)", "contrastive_mean", None, ("pmi", "contrastive")),
    Candidate("back-translation PMI", "back_translation", None, ("back_translation",)),
    Candidate("weakest sentence PMI", "min_sentence_pmi", None, ("sentences",)),
    Candidate("sample agreement (k samples)", "sample_agreement", None, ("samples",)),
    Candidate("rules only", "zero", RULES, ()),
    Candidate("rules + per-token PMI", "pmi_mean", RULES, ("pmi",)),
    Candidate("rules + summed PMI", "pmi_sum", RULES, ("pmi",)),
    Candidate("rules + summed PMI incl. end", "pmi_sum_with_end", RULES, ("pmi",)),
    Candidate("rules + contrastive", "contrastive_mean", RULES, ("pmi", "contrastive")),
    Candidate("rules + weakest sentence PMI", "min_sentence_pmi", RULES, ("sentences",)),
    Candidate("rules + end log p", "end_logprob", RULES, ("pmi",)),
    Candidate("novelty (new informative words)", "novelty", None, ()),
    Candidate("end + pmi + 10 contrast", "end_pmi_contrast", None, ("pmi", "contrastive")),
    Candidate("end + pmi + 10 contrast + 2 novelty", "answer", None, ("pmi", "contrastive")),
    Candidate("rules + end + pmi + 10 contrast + 2 novelty", "answer", RULES, ("pmi", "contrastive")),
    Candidate("shipped critic (its own threshold)", "shipped", None, ("shipped",), shipped=True),
]


def rank_keys(pairs: Pairs, signal: Sequence[float], rules: tuple[str, ...] | None) -> list[tuple[int, float]]:
    """(passes the rules, signal): a pair a rule rejects ranks below every pair it does not."""
    fired = [
        rules is not None and rule_reason(i, r, rules) is not None
        for i, r in zip(pairs.instructions, pairs.responses, strict=True)
    ]
    return [(0 if f else 1, s) for f, s in zip(fired, signal, strict=True)]


def best_threshold(keys: Sequence[tuple[int, float]], kinds: Sequence[str]) -> float:
    """The signal threshold that best separates good from bad pairs (mean of the two acceptance errors)."""
    values = sorted({s for passes, s in keys if passes})
    if not values:
        return 0.0
    candidates = [values[0] - 1] + [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)] + [values[-1] + 1]

    def error(t: float) -> float:
        good = [p and s >= t for (p, s), k in zip(keys, kinds, strict=True) if k == "good"]
        bad = [p and s >= t for (p, s), k in zip(keys, kinds, strict=True) if k != "good"]
        return (1 - np.mean(good)) + np.mean(bad)

    return min(candidates, key=error)


def evaluate(pairs: Pairs, keys: list[tuple[int, float]], threshold: float) -> dict:
    accepted = [bool(p) and s >= threshold for p, s in keys]
    good_key = {pairs.items[k]: keys[k] for k in range(len(keys)) if pairs.kinds[k] == "good"}
    table = {}
    for kind in (*critic_controls.BAD_KINDS, OFF_TOPIC):
        idx = [k for k in range(len(keys)) if pairs.kinds[k] == kind]
        table[kind] = {
            "good_above": float(np.mean([good_key[pairs.items[k]] > keys[k] for k in idx])),
            "accepted": float(np.mean([accepted[k] for k in idx])),
        }
    labelled = [k for k in range(len(keys)) if pairs.kinds[k] in critic_controls.BAD_KINDS]
    comparisons = [good_key[pairs.items[k]] > keys[k] for k in labelled]
    return {
        "per_kind": table,
        "pairwise_accuracy": float(np.mean(comparisons)),
        "good_accepted": float(np.mean([accepted[k] for k in range(len(keys)) if pairs.kinds[k] == "good"])),
        "threshold": threshold,
    }


def markdown(results: dict, split: str) -> str:
    kinds = (*critic_controls.BAD_KINDS, OFF_TOPIC)
    head = (
        "| candidate | "
        + " | ".join(f"{k}: good>bad / acc." for k in kinds)
        + " | pairwise acc. (6 kinds) | good acc. | threshold | s / 1k pairs |\n|"
        + "---|" * (len(kinds) + 5)
        + "\n"
    )
    lines = [f"Critic candidates on the {split} half of the control set\n", head]
    for name, r in results.items():
        cells = [f"{r['per_kind'][k]['good_above']:.2f} / {r['per_kind'][k]['accepted']:.2f}" for k in kinds]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | **{r['pairwise_accuracy']:.3f}** | {r['good_accepted']:.2f} | {r['threshold']:.3g}"
            + f" | {r['seconds_per_1000']:.1f} |\n"
        )
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["dev", "heldout"], default="dev")
    parser.add_argument("--samples", type=int, default=0, help="answers drawn per instruction for agreement (0: off)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cache", type=Path, help="keep the raw model signals here and reuse them (rules rerun)")
    args = parser.parse_args(argv)
    lm = model_loader.load_model(models_dir=Path("data/models"), device="cpu")
    dev, pairs = control_pairs("dev"), control_pairs(args.split)
    signals_by_split, seconds = {}, {}
    for split, p in {"dev": dev, args.split: pairs}.items():
        cached = args.cache / f"signals_{split}.json" if args.cache else None
        if cached and cached.exists():
            signals_by_split[split], seconds[split] = json.loads(cached.read_text())
        else:
            signals_by_split[split], seconds[split] = model_signals(lm, p, args.samples)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps([signals_by_split[split], seconds[split]]))
        critic = Critic(lm.model, lm.tokenizer)
        verdicts, seconds[split]["shipped"] = timed(
            lambda p=p, critic=critic: critic.score(list(zip(p.instructions, p.responses, strict=True)))
        )
        signals_by_split[split]["shipped"] = [v.score if v.rule is None else -1e9 for v in verdicts]
        signals_by_split[split] |= derived_signals(signals_by_split[split], p)
    results = {}
    for c in CANDIDATES:
        if c.signal not in signals_by_split["dev"]:
            continue
        if c.shipped:
            threshold = CriticParams().confidence_threshold
        else:
            threshold = best_threshold(rank_keys(dev, signals_by_split["dev"][c.signal], c.rules), dev.kinds)
        keys = rank_keys(pairs, signals_by_split[args.split][c.signal], c.rules)
        result = evaluate(pairs, keys, threshold)
        result["seconds_per_1000"] = 1000 * sum(seconds[args.split].get(g, 0.0) for g in c.groups) / len(pairs.kinds)
        results[c.name] = result
    print(markdown(results, args.split))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
