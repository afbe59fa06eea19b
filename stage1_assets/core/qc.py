"""QC metrics of generated pairs, each with the examples it flagged (polars).

The runaway heuristic: a response is a runaway when it starts a new prompt (`core.runaway`: a
fresh "Instruction:"/"Q:"/"User:"/"###" turn, new unlabelled questions, a new task) or is longer
than `runaway_max_chars`. An earlier `len > 200 chars OR > 3 sentences` rule flagged 46.7% of good
answers while manual inspection found none: long, detailed answers are not runaways; generating
a new prompt is.

Length bias: a critic that prefers short answers shows as accepted answers much shorter than
rejected ones; `length_bias` reports it (a warning, not a gate: short data is not wrong data).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from . import stats
from .config import QCThresholds
from .prompts import TEMPLATE_DELIMITERS
from .runaway import runaway_reason

CHECK_NAMES = (
    "runaway_rate",
    "token_limit_rate",
    "median_response_tokens",
    "delimiter_leakage",
    "pair_acceptance",
)
MAX_FLAGGED_SHOWN = 10
LENGTH_BUCKETS = (0, 10, 20, 40, 80)  # lower edges, in response tokens
MIN_LENGTH_BIAS_PAIRS = 5  # score-accepted and score-rejected answers needed before medians are compared
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
    new_prompt = pl.Series(
        [runaway_reason(i, r) for i, r in zip(df["instruction"], df["response"], strict=True)], dtype=pl.String
    )
    df = df.with_columns(new_prompt=new_prompt)
    too_long = response.str.len_chars() > thresholds.runaway_max_chars
    leaked = pl.any_horizontal([response.str.contains(d, literal=True) for d in TEMPLATE_DELIMITERS])
    return df.with_columns(
        runaway=pl.col("new_prompt").is_not_null() | too_long,
        runaway_why=pl.when(pl.col("new_prompt").is_not_null())
        .then(pl.lit("starts a new prompt (") + pl.col("new_prompt").str.replace(": ", "): ", literal=True))
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
        "length_bias": length_bias(rows, thresholds.min_length_ratio),
    }


def length_bias(rows: Sequence[dict[str, Any]], min_ratio: float) -> dict[str, Any]:
    """How the critic's score relates to response length: the correlation of length with score, the median
    length of score-accepted and score-rejected answers, and acceptance per length bucket. Fails (a
    warning) when accepted answers are much shorter than rejected ones (median ratio below `min_ratio`).

    Answers a rule rejected (a runaway, a cut-off answer: long by nature) are left out of the comparison:
    the question is whether the *score* prefers short answers. With fewer than `MIN_LENGTH_BIAS_PAIRS`
    answers on either side there is nothing to compare, and the check passes saying so."""
    judged = [r for r in rows if not r.get("critic_rule")]
    accepted = [int(r["response_tokens"]) for r in judged if r["accepted"]]
    rejected = [int(r["response_tokens"]) for r in judged if not r["accepted"]]
    comparable = min(len(accepted), len(rejected)) >= MIN_LENGTH_BIAS_PAIRS
    accepted_median = statistics.median(accepted) if accepted else math.nan
    rejected_median = statistics.median(rejected) if rejected else math.nan
    ratio = accepted_median / rejected_median if comparable and rejected_median else math.nan
    scored = [(int(r["response_tokens"]), r["critic_score"]) for r in judged if r.get("critic_score") is not None]
    buckets = []
    for low, high in zip(LENGTH_BUCKETS, (*LENGTH_BUCKETS[1:], None), strict=True):
        inside = [r for r in rows if r["response_tokens"] >= low and (high is None or r["response_tokens"] < high)]
        if inside:
            label = f"{low}–{high - 1}" if high is not None else f"{low}+"
            buckets.append({"tokens": label, "pairs": len(inside),
                            "acceptance": sum(bool(r["accepted"]) for r in inside) / len(inside)})  # fmt: skip
    return {
        "pearson_tokens_score": stats.pearson([t for t, _ in scored], [s for _, s in scored]),
        "accepted_median_tokens": accepted_median,
        "rejected_median_tokens": rejected_median,
        "median_ratio": ratio,
        "min_ratio": min_ratio,
        "rule_rejected": len(rows) - len(judged),
        "comparable": comparable,
        "passed": bool(not comparable or ratio >= min_ratio),
        "by_length": buckets,
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
