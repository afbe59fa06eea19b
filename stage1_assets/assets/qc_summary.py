"""`qc_summary`: the five QC metrics over every generated pair, overall and per shard, plus test overlap."""

import time

import dagster as dg

from ..config import QCConfig
from ..core import layout, plots
from ..core.artifacts import manifest_path
from ..core.io import content_hash, read_jsonl
from ..core.overlap_audit import audit_overlap
from ..core.qc import qc_by_group
from ..core.qc import qc_summary as compute_qc
from ..core.report import markdown_table
from ..core.shards import SHARD_ROW_TYPES, read_shard
from ..resources import ProvenanceResource, Stage1Paths
from .qc_checks import qc_check_results, qc_check_specs
from .scale_shards import SHARD_PARTITIONS


@dg.asset(
    deps=["sft_dataset", "scale_shards", "test_instructions"],
    group_name="scale",
    kinds={"json", "polars"},
    owners=["team:stage1"],
    tags={"stage": "qc"},
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
    started = time.perf_counter()
    keys = SHARD_PARTITIONS.get_partition_keys()
    shard_paths = [paths.fetch(*layout.shard_pairs(k)) for k in keys]
    for path in shard_paths:
        paths.store().fetch(manifest_path(path))
    # every shard checked against its manifest (hash, rows), then each row for the fields QC reads
    shard_types = SHARD_ROW_TYPES | {"instruction": str, "finish_reason": str, "response_tokens": int}
    rows = [r for path in shard_paths for r in read_shard(path, shard_types)]
    sft_path = paths.fetch_verified(layout.SFT_DATASET, producer="sft_dataset")
    sft_rows = read_jsonl(sft_path, required=("instruction", "response"))
    test_path = paths.fetch_verified(layout.TEST_SET, producer="test_instructions")
    read_jsonl(test_path, required=("instruction",))  # refuses a malformed test set by file and line
    # an independent re-derivation (SQL), not the index the merge filtered with: it would find nothing
    by_id = {str(r["id"]): r for r in sft_rows}
    overlaps = [
        {"id": o["id"], "instruction": by_id[o["id"]]["instruction"], "field": o["field"],
         "test_instruction": o["test_instruction"], "why": o["why"]}
        for o in audit_overlap(sft_path, test_path)
    ]  # fmt: skip
    overlapping_rows = len({o["id"] for o in overlaps})
    summary = compute_qc(rows, config)
    summary["per_shard"] = {
        k: {m: v["value"] for m, v in s["metrics"].items()} | {"pairs": s["pairs"], "passed": s["passed"]}
        for k, s in qc_by_group(rows, config, "shard").items()
    }
    summary["test_overlap"] = {
        "count": overlapping_rows, "method": "duckdb-sql-audit", "examples": overlaps[:10], "sft_rows": len(sft_rows)
    }
    summary["sft_dataset_sha256"] = content_hash(sft_path)
    summary["test_set_sha256"] = content_hash(test_path)
    target = paths.path(layout.QC_SUMMARY)
    sft_ids = {r["id"] for r in sft_rows}
    png = plots.histogram(
        {"all generated": [r["response_tokens"] for r in rows],
         "in SFT dataset": [r["response_tokens"] for r in rows if r["id"] in sft_ids]},
        "response tokens",
    )  # fmt: skip
    with paths.staging() as staging:  # visible only together with the provenance record
        staging.write_bytes(paths.path(layout.QC_PLOT), png)
        staging.write_json(target, summary)
        staging.manifest(target, "qc_summary")
        summary_hash = staging.hash(target)
        provenance.commit(
            context,
            started,
            staging,
            paths,
            inputs={"sft_dataset": summary["sft_dataset_sha256"], "test_instructions": summary["test_set_sha256"]},
            outputs={"qc_summary": target},
            params=config.model_dump(),
            row_count=len(rows),
            metrics={m: v["value"] for m, v in summary["metrics"].items()} | {"test_overlap": overlapping_rows},
        )
    per_shard = [{"shard": k, **v} for k, v in summary["per_shard"].items()]
    yield dg.MaterializeResult(
        metadata={
            "pairs": len(rows),
            "sft_rows": len(sft_rows),
            "passed": summary["passed"] and not overlaps,
            "path": dg.MetadataValue.path(paths.location(target)),
            "per_shard": dg.MetadataValue.md(markdown_table(per_shard, list(per_shard[0]))),
            "response_lengths": dg.MetadataValue.md(plots.markdown_image(png, "response lengths")),
        },
        data_version=dg.DataVersion(summary_hash[:16]),
    )
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
