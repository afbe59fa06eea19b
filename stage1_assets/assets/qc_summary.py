"""`qc_summary`: the five QC metrics over every generated pair, overall and per shard, plus test overlap."""

import time

import dagster as dg

from ..config import QCConfig
from ..core import plots
from ..core.io import atomic_write_bytes, atomic_write_json, read_jsonl, sha256_file
from ..core.merge import TestSetIndex
from ..core.qc import qc_by_group
from ..core.qc import qc_summary as compute_qc
from ..core.report import markdown_table
from ..core.shards import read_rows
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
            description="No SFT pair may overlap the held-out test set (13-word n-gram or near-duplicate): "
            "the count must be 0.",
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
    rows = [r for k in keys for r in read_rows(paths.fetch("shards", k, "pairs.jsonl"))]
    sft_path = paths.fetch("stage1_sft_data.jsonl")
    sft_rows = read_jsonl(sft_path, required=("instruction", "response"))
    test_path = paths.fetch("test_instructions.jsonl")
    index = TestSetIndex([r["instruction"] for r in read_jsonl(test_path, required=("instruction",))])
    overlaps = [
        {"id": r["id"], "instruction": r["instruction"], "response_excerpt": r["response"][:160], "why": why}
        for r in sft_rows
        if (why := index.contamination(r["instruction"], r["response"]))
    ]
    summary = compute_qc(rows, config)
    summary["per_shard"] = {
        k: {m: v["value"] for m, v in s["metrics"].items()} | {"pairs": s["pairs"], "passed": s["passed"]}
        for k, s in qc_by_group(rows, config, "shard").items()
    }
    summary["test_overlap"] = {"count": len(overlaps), "examples": overlaps[:10], "sft_rows": len(sft_rows)}
    summary["sft_dataset_sha256"] = sha256_file(sft_path)
    summary["test_set_sha256"] = sha256_file(test_path)
    target = atomic_write_json(paths.path("qc_summary.json"), summary)
    sft_ids = {r["id"] for r in sft_rows}
    png = plots.histogram(
        {"all generated": [r["response_tokens"] for r in rows],
         "in SFT dataset": [r["response_tokens"] for r in rows if r["id"] in sft_ids]},
        "response tokens",
    )  # fmt: skip
    atomic_write_bytes(paths.path("qc_response_lengths.png"), png)
    paths.publish(paths.path("qc_response_lengths.png"), target)
    content_hash = sha256_file(target)
    provenance.record(
        context,
        started,
        inputs={"sft_dataset": summary["sft_dataset_sha256"], "test_instructions": summary["test_set_sha256"]},
        outputs={"qc_summary": (paths.location(target), content_hash)},
        params=config.model_dump(),
        row_count=len(rows),
        metrics={m: v["value"] for m, v in summary["metrics"].items()} | {"test_overlap": len(overlaps)},
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
        data_version=dg.DataVersion(content_hash[:16]),
    )
    yield from qc_check_results("qc_summary", summary)
    yield dg.AssetCheckResult(
        check_name="test_overlap",
        passed=not overlaps,
        metadata={
            "value": len(overlaps),
            "threshold": 0,
            "flagged_examples": dg.MetadataValue.md(
                markdown_table(overlaps[:10], ["id", "instruction", "response_excerpt", "why"])
            ),
        },
    )
