"""Paired evaluation: base vs base+adapter on the held-out instructions, judged by the clean base model.

Both systems answer `prompts.sft_prompt(instruction)` with the same decoding parameters and seed.
The judge is the critic's likelihood score (per-token PMI of a response with its instruction,
from the clean base model). It scores each response on its own, so the order in which two
responses are presented cannot matter; we still score every pair in both orders inside one batch
and report the agreement, which catches any batching/padding effect. An "A or B?" prompt on the
270M base model was pure position bias (DESIGN.md), which is why the judge is pointwise. The judge
is validated on a control where the answer is known: each instruction's real response against a
response shuffled from another instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import prompts, stats
from .config import QCThresholds, ResponseSampling
from .critic import Critic, shuffled_control
from .generation import Generator
from .qc import qc_summary

JUDGE_VERSION = "pmi-judge-v1"


@dataclass
class EvalParams:
    sampling: ResponseSampling
    batch_size: int
    seed: int
    tie_margin: float  # nats/token: smaller PMI differences are ties
    bootstrap_resamples: int = 2000


def answer(model: Any, tokenizer: Any, instructions: Sequence[str], params: EvalParams) -> list[dict[str, Any]]:
    completions, _ = Generator(model, tokenizer).generate(
        [prompts.sft_prompt(i) for i in instructions], params.sampling, params.batch_size, params.seed
    )
    token_counts = [len(t) for t in tokenizer([c.text for c in completions], add_special_tokens=False)["input_ids"]]
    return [{"response": c.text, "finish_reason": c.finish_reason, "response_tokens": n}
            for c, n in zip(completions, token_counts, strict=True)]  # fmt: skip


def judge(critic: Critic, instructions: Sequence[str], a: Sequence[str], b: Sequence[str], batch_size: int) -> dict:
    """PMI of each response, scored with the pair in both orders; returns scores and order agreement."""
    first = critic.score(
        [p for i, x, y in zip(instructions, a, b, strict=True) for p in ((i, x), (i, y))], 0.0, batch_size
    )
    second = critic.score(
        [p for i, x, y in zip(instructions, a, b, strict=True) for p in ((i, y), (i, x))], 0.0, batch_size
    )
    score_a = [(first[2 * k].score + second[2 * k + 1].score) / 2 for k in range(len(instructions))]
    score_b = [(first[2 * k + 1].score + second[2 * k].score) / 2 for k in range(len(instructions))]
    ab_order = [first[2 * k].score - first[2 * k + 1].score for k in range(len(instructions))]
    ba_order = [second[2 * k + 1].score - second[2 * k].score for k in range(len(instructions))]
    return {"score_a": score_a, "score_b": score_b, "consistency": stats.order_consistency(ab_order, ba_order)}


def control_accuracy(
    critic: Critic, instructions: Sequence[str], responses: Sequence[str], batch_size: int, seed: int
) -> float:
    """Share of instructions where the judge prefers the real response over a shuffled one."""
    real = critic.score(list(zip(instructions, responses, strict=True)), 0.0, batch_size)
    shuffled = critic.score(shuffled_control(list(zip(instructions, responses, strict=True)), seed), 0.0, batch_size)
    return sum(r.score > s.score for r, s in zip(real, shuffled, strict=True)) / len(instructions)


def system_qc(
    rows: Sequence[dict[str, Any]], scores: Sequence[float], ids: Sequence[str], instructions: Sequence[str]
) -> dict:
    qc_rows = [{"id": i, "instruction": ins, **r, "accepted": s >= 1.0, "critic_score": s}
               for i, ins, r, s in zip(ids, instructions, rows, scores, strict=True)]  # fmt: skip
    summary = qc_summary(qc_rows, QCThresholds())
    return {k: v["value"] for k, v in summary["metrics"].items() if k != "pair_acceptance"}


def evaluate(
    base: Any, adapted: Any, tokenizer: Any, test_rows: Sequence[dict[str, Any]], params: EvalParams
) -> dict[str, Any]:
    """The full report as a dict: per-pair rows, headline statistics, judge validation, QC of both systems."""
    ids = [r["id"] for r in test_rows]
    instructions = [r["instruction"] for r in test_rows]
    base_rows = answer(base, tokenizer, instructions, params)
    sft_rows = answer(adapted, tokenizer, instructions, params)
    critic = Critic(base, tokenizer, prompts.load_pool(prompts.QA_SHOTS))
    verdict = judge(
        critic, instructions, [r["response"] for r in sft_rows], [r["response"] for r in base_rows], params.batch_size
    )
    outcomes = stats.outcomes_from_scores(verdict["score_a"], verdict["score_b"], params.tie_margin)
    wins, losses = outcomes.count(1), outcomes.count(-1)
    ci = stats.bootstrap_ci(outcomes, params.bootstrap_resamples, params.seed)
    pairs = [
        {"id": i, "instruction": ins, "sft_response": s["response"], "base_response": b["response"],
         "sft_score": sa, "base_score": sb, "outcome": {1: "win", 0: "tie", -1: "loss"}[o],
         "sft_tokens": s["response_tokens"], "base_tokens": b["response_tokens"]}
        for i, ins, s, b, sa, sb, o in zip(ids, instructions, sft_rows, base_rows, verdict["score_a"],
                                           verdict["score_b"], outcomes, strict=True)
    ]  # fmt: skip
    control = control_accuracy(critic, instructions, [r["response"] for r in base_rows], params.batch_size, params.seed)
    return {
        "judge": JUDGE_VERSION,
        "n": len(pairs),
        "wins": wins,
        "ties": outcomes.count(0),
        "losses": losses,
        "win_rate": stats.win_rate(outcomes),
        "win_rate_ci95": list(ci),
        "sign_test_p": stats.sign_test_two_sided(wins, losses),
        "tie_margin": params.tie_margin,
        "judge_position_consistency": verdict["consistency"],
        "judge_control_accuracy": control,
        "mean_tokens": {
            "sft": _mean([p["sft_tokens"] for p in pairs]),
            "base": _mean([p["base_tokens"] for p in pairs]),
        },
        "mean_judge_score": {"sft": _mean(verdict["score_a"]), "base": _mean(verdict["score_b"])},
        "length_control": stats.length_controlled(
            outcomes, [p["sft_tokens"] for p in pairs], [p["base_tokens"] for p in pairs]
        ),
        "qc": {
            "sft": system_qc(sft_rows, verdict["score_a"], ids, instructions),
            "base": system_qc(base_rows, verdict["score_b"], ids, instructions),
        },
        "pairs": pairs,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def markdown_report(report: dict[str, Any], plot_md: str = "") -> str:
    from .report import markdown_table

    lo, hi = report["win_rate_ci95"]
    wtl = f"{report['wins']} / {report['ties']} / {report['losses']}"
    headline = [
        {"metric": "win / tie / loss (SFT vs base)", "value": wtl},
        {"metric": "win rate (ties = 1/2)", "value": f"{report['win_rate']:.3f} [95% CI {lo:.3f}, {hi:.3f}]"},
        {"metric": "sign test p (two-sided, non-ties)", "value": f"{report['sign_test_p']:.4g}"},
        {"metric": "judge control accuracy (real vs shuffled)", "value": f"{report['judge_control_accuracy']:.3f}"},
        {"metric": "judge position consistency", "value": f"{report['judge_position_consistency']:.3f}"},
        {"metric": "mean response tokens SFT / base",
         "value": f"{report['mean_tokens']['sft']:.1f} / {report['mean_tokens']['base']:.1f}"},
    ]  # fmt: skip
    lc = report["length_control"]
    length_rows = [
        {"subset": "length-matched", "pairs": lc["matched_pairs"], "win_rate": lc["win_rate_length_matched"]},
        {"subset": "SFT answer longer", "pairs": lc["pairs_sft_longer"], "win_rate": lc["win_rate_sft_longer"]},
        {"subset": "SFT answer shorter", "pairs": lc["pairs_sft_shorter"], "win_rate": lc["win_rate_sft_shorter"]},
    ]
    qc_rows = [{"system": s, **{k: v for k, v in m.items()}} for s, m in report["qc"].items()]
    by_margin = sorted(report["pairs"], key=lambda p: p["sft_score"] - p["base_score"])
    cols = ["id", "instruction", "sft_response", "base_response", "sft_score", "base_score", "outcome"]
    return "\n\n".join([
        f"# Paired evaluation: base + adapter vs base ({report['n']} held-out instructions)",
        markdown_table(headline, ["metric", "value"]),
        "## Length control\n" + markdown_table(length_rows, ["subset", "pairs", "win_rate"])
        + f"\ncorrelation(outcome, SFT − base length) = {lc['corr_outcome_length_diff']:.3f}",
        "## QC of both systems' responses\n" + markdown_table(qc_rows, list(qc_rows[0])),
        "## Judge\nPer-token PMI of the response with its instruction, from the clean base model "
        f"(`{report['judge']}`). Known biases: it is the base model judging its own style (self-preference), "
        "and a per-token average is length-sensitive (a short answer that echoes the instruction scores high, "
        "a long answer that drifts is averaged down); see the length-control table.",
        "## 5 best pairs for the adapter\n" + markdown_table(by_margin[::-1][:5], cols, 200),
        "## 5 worst pairs for the adapter\n" + markdown_table(by_margin[:5], cols, 200),
        plot_md,
    ])  # fmt: skip
