"""Paired evaluation: does base + adapter follow instructions better than the base model?

Both systems answer every item with the same zero-shot template (`prompts.sft_prompt`), decoding
parameters and seed, so each item gives a pair of outcomes. The headline is objective:

* instruction following: prompts with constraints a program checks (`core.instruction_following`),
  scored strictly and loosely;
* reference answers: short-answer questions with accepted answers (`core.reference_qa`), which
  show whether fine-tuning kept the base model's knowledge.

Each gets a pass rate per system with a Wilson 95% interval and the paired difference with
Newcombe's interval and an exact McNemar test (`core.stats`): "no significant difference" when
the interval holds zero.

A likelihood judge (the critic, from the clean base model) on the held-out test instructions is a
secondary view: its trust is measured on the held-out half of the labelled critic control set,
its win rate has an exact interval, a length-controlled view scores both answers cut to the same
number of tokens, and the report says so when the judge is the very critic that filtered the
training data (then its verdict is not independent evidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import critic_controls, prompts, stats
from .config import CriticParams, QCThresholds, ResponseSampling
from .critic import Critic, critic_fingerprint
from .generation import Generator
from .instruction_following import IFPrompt, by_type
from .instruction_following import evaluate as check_instructions
from .qc import qc_summary
from .reference_qa import QAItem, is_correct
from .report import markdown_table

SHOWN_EXAMPLES = 5


@dataclass
class EvalParams:
    sampling: ResponseSampling
    batch_size: int
    seed: int
    tie_margin: float  # judge score differences within this margin are ties
    judge: CriticParams = field(default_factory=CriticParams)
    reference_max_new_tokens: int = 32  # a reference answer is graded on its first sentence: no need for more
    training_critic: CriticParams | None = None  # the critic that filtered the training data, if known
    trust_cache: Path | None = None  # where the judge's control-set report is kept (critic_controls.cache_path)


@dataclass
class EvalItems:
    instruction_following: Sequence[IFPrompt]
    reference_qa: Sequence[QAItem]
    test_rows: Sequence[dict[str, Any]]  # the held-out test instructions, {"id", "instruction"}


def answer(
    model: Any, tokenizer: Any, instructions: Sequence[str], params: EvalParams, caps: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Each instruction answered zero-shot, as fine-tuning taught: text, finish reason and token count.
    `caps` lowers max new tokens per instruction."""
    completions, _ = Generator(model, tokenizer).generate(
        [prompts.sft_prompt(i) for i in instructions], params.sampling, params.batch_size, params.seed,
        length_caps=caps,
    )  # fmt: skip
    texts = [c.text.strip() if c else "" for c in completions]
    token_counts = [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    return [{"response": t, "finish_reason": c.finish_reason if c else "length", "response_tokens": n}
            for t, c, n in zip(texts, completions, token_counts, strict=True)]  # fmt: skip


def _rates(passed: Sequence[bool]) -> dict[str, Any]:
    k, n = sum(passed), len(passed)
    return {"passed": k, "pass_rate": k / n if n else float("nan"), "ci95": list(stats.wilson_ci(k, n))}


def _paired(sft: Sequence[bool], base: Sequence[bool]) -> dict[str, Any]:
    paired = stats.paired_proportions(sft, base)
    return {"difference": paired.difference, "difference_ci95": list(paired.difference_ci95),
            "mcnemar_p": paired.mcnemar_p, "significant": paired.significant,
            "sft_only": paired.only_first, "base_only": paired.only_second}  # fmt: skip


def instruction_following(
    items: Sequence[IFPrompt], sft: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Strict pass rates (loose beside them), the paired difference, a table per constraint type, and rows."""
    sft_results = [check_instructions(p, r["response"]) for p, r in zip(items, sft, strict=True)]
    base_results = [check_instructions(p, r["response"]) for p, r in zip(items, base, strict=True)]
    sft_types, base_types = by_type(sft_results), by_type(base_results)
    rows = [
        {"id": p.id, "prompt": p.prompt, "checks": ", ".join(p.types), "sft_response": s["response"],
         "base_response": b["response"], "sft_strict": rs.strict, "base_strict": rb.strict,
         "sft_loose": rs.loose, "base_loose": rb.loose}
        for p, s, b, rs, rb in zip(items, sft, base, sft_results, base_results, strict=True)
    ]  # fmt: skip
    return {
        "n": len(items),
        "sft": _rates([r.strict for r in sft_results]) | {"loose": _rates([r.loose for r in sft_results])},
        "base": _rates([r.strict for r in base_results]) | {"loose": _rates([r.loose for r in base_results])},
        **_paired([r.strict for r in sft_results], [r.strict for r in base_results]),
        "loose_paired": _paired([r.loose for r in sft_results], [r.loose for r in base_results]),
        "by_type": {
            t: {
                "checks": sft_types[t]["checks"],
                "sft_strict": sft_types[t]["strict"],
                "base_strict": base_types[t]["strict"],
                "sft_loose": sft_types[t]["loose"],
                "base_loose": base_types[t]["loose"],
            }
            for t in sorted(sft_types)
        },  # fmt: skip
        "rows": rows,
    }


def reference_qa(items: Sequence[QAItem], sft: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]]) -> dict:
    sft_ok = [is_correct(q, r["response"]) for q, r in zip(items, sft, strict=True)]
    base_ok = [is_correct(q, r["response"]) for q, r in zip(items, base, strict=True)]
    accuracy = {
        name: {"correct": v["passed"], "accuracy": v["pass_rate"], "ci95": v["ci95"]}
        for name, v in (("sft", _rates(sft_ok)), ("base", _rates(base_ok)))
    }
    rows = [{"id": q.id, "question": q.question, "answers": " / ".join(q.answers), "sft_response": s["response"],
             "base_response": b["response"], "sft_correct": so, "base_correct": bo}
            for q, s, b, so, bo in zip(items, sft, base, sft_ok, base_ok, strict=True)]  # fmt: skip
    return {"n": len(items), **accuracy, **_paired(sft_ok, base_ok), "rows": rows}


def _cut_to_equal_length(tokenizer: Any, a: str, b: str) -> tuple[str, str]:
    ids_a, ids_b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (a, b))
    keep = min(len(ids_a), len(ids_b))
    return tuple(tokenizer.decode(ids[:keep]) for ids in (ids_a, ids_b))  # type: ignore[return-value]


def judge(
    critic: Critic, tokenizer: Any, items: Sequence[dict[str, Any]], sft: Sequence[dict], base: Sequence[dict],
    params: EvalParams,
) -> dict[str, Any]:  # fmt: skip
    """The likelihood judge's view: win / tie / loss with an exact interval and sign test, the same on
    answers cut to equal token counts (per-token PMI, no rules: a cut answer is unfinished by design),
    the judge's trust on the control set, and whether it is the training filter itself."""
    instructions = [r["instruction"] for r in items]
    sft_v = critic.score([(i, r["response"]) for i, r in zip(instructions, sft, strict=True)])
    base_v = critic.score([(i, r["response"]) for i, r in zip(instructions, base, strict=True)])
    outcomes = [_outcome(s, b, params.tie_margin) for s, b in zip(sft_v, base_v, strict=True)]
    cut = [_cut_to_equal_length(tokenizer, s["response"], b["response"]) for s, b in zip(sft, base, strict=True)]
    plain = Critic(critic.good.model, tokenizer, CriticParams(signal="pmi_mean", rules=[]))
    cut_sft = plain.score([(i, a) for i, (a, _) in zip(instructions, cut, strict=True)])
    cut_base = plain.score([(i, b) for i, (_, b) in zip(instructions, cut, strict=True)])
    cut_outcomes = stats.outcomes_from_scores([v.score for v in cut_sft], [v.score for v in cut_base], 0.0)
    rows = [
        {"id": r["id"], "instruction": r["instruction"], "sft_response": s["response"],
         "base_response": b["response"], "sft_verdict": sv.reason, "base_verdict": bv.reason,
         "sft_tokens": s["response_tokens"], "base_tokens": b["response_tokens"],
         "outcome": {1: "win", 0: "tie", -1: "loss"}[o], "margin": sv.score - bv.score if o else 0.0}
        for r, s, b, sv, bv, o in zip(items, sft, base, sft_v, base_v, outcomes, strict=True)
    ]  # fmt: skip
    same_as_filter = params.training_critic is not None and params.training_critic.model_dump(
        exclude={"batch_size"}
    ) == params.judge.model_dump(exclude={"batch_size"})
    return {
        "version": critic_fingerprint(),
        "params": params.judge.model_dump(),
        "is_training_filter": same_as_filter,
        "n": len(items),
        **_win_loss(outcomes),
        "length_controlled": _win_loss(cut_outcomes) | {"method": "both answers cut to the shorter one's tokens"},
        "trust": critic_controls.controls_report(critic, "heldout", params.trust_cache),
        "mean_tokens": {
            "sft": _mean([r["response_tokens"] for r in sft]),
            "base": _mean([r["response_tokens"] for r in base]),
        },  # fmt: skip
        "qc": {"sft": _system_qc(items, sft, sft_v), "base": _system_qc(items, base, base_v)},
        "rows": rows,
    }


def _outcome(sft: Any, base: Any, tie_margin: float) -> int:
    """+1 when the judge prefers the adapter's answer, -1 the base's, 0 a tie (scores within the margin)."""
    if sft.rank_key[0] != base.rank_key[0]:  # a rule rejected one of them
        return 1 if sft.rank_key[0] > base.rank_key[0] else -1
    return stats.outcomes_from_scores([sft.score], [base.score], tie_margin)[0]


def _win_loss(outcomes: Sequence[int]) -> dict[str, Any]:
    """Wins, ties, losses; the share of decided pairs the adapter wins, with its exact interval; sign test."""
    wins, losses = outcomes.count(1), outcomes.count(-1)
    return {
        "wins": wins, "ties": outcomes.count(0), "losses": losses,
        "win_share": wins / (wins + losses) if wins + losses else float("nan"),
        "win_share_ci95": list(stats.exact_ci(wins, wins + losses)),
        "sign_test_p": stats.sign_test(wins, losses),
    }  # fmt: skip


def _system_qc(items: Sequence[dict], rows: Sequence[dict], verdicts: Sequence[Any]) -> dict[str, float]:
    qc_rows = [{"id": i["id"], "instruction": i["instruction"], **r, "accepted": v.accepted, "critic_score": v.score}
               for i, r, v in zip(items, rows, verdicts, strict=True)]  # fmt: skip
    return {k: v["value"] for k, v in qc_summary(qc_rows, QCThresholds())["metrics"].items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate(base: Any, adapted: Any, tokenizer: Any, items: EvalItems, params: EvalParams) -> dict[str, Any]:
    """The whole report as a dict (the fields of `eval_report.json`)."""
    asked = ([p.prompt for p in items.instruction_following] + [q.question for q in items.reference_qa]
             + [r["instruction"] for r in items.test_rows])  # fmt: skip
    n_if, n_qa = len(items.instruction_following), len(items.reference_qa)
    caps = [params.sampling.max_new_tokens] * len(asked)
    caps[n_if : n_if + n_qa] = [params.reference_max_new_tokens] * n_qa
    base_rows, sft_rows = (answer(m, tokenizer, asked, params, caps) for m in (base, adapted))
    parts = [slice(0, n_if), slice(n_if, n_if + n_qa), slice(n_if + n_qa, len(asked))]
    sft_if, sft_qa, sft_test = (sft_rows[s] for s in parts)
    base_if, base_qa, base_test = (base_rows[s] for s in parts)
    critic = Critic(base, tokenizer, params.judge)
    return {
        "instruction_following": instruction_following(items.instruction_following, sft_if, base_if),
        "reference_qa": reference_qa(items.reference_qa, sft_qa, base_qa),
        "judge": judge(critic, tokenizer, items.test_rows, sft_test, base_test, params),
        "decoding": params.sampling.model_dump() | {"seed": params.seed, "template": prompts.SFT_CUE},
    }


def verdict_line(name: str, section: dict[str, Any], rate_key: str) -> str:
    lo, hi = section["difference_ci95"]
    sft, base = section["sft"][rate_key], section["base"][rate_key]
    if not section["significant"]:
        finding = "no significant difference"
    else:
        finding = "the adapter is better" if section["difference"] > 0 else "the adapter is worse"
    return (f"{name}: adapter {sft:.3f}, base {base:.3f}, difference {section['difference']:+.3f} "
            f"[95% CI {lo:+.3f}, {hi:+.3f}], McNemar p {section['mcnemar_p']:.3g}: {finding}")  # fmt: skip


def headline(report: dict[str, Any]) -> list[dict[str, str]]:
    """The lead table of the report and of the UI metadata."""
    iff, qa = report["instruction_following"], report["reference_qa"]

    def rate(section: dict[str, Any], key: str) -> str:
        lo, hi = section["ci95"]
        return f"{section[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    def diff(section: dict[str, Any]) -> str:
        lo, hi = section["difference_ci95"]
        return f"{section['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], p {section['mcnemar_p']:.3g}"

    return [
        {"measure": f"instruction following, strict ({iff['n']} prompts)", "adapter": rate(iff["sft"], "pass_rate"),
         "base": rate(iff["base"], "pass_rate"), "difference (McNemar)": diff(iff)},
        {"measure": f"instruction following, loose ({iff['n']} prompts)",
         "adapter": rate(iff["sft"]["loose"], "pass_rate"), "base": rate(iff["base"]["loose"], "pass_rate"),
         "difference (McNemar)": diff(iff["loose_paired"])},
        {"measure": f"reference answers ({qa['n']} questions)", "adapter": rate(qa["sft"], "accuracy"),
         "base": rate(qa["base"], "accuracy"), "difference (McNemar)": diff(qa)},
    ]  # fmt: skip


def best_and_worst(rows: Sequence[dict[str, Any]], count: int = SHOWN_EXAMPLES) -> tuple[list[dict], list[dict]]:
    """The pairs the judge most prefers the adapter on, and most prefers the base on: disjoint sets."""
    ordered = sorted(rows, key=lambda r: r["margin"])
    best = [r for r in ordered[::-1] if r["outcome"] == "win"][:count]
    worst = [r for r in ordered if r["outcome"] == "loss"][:count]
    return best, worst


def markdown_report(report: dict[str, Any], plot_md: str = "") -> str:
    iff, qa, jd = report["instruction_following"], report["reference_qa"], report["judge"]
    trust = jd["trust"]
    types = [{"constraint": t, **v} for t, v in iff["by_type"].items()]
    trust_rows = [{"bad kind": k, "good ranked above": v["good_above"], "rejected": v["rejected"]}
                  for k, v in trust["per_kind"].items()]  # fmt: skip
    best, worst = best_and_worst(jd["rows"])
    cols = ["id", "instruction", "sft_response", "base_response", "sft_verdict", "base_verdict"]
    lo, hi = jd["win_share_ci95"]
    lc = jd["length_controlled"]
    circular = (
        "**The judge is the critic that filtered the training data**: the adapter was trained on answers this "
        "function prefers, so its preference here is not independent evidence."
        if jd["is_training_filter"] else "The judge differs from the critic that filtered the training data."
    )  # fmt: skip
    examples = [r for r in iff["rows"] if r["sft_strict"] != r["base_strict"]][:3] or iff["rows"][:3]
    return "\n\n".join([
        "# Paired evaluation: base + adapter vs base",
        "## Headline\n" + markdown_table(headline(report), ["measure", "adapter", "base", "difference (McNemar)"]),
        "- " + verdict_line("Instruction following (strict)", iff, "pass_rate") + "\n- "
        + verdict_line("Reference answers", qa, "accuracy"),
        "## Instruction following by constraint type (checks passed, strict / loose)\n"
        + markdown_table(types, ["constraint", "checks", "sft_strict", "base_strict", "sft_loose", "base_loose"]),
        "## Examples (prompts where the systems differ)\n"
        + markdown_table(examples, ["id", "prompt", "checks", "sft_response", "sft_strict", "base_response",
                                    "base_strict"], 160),
        "## Secondary: likelihood judge on the held-out test instructions\n" + circular + "\n\n"
        + f"wins / ties / losses {jd['wins']} / {jd['ties']} / {jd['losses']}; adapter wins {jd['win_share']:.3f} "
        f"of decided pairs [exact 95% CI {lo:.3f}, {hi:.3f}], sign test p {jd['sign_test_p']:.3g}. Cut to equal "
        f"lengths: {lc['wins']} / {lc['ties']} / {lc['losses']}, sign test p {lc['sign_test_p']:.3g}. Mean response "
        f"tokens adapter / base: {jd['mean_tokens']['sft']:.1f} / {jd['mean_tokens']['base']:.1f}.",
        f"### Judge trust on the held-out control set ({trust['items']} requests; pairwise accuracy "
        f"{trust['pairwise_accuracy']:.3f})\n"
        + markdown_table(trust_rows, ["bad kind", "good ranked above", "rejected"]),
        "### QC of both systems' answers\n"
        + markdown_table([{"system": s, **m} for s, m in jd["qc"].items()], ["system", *jd["qc"]["sft"]]),
        "### Pairs the judge most prefers the adapter on\n" + markdown_table(best, cols, 200),
        "### Pairs the judge most prefers the base model on\n" + markdown_table(worst, cols, 200),
        plot_md,
    ])  # fmt: skip
