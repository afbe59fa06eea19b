"""The blocking QC asset checks, shared by `pilot_data` and `qc_summary`.

The metric values and flags come from `core.qc.qc_summary`, the same summary the asset writes to
`qc_summary.json`; the asset yields these results itself, so file and checks never disagree.
"""

from typing import Any

import dagster as dg

from ..core.qc import QCMetric, QCSummary
from ..core.report import markdown_table

QC_CHECK_DESCRIPTIONS = {
    "runaway_rate": "Share of responses that start a new prompt (an Instruction:/Q:/User:/### turn, new unlabelled "
    "questions, a new task) or exceed 500 characters must be below 5%. Long, detailed answers are not runaways.",
    "token_limit_rate": "Share of responses that stopped because they hit max new tokens must be below 10%.",
    "median_response_tokens": "Median response length must be below 40 tokens.",
    "delimiter_leakage": "No response may contain a template delimiter (Instruction:, Response:, turn tokens).",
    "pair_acceptance": "At least 50% of pairs must be accepted by the critic.",
}
LENGTH_BIAS_DESCRIPTION = (
    "Warns when the critic's accepted answers are much shorter than its rejected ones (median length ratio below "
    "0.5 by default): a sign of a critic that rewards brevity rather than quality. Shows acceptance by length."
)


def qc_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        *(
            dg.AssetCheckSpec(
                name, asset=asset, blocking=True, description=desc + " (default thresholds; run config may change them)"
            )
            for name, desc in QC_CHECK_DESCRIPTIONS.items()
        ),
        dg.AssetCheckSpec("length_bias", asset=asset, description=LENGTH_BIAS_DESCRIPTION),
    ]


def metric_check_result(asset: str, name: str, metric: QCMetric, pairs: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=asset,
        passed=bool(metric.passed),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{name} = {metric.value:.4g}; passes when {metric.rule}",
        metadata={
            "value": float(metric.value),
            "threshold": float(metric.threshold),
            "rule": metric.rule,
            "pairs": pairs,
            "flagged_count": metric.flagged_count,
            "flagged_ids": dg.MetadataValue.json(metric.flagged_ids[:200]),
            "flagged_examples": dg.MetadataValue.md(
                markdown_table(metric.examples, ["id", "instruction", "response_excerpt", "why"])
            ),
        },
    )


def length_bias_check_result(asset: str, bias: dict[str, Any]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="length_bias",
        asset_key=asset,
        passed=bool(bias["passed"]),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"accepted median {bias['accepted_median_tokens']} tokens vs rejected "
        f"{bias['rejected_median_tokens']}; passes when the ratio >= {bias['min_ratio']}",
        metadata={
            "median_ratio": float(bias["median_ratio"]),
            "min_ratio": float(bias["min_ratio"]),
            "pearson_tokens_score": float(bias["pearson_tokens_score"]),
            "accepted_median_tokens": float(bias["accepted_median_tokens"]),
            "rejected_median_tokens": float(bias["rejected_median_tokens"]),
            "enough_to_compare": bool(bias["comparable"]),
            "rule_rejected_left_out": int(bias["rule_rejected"]),
            "acceptance_by_length": dg.MetadataValue.md(
                markdown_table(bias["by_length"], ["tokens", "pairs", "acceptance"])
            ),
        },
    )


def control_set_tables(report: dict[str, Any], good_column: str) -> dict[str, dg.MetadataValue]:
    """A critic's (or judge's) report on the labelled control set as two tables: per kind of bad answer, how
    often the good answer ranked above it (`good_column`) and how often it was rejected; and the misranked pairs."""
    per_kind = [{"bad kind": k, good_column: v["good_above"], "rejected": v["rejected"]}
                for k, v in report["per_kind"].items()]  # fmt: skip
    misranked = ["item", "kind", "instruction", "bad_response", "bad_verdict", "good_verdict"]
    return {
        "per_kind": dg.MetadataValue.md(markdown_table(per_kind, ["bad kind", good_column, "rejected"])),
        "misranked": dg.MetadataValue.md(markdown_table(report["misranked"], misranked)),
    }


def qc_check_results(asset: str, summary: QCSummary) -> list[dg.AssetCheckResult]:
    return [
        *(metric_check_result(asset, n, summary.metrics[n], summary.pairs) for n in QC_CHECK_DESCRIPTIONS),
        length_bias_check_result(asset, summary.length_bias),
    ]
