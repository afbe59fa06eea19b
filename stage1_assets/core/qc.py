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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from . import stats
from .artifacts import Document, check_fields
from .config import QCThresholds
from .io import FieldType
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


# ------------------------------------------------------------------ the QC summary as other assets read it

NUMBER = (int, float)


@dataclass(frozen=True)
class QCMetric(Document):
    """One QC metric of a summary: its value against its threshold, and the pairs it flagged."""

    value: float
    threshold: float
    rule: str
    passed: bool
    flagged_count: int
    flagged_ids: list[Any]
    examples: list[dict[str, Any]]

    TYPES: ClassVar[dict[str, FieldType]] = {"value": NUMBER, "threshold": NUMBER, "rule": str, "passed": bool,
                                              "flagged_count": int, "flagged_ids": list, "examples": list}  # fmt: skip

    def failure(self, name: str) -> str | None:
        """`name = value (needs rule)` when the metric failed, else None."""
        return None if self.passed else f"{name} = {self.value:.4g} (needs {self.rule})"


@dataclass(frozen=True)
class TestOverlap(Document):
    """How many SFT rows overlap the held-out test set (the SQL audit's count), with examples."""

    __test__ = False  # not a pytest test class, whatever its name

    count: int
    method: str
    examples: list[dict[str, Any]]
    sft_rows: int

    TYPES: ClassVar[dict[str, FieldType]] = {"count": int, "method": str, "examples": list, "sft_rows": int}


@dataclass(frozen=True)
class QCSummary(Document):
    """`qc_summary(rows, thresholds)` as a typed document: the five metrics, the thresholds, the length bias.

    `from_dict` refuses a missing or mistyped key, naming the file (`source`) and the key; `to_dict` gives back
    exactly the keys (in the same order) `qc_summary` and the assets write.
    """

    pairs: int
    passed: bool
    thresholds: dict[str, Any]
    metrics: dict[str, QCMetric]
    length_bias: dict[str, Any]

    TYPES: ClassVar[dict[str, FieldType]] = {"pairs": int, "passed": bool, "thresholds": dict, "metrics": dict,
                                              "length_bias": dict}  # fmt: skip
    NESTED: ClassVar[dict[str, Any]] = {}  # key -> the typed model of its value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path = "QC summary", what: str = "") -> Any:
        check_fields(data, source, cls.TYPES, what=what)
        values = {k: data[k] for k in cls.TYPES}
        values["metrics"] = {
            name: QCMetric.from_dict(m, f"{source}: metrics.{name}") for name, m in data["metrics"].items()
        }
        for key, model in cls.NESTED.items():
            values[key] = model.from_dict(data[key], f"{source}: {key}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["metrics"] = {name: m.to_dict() for name, m in self.metrics.items()}
        for key in self.NESTED:
            out[key] = out[key].to_dict()
        return out

    def failures(self) -> list[str]:
        """`name = value (needs rule)` for each failed metric."""
        return [f for name, m in self.metrics.items() if (f := m.failure(name))]


@dataclass(frozen=True)
class PilotQCSummary(QCSummary):
    """A pilot iteration's `qc_summary.json`: the QC summary plus the two critic checks."""

    critic_discrimination: dict[str, Any]
    critic_quality: dict[str, Any]

    TYPES: ClassVar[dict[str, FieldType]] = QCSummary.TYPES | {"critic_discrimination": dict, "critic_quality": dict}


@dataclass(frozen=True)
class DatasetQCSummary(QCSummary):
    """`qc_summary.json` of the SFT dataset: the QC summary of every generated pair, per shard, the dataset's
    overlap with the test set, and the hashes of the dataset and test set it describes (training's gate)."""

    per_shard: dict[str, Any]
    test_overlap: TestOverlap
    sft_dataset_sha256: str
    test_set_sha256: str

    TYPES: ClassVar[dict[str, FieldType]] = QCSummary.TYPES | {
        "per_shard": dict, "test_overlap": dict, "sft_dataset_sha256": str, "test_set_sha256": str,
    }  # fmt: skip
    NESTED: ClassVar[dict[str, Any]] = {"test_overlap": TestOverlap}

    def training_refusal(
        self, source: str | Path, dataset: str | Path, dataset_sha256: str, test_sha256: Callable[[], str]
    ) -> str:
        """Why training on `dataset` (its sha256) must not start ("" when it may): the summary describes another
        version of it, a metric failed, it overlaps the test set, or it was computed on another test set (whose
        sha256 `test_sha256()` gives: asked last, only when everything else passed)."""
        if self.sft_dataset_sha256 != dataset_sha256:
            return f"{source} describes another version of {dataset}: re-materialize qc_summary first"
        failed = self.failures()
        if self.test_overlap.count:
            failed.append(f"test_overlap = {self.test_overlap.count} (needs 0)")
        if failed:
            return (
                "refusing to train on a dataset that failed QC: " + "; ".join(failed) + ". Open the failed "
                "qc_summary checks in the UI for the flagged examples."
            )
        if self.test_set_sha256 != test_sha256():
            return f"{source} was computed against another test set: re-materialize qc_summary first"
        return ""
