"""`qc_summary`: the five QC metrics over every generated pair, overall and per shard, plus test overlap."""

import dagster as dg

from ..config import QCConfig
from ..core import layout, plots
from ..core.io import content_hash, read_jsonl
from ..core.overlap_audit import audit_overlap
from ..core.qc import DatasetQCSummary, qc_by_group
from ..core.qc import qc_summary as compute_qc
from ..core.report import markdown_table
from ..core.shards import SHARD_ROW_TYPES, read_shard
from ..materialize import Step, stage1_asset
from ..partitions import finished_shards
from ..resources import ProvenanceResource, Stage1Paths
from .qc_checks import qc_check_results, qc_check_specs


@stage1_asset(
    stage="qc",
    group="scale",
    kinds={"json", "polars"},
    deps=["sft_dataset", "scale_shards", "test_instructions"],
    check_specs=[
        *qc_check_specs("qc_summary"),
        dg.AssetCheckSpec(
            "test_overlap",
            asset="qc_summary",
            blocking=True,
            description="No SFT pair may overlap the held-out test set (13-word n-gram, identical or near-duplicate "
            "instruction), recomputed in SQL independently of the merge's filter: the count must be 0.",
        ),
    ],
    description=(
        "QC of the scale data (`data/qc_summary.json`): the five metrics recomputed on all generated pairs, "
        "overall and per shard, and the SFT dataset's overlap with the held-out set. Blocking checks gate training."
    ),
)
def qc_summary(context: dg.AssetExecutionContext, config: QCConfig, paths: Stage1Paths, provenance: ProvenanceResource):
    step = Step(context, paths, provenance)
    shard_paths = finished_shards(paths, context.instance).values()
    # every shard checked against its manifest (hash, rows), then each row for the fields QC reads
    shard_types = SHARD_ROW_TYPES | {"instruction": str, "finish_reason": str, "response_tokens": int}
    rows = [r for path in shard_paths for r in read_shard(path, shard_types)]
    sft_path = paths.fetch_verified(layout.SFT_DATASET, producer="sft_dataset")
    sft_rows = read_jsonl(sft_path, required=("instruction", "response"))
    test_path, _ = paths.test_set()  # refuses a malformed test set by file and line
    # an independent re-derivation (SQL), not the index the merge filtered with: it would find nothing
    by_id = {str(r["id"]): r for r in sft_rows}
    overlaps = [
        {"id": o["id"], "instruction": by_id[o["id"]]["instruction"], "field": o["field"],
         "test_instruction": o["test_instruction"], "why": o["why"]}
        for o in audit_overlap(sft_path, test_path)
    ]  # fmt: skip
    overlapping_rows = len({o["id"] for o in overlaps})
    target = paths.path(layout.QC_SUMMARY)
    per_shard = {
        k: {m: v["value"] for m, v in s["metrics"].items()} | {"pairs": s["pairs"], "passed": s["passed"]}
        for k, s in qc_by_group(rows, config, "shard").items()
    }
    test_overlap = {"count": overlapping_rows, "method": "duckdb-sql-audit", "examples": overlaps[:10],
                    "sft_rows": len(sft_rows)}  # fmt: skip
    summary = DatasetQCSummary.from_dict(compute_qc(rows, config) | {
        "per_shard": per_shard, "test_overlap": test_overlap, "sft_dataset_sha256": content_hash(sft_path),
        "test_set_sha256": content_hash(test_path),
    }, f"{target} (being written)")  # fmt: skip
    sft_ids = {r["id"] for r in sft_rows}
    png = plots.histogram(
        {"all generated": [r["response_tokens"] for r in rows],
         "in SFT dataset": [r["response_tokens"] for r in rows if r["id"] in sft_ids]},
        "response tokens",
    )  # fmt: skip
    with paths.staging() as staging:  # visible only together with the provenance record
        staging.write_bytes(paths.path(layout.QC_PLOT), png)
        staging.write_json(target, summary.to_dict())
        staging.manifest(target, "qc_summary")
        shard_table = [{"shard": k, **v} for k, v in per_shard.items()]
        metadata = {
            "pairs": len(rows),
            "sft_rows": len(sft_rows),
            "passed": summary.passed and not overlaps,
            "path": dg.MetadataValue.path(paths.location(target)),
            "per_shard": dg.MetadataValue.md(markdown_table(shard_table, list(shard_table[0]))),
            "response_lengths": dg.MetadataValue.md(plots.markdown_image(png, "response lengths")),
        }
        result = step.materialized(
            staging, staging.hash(target), metadata, outputs={"qc_summary": target}, params=config.model_dump(),
            inputs={"sft_dataset": summary.sft_dataset_sha256, "test_instructions": summary.test_set_sha256},
            row_count=len(rows), metrics={m: v.value for m, v in summary.metrics.items()}
            | {"test_overlap": overlapping_rows},
        )  # fmt: skip
    yield result
    yield from qc_check_results("qc_summary", summary)
    yield dg.AssetCheckResult(
        check_name="test_overlap",
        passed=not overlaps,
        metadata={
            "value": overlapping_rows,
            "threshold": 0,
            "method": "DuckDB SQL audit of the merged file against the test set (n-grams, exact, jaccard)",
            "flagged_examples": dg.MetadataValue.md(
                markdown_table(overlaps[:10], ["id", "field", "instruction", "test_instruction", "why"])
            ),
        },
    )
