"""QC metrics of generated pairs, each with the examples it flagged (polars).

The runaway heuristic: a response is a runaway when it starts a new prompt turn (a fresh
"Instruction:", "Q:", "User:", "###" block, a new question...) or is longer than
`runaway_max_chars`. The earlier `len > 200 chars OR > 3 sentences` rule flagged 46.7% of good
answers while manual inspection found none: long, detailed answers are not runaways; generating
a new prompt is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import QCThresholds
from .prompts import TEMPLATE_DELIMITERS

# A new turn at the start of a line: the model started writing the next prompt.
NEW_PROMPT_PATTERN = r"(?im)^\s*(?:#{2,}|(?:instruction|q|question(?:\s*\d+)?|user|human|input|response)\s*[:：])"
CHECK_NAMES = (
    "runaway_rate",
    "token_limit_rate",
    "median_response_tokens",
    "delimiter_leakage",
    "pair_acceptance",
)
MAX_FLAGGED_SHOWN = 10
EXCERPT_CHARS = 160

REQUIRED_COLUMNS = ("id", "instruction", "response", "finish_reason", "response_tokens", "accepted")


def _frame(rows: Sequence[dict[str, Any]]) -> Any:
    import polars as pl

    missing = [c for c in REQUIRED_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"QC rows lack column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    df = pl.DataFrame(list(rows), infer_schema_length=None)
    if "critic_score" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("critic_score"))
    return df


def flag_frame(rows: Sequence[dict[str, Any]], thresholds: QCThresholds) -> Any:
    """One boolean column per heuristic plus a human-readable reason for each flag."""
    import polars as pl

    df = _frame(rows)
    response = pl.col("response")
    new_prompt = response.str.contains(NEW_PROMPT_PATTERN)
    too_long = response.str.len_chars() > thresholds.runaway_max_chars
    leaked = pl.any_horizontal([response.str.contains(d, literal=True) for d in TEMPLATE_DELIMITERS])
    return df.with_columns(
        runaway=new_prompt | too_long,
        runaway_why=pl.when(new_prompt)
        .then(pl.lit("starts a new prompt turn: ") + response.str.extract(NEW_PROMPT_PATTERN, 0).str.strip_chars())
        .when(too_long)
        .then(pl.format("{} chars > {}", response.str.len_chars(), pl.lit(thresholds.runaway_max_chars))),
        hit_token_limit=pl.col("finish_reason") == "length",
        delimiter_leak=leaked,
        delimiter_why=pl.concat_str(
            [pl.when(response.str.contains(d, literal=True)).then(pl.lit(d)) for d in TEMPLATE_DELIMITERS],
            separator=" ",
            ignore_nulls=True,
        ),
    )


def _examples(df: Any, mask: Any, why: Any, sort_by: str | None = None, descending: bool = True) -> list[dict]:
    import polars as pl

    flagged = df.filter(mask)
    if sort_by:
        flagged = flagged.sort(sort_by, descending=descending, nulls_last=True)
    return (
        flagged.head(MAX_FLAGGED_SHOWN)
        .select(
            "id",
            "instruction",
            pl.col("response").str.slice(0, EXCERPT_CHARS).alias("response_excerpt"),
            why.alias("why"),
        )
        .to_dicts()
    )


def qc_summary(rows: Sequence[dict[str, Any]], thresholds: QCThresholds) -> dict[str, Any]:
    """The five QC metrics: value, threshold, pass/fail, flagged count, ids and examples."""
    import polars as pl

    if not rows:
        raise ValueError("QC needs at least one generated pair")
    df = flag_frame(rows, thresholds)
    n = df.height
    median_tokens = float(df["response_tokens"].median())
    long_mask = pl.col("response_tokens") >= thresholds.max_median_response_tokens
    metrics = {
        "runaway_rate": _metric(
            df, pl.col("runaway"), df["runaway"].sum() / n, "<", thresholds.max_runaway_rate,
            _examples(df, pl.col("runaway"), pl.col("runaway_why")),
        ),
        "token_limit_rate": _metric(
            df, pl.col("hit_token_limit"), df["hit_token_limit"].sum() / n, "<", thresholds.max_token_limit_rate,
            _examples(df, pl.col("hit_token_limit"), pl.format("stopped at max new tokens ({} tokens)",
                                                               pl.col("response_tokens"))),
        ),
        "median_response_tokens": _metric(
            df, long_mask, median_tokens, "<", thresholds.max_median_response_tokens,
            _examples(df, long_mask, pl.format("{} tokens", pl.col("response_tokens")), "response_tokens"),
        ),
        "delimiter_leakage": _metric(
            df, pl.col("delimiter_leak"), int(df["delimiter_leak"].sum()), "<=", thresholds.max_delimiter_leakage,
            _examples(df, pl.col("delimiter_leak"), pl.lit("contains ") + pl.col("delimiter_why")),
        ),
        "pair_acceptance": _metric(
            df, ~pl.col("accepted"), df["accepted"].sum() / n, ">=", thresholds.min_acceptance_rate,
            _examples(df, ~pl.col("accepted"), pl.format("critic score {} below threshold",
                                                         pl.col("critic_score").round(3)), "critic_score", False),
        ),
    }  # fmt: skip
    return {
        "pairs": n,
        "passed": all(m["passed"] for m in metrics.values()),
        "thresholds": thresholds.model_dump(),
        "metrics": metrics,
    }


def _metric(df: Any, mask: Any, value: float, op: str, threshold: float, examples: list[dict]) -> dict[str, Any]:
    value = float(value)
    passed = {"<": value < threshold, "<=": value <= threshold, ">=": value >= threshold}[op]
    flagged_ids = df.filter(mask)["id"].to_list()
    return {
        "value": value,
        "threshold": threshold,
        "rule": f"value {op} {threshold}",
        "passed": bool(passed),
        "flagged_count": len(flagged_ids),
        "flagged_ids": flagged_ids,
        "examples": examples,
    }


def qc_by_group(rows: Sequence[dict[str, Any]], thresholds: QCThresholds, key: str) -> dict[str, dict[str, Any]]:
    """The same summary for each value of `key` (e.g. per shard)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row[key]), []).append(row)
    return {k: qc_summary(v, thresholds) for k, v in sorted(groups.items())}
