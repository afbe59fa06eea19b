"""`sft_dataset`: all shards merged, critic-accepted, deduplicated and decontaminated."""

import time

import dagster as dg
import polars as pl
from pydantic import Field

from ..config import PROFILE
from ..core.io import atomic_path, atomic_write_jsonl, read_jsonl, sha256_file
from ..core.merge import cost_summary, merge_shards
from ..core.report import markdown_table
from ..core.shards import read_rows
from ..resources import ProvenanceResource, Stage1Paths
from .scale_shards import SHARD_PARTITIONS

SFT_COLUMNS = ("id", "instruction", "response", "shard", "critic_score")


class SftDatasetConfig(dg.Config):
    price_per_accelerator_hour: float = Field(default=2.5, ge=0.0, description="Rented GPU price, per hour.")
    budget: float = Field(default=100.0, ge=0.0, description="Budget for all shards, same currency.")


def _shard_accelerator_seconds(provenance: ProvenanceResource) -> dict[str, float]:
    rows = provenance.store().query(
        """SELECT partition_key, arg_max(accelerator_seconds, recorded_at) AS seconds FROM records
           WHERE asset_key = 'scale_shards' AND kind = 'materialization' GROUP BY partition_key"""
    )
    return {r["partition_key"]: r["seconds"] or 0.0 for r in rows}


@dg.asset(
    deps=["scale_shards", "test_instructions"],
    group_name="scale",
    kinds={"jsonl", "parquet", "polars"},
    owners=["team:stage1"],
    tags={"stage": "dataset"},
    check_specs=[
        dg.AssetCheckSpec(
            "budget_projection",
            asset="sft_dataset",
            description="Warns when the projected accelerator spend for all shards exceeds the configured budget.",
        )
    ],
    description=(
        "The SFT dataset `data/stage1_sft_data.jsonl` (+ .parquet): every shard merged, critic-rejected pairs "
        "dropped, exact and near-duplicate instructions removed, and decontaminated against the held-out set "
        "(13-word n-gram or near-duplicate). Each removed row and its reason is in `data/sft_removed.jsonl`."
    ),
)
def sft_dataset(
    context: dg.AssetExecutionContext,
    config: SftDatasetConfig,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
):
    started = time.perf_counter()
    keys = SHARD_PARTITIONS.get_partition_keys()
    shard_paths = {k: paths.fetch("shards", k, "pairs.jsonl") for k in keys}  # from every host, via the store
    missing = [k for k, p in shard_paths.items() if not p.exists()]
    if missing:
        raise dg.Failure(f"shards not materialized yet: {missing}; backfill scale_shards first")
    rows = [row for k in keys for row in read_rows(shard_paths[k])]
    test_path = paths.fetch("test_instructions.jsonl")
    tests = [r["instruction"] for r in read_jsonl(test_path, required=("instruction",))]
    merged = merge_shards(rows, tests)
    kept = [{c: r[c] for c in SFT_COLUMNS} for r in merged.kept]
    target = atomic_write_jsonl(paths.path("stage1_sft_data.jsonl"), kept)
    with atomic_path(paths.path("stage1_sft_data.parquet")) as tmp:
        pl.DataFrame(
            kept, schema={c: pl.Float64 if c == "critic_score" else pl.String for c in SFT_COLUMNS}
        ).write_parquet(tmp)
    atomic_write_jsonl(paths.path("sft_removed.jsonl"), merged.removed)
    paths.publish(paths.path("stage1_sft_data.parquet"), paths.path("sft_removed.jsonl"), target)
    content_hash = sha256_file(target)
    cost = cost_summary(_shard_accelerator_seconds(provenance), len(keys), len(kept),
                        config.price_per_accelerator_hour, config.budget)  # fmt: skip
    removed_by_step = merged.removed_by_step
    provenance.record(
        context,
        started,
        inputs={f"shard:{k}": sha256_file(p) for k, p in shard_paths.items()}
        | {"test_instructions": sha256_file(test_path)},
        outputs={"sft_dataset": (paths.location(target), content_hash)},
        params=config.model_dump() | {"profile": PROFILE.name},
        row_count=len(kept),
        metrics={"input_pairs": len(rows), "removed_by_step": removed_by_step, "cost": cost},
    )
    yield dg.MaterializeResult(
        metadata={
            "row_count": len(kept),
            "input_pairs": len(rows),
            "removed_critic_rejected": removed_by_step.get("critic_rejected", 0),
            "removed_duplicate": removed_by_step.get("duplicate", 0),
            "removed_test_overlap": removed_by_step.get("test_overlap", 0),
            "content_hash": content_hash,
            "path": dg.MetadataValue.path(paths.location(target)),
            "spend_so_far": cost["spend"],
            "spend_per_1000_accepted": cost["spend_per_1000_accepted"] or 0.0,
            "projected_total_spend": cost["projected_total"],
            "accelerator_seconds": cost["accelerator_seconds"],
            "preview": dg.MetadataValue.md(markdown_table(kept[:8], ["id", "instruction", "response"])),
            "removed_examples": dg.MetadataValue.md(
                markdown_table(merged.removed[:10], ["id", "step", "why", "instruction"])
            ),
        },
        data_version=dg.DataVersion(content_hash[:16]),
    )
    yield dg.AssetCheckResult(
        check_name="budget_projection",
        passed=cost["within_budget"],
        severity=dg.AssetCheckSeverity.WARN,
        description=f"projected {cost['projected_total']} vs budget {cost['budget']}",
        metadata={k: v for k, v in cost.items() if v is not None and not isinstance(v, bool)},
    )
