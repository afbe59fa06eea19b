"""The blocking QC asset checks, shared by `pilot_data` and `qc_summary`.

The metric values and flags come from `core.qc.qc_summary`, the same summary the asset writes to
`qc_summary.json`; the asset yields these results itself, so file and checks never disagree.
"""

from typing import Any

import dagster as dg

from ..core.report import markdown_table

QC_CHECK_DESCRIPTIONS = {
    "runaway_rate": "Share of responses that start a new prompt turn (Instruction:/Q:/User:/###/new question) "
    "or exceed 500 characters must be below 5%. Long, detailed answers are not runaways.",
    "token_limit_rate": "Share of responses that stopped because they hit max new tokens must be below 10%.",
    "median_response_tokens": "Median response length must be below 40 tokens.",
    "delimiter_leakage": "No response may contain a template delimiter (Instruction:, Response:, turn tokens).",
    "pair_acceptance": "At least 50% of pairs must reach the critic's confidence threshold "
    "(per-token PMI >= 1.0 nats).",
}


def qc_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            name, asset=asset, blocking=True, description=desc + " (default thresholds; run config may change them)"
        )
        for name, desc in QC_CHECK_DESCRIPTIONS.items()
    ]


def metric_check_result(asset: str, name: str, metric: dict[str, Any], pairs: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=asset,
        passed=bool(metric["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{name} = {metric['value']:.4g}; passes when {metric['rule']}",
        metadata={
            "value": float(metric["value"]),
            "threshold": float(metric["threshold"]),
            "rule": metric["rule"],
            "pairs": pairs,
            "flagged_count": metric["flagged_count"],
            "flagged_ids": dg.MetadataValue.json(metric["flagged_ids"][:200]),
            "flagged_examples": dg.MetadataValue.md(
                markdown_table(metric["examples"], ["id", "instruction", "response_excerpt", "why"])
            ),
        },
    )


def qc_check_results(asset: str, summary: dict[str, Any]) -> list[dg.AssetCheckResult]:
    return [
        metric_check_result(asset, name, summary["metrics"][name], summary["pairs"]) for name in QC_CHECK_DESCRIPTIONS
    ]
