"""`sft_dataset`: all shards merged, critic-accepted, deduplicated and decontaminated."""

import dagster as dg
import polars as pl
from pydantic import Field

from ..config import PROFILE
from ..core import layout
from ..core.artifacts import read_manifest
from ..core.io import content_hash
from ..core.merge import accelerator_seconds, cost_summary, merge_shards
from ..core.report import markdown_table
from ..core.shards import PRODUCER as SHARD_PRODUCER
from ..core.shards import read_shard
from ..materialize import Step, stage1_asset
from ..partitions import finished_shards
from ..resources import ProvenanceResource, Stage1Paths

SFT_COLUMNS = ("id", "instruction", "response", "shard", "critic_score")


class SftDatasetConfig(dg.Config):
    price_per_accelerator_hour: float = Field(default=2.5, ge=0.0, description="Rented GPU price, per hour.")
    budget: float = Field(default=100.0, ge=0.0, description="Budget for all shards, same currency.")


@stage1_asset(
    stage="dataset",
    group="scale",
    kinds={"jsonl", "parquet", "polars"},
    deps=["scale_shards", "test_instructions"],
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
    step = Step(context, paths, provenance)
    shard_paths = finished_shards(paths, context.instance)  # from every host, via the store
    keys = list(shard_paths)
    # each shard is checked against the hash and row count its producer recorded, then parsed field by field
    rows = [row for k in keys for row in read_shard(shard_paths[k])]
    shard_manifests = {k: read_manifest(p, SHARD_PRODUCER) for k, p in shard_paths.items()}
    test_path, test_rows = paths.test_set()
    tests = [r["instruction"] for r in test_rows]
    merged = merge_shards(rows, tests)
    kept = [{c: r[c] for c in SFT_COLUMNS} for r in merged.kept]
    cost = cost_summary({k: accelerator_seconds(m) for k, m in shard_manifests.items()}, len(keys), len(kept),
                        config.price_per_accelerator_hour, config.budget)  # fmt: skip
    removed_by_step = merged.removed_by_step
    target = paths.path(layout.SFT_DATASET)
    with paths.staging() as staging:  # visible only together with the provenance record
        staging.write_jsonl(target, kept)
        with staging.writing(paths.path(layout.SFT_PARQUET)) as tmp:
            pl.DataFrame(
                kept, schema={c: pl.Float64 if c == "critic_score" else pl.String for c in SFT_COLUMNS}
            ).write_parquet(tmp)
        staging.write_jsonl(paths.path(layout.SFT_REMOVED), merged.removed)
        staging.manifest(target, "sft_dataset", rows=len(kept))
        dataset_hash = staging.hash(target)
        metadata = {
            "row_count": len(kept),
            "input_pairs": len(rows),
            "removed_critic_rejected": removed_by_step.get("critic_rejected", 0),
            "removed_duplicate": removed_by_step.get("duplicate", 0),
            "removed_test_overlap": removed_by_step.get("test_overlap", 0),
            "content_hash": dataset_hash,
            "path": dg.MetadataValue.path(paths.location(target)),
            "spend_so_far": cost["spend"],
            "spend_per_1000_accepted": cost["spend_per_1000_accepted"] or 0.0,
            "projected_total_spend": cost["projected_total"],
            "accelerator_seconds": cost["accelerator_seconds"],
            "preview": dg.MetadataValue.md(markdown_table(kept[:8], ["id", "instruction", "response"])),
            "removed_examples": dg.MetadataValue.md(
                markdown_table(merged.removed[:10], ["id", "step", "why", "instruction"])
            ),
        }
        result = step.materialized(
            staging, dataset_hash, metadata, inputs={f"shard:{k}": m["sha256"] for k, m in shard_manifests.items()}
            | {"test_instructions": content_hash(test_path)}, outputs={"sft_dataset": target},
            params=config.model_dump() | {"profile": PROFILE.name}, row_count=len(kept),
            metrics={"input_pairs": len(rows), "removed_by_step": removed_by_step, "cost": cost},
        )  # fmt: skip
    yield result
    yield dg.AssetCheckResult(
        check_name="budget_projection",
        passed=cost["within_budget"],
        severity=dg.AssetCheckSeverity.WARN,
        description=f"projected {cost['projected_total']} vs budget {cost['budget']}",
        metadata={k: v for k, v in cost.items() if v is not None and not isinstance(v, bool)},
    )
