"""`scale_shards`: generation at scale, one partition per shard, resumable, with the pilot's parameters."""

import time

import dagster as dg
from pydantic import Field

from ..config import PROFILE
from ..core import layout, pilot, prompts
from ..core.artifacts import Staging
from ..core.critic import critic_fingerprint
from ..core.io import content_hash
from ..core.report import markdown_table
from ..core.shards import ShardResult, run_shard, shard_index, shard_lock, shard_seed, shard_sizes
from ..materialize import Step, materialize_result, stage1_asset
from ..partitions import SHARD_PARTITIONS, check_shard_keys, shard_layout_metadata
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths
from ..runs import fail_dead_runs

__all__ = ["SHARD_PARTITIONS", "ScaleShardConfig", "scale_shards"]


class ScaleShardConfig(dg.Config):
    pilot_iteration: str | None = Field(
        default=None, description="Pilot iteration whose session manifest to reuse (default: latest that passed)."
    )
    seed_base: int = Field(default=100_000, description="Shard k uses seed seed_base + 1000 k.")
    count: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Pairs in this shard (default: the profile's split)."
    )
    overwrite: bool = Field(
        default=False,
        description="Replace a finished shard made with other parameters (it is kept under "
        "`superseded/<spec hash>/` in the shard's folder). Without it such a run is refused and changes nothing.",
    )


@stage1_asset(
    stage="scale",
    group="scale",
    kinds={"jsonl", "parquet", "pytorch"},
    gpu=True,
    partitions_def=SHARD_PARTITIONS,
    deps=["pilot_data", "test_instructions"],
    description=(
        "One shard of scale generation per partition (`data/shards/<shard-key>/pairs.jsonl`, ids "
        "`shard-003-000117`), generated with exactly the parameters of the latest passing pilot's session "
        "manifest and a per-shard seed. Resumable: completed batches are checkpointed, so a killed run "
        "continues where it stopped (metadata and provenance say how much it reused). A finished shard is reused "
        "only if whole; one made with other parameters is replaced only with `overwrite`. Runs in the `gpu` pool."
    ),
)
def scale_shards(
    context: dg.AssetExecutionContext,
    config: ScaleShardConfig,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
) -> dg.MaterializeResult:
    step = Step(context, paths, provenance)
    check_shard_keys(context.instance)
    key = context.partition_key
    count = config.count or shard_sizes(PROFILE.total_pairs, PROFILE.num_shards)[shard_index(key)]
    test_path, test_rows = paths.test_set()
    exclude = [r["instruction"] for r in test_rows]
    lm = model.load()
    pilot_dir = paths.fetch_dir(layout.PILOT, pattern=f"*/{pilot.MANIFEST}*")  # manifests and their sidecars
    try:
        manifest = pilot.session_for_shards(pilot_dir, config.pilot_iteration, lm.info.fingerprint,
                                            critic_fingerprint())  # fmt: skip
    except pilot.SessionRefused as exc:
        raise dg.Failure(str(exc)) from None
    params = manifest.generation
    seed = shard_seed(config.seed_base, key)
    context.log.info(f"{key}: {count} pairs, seed {seed}, pilot iteration {manifest.iteration}")
    # the store's checkpoints of this shard (from any host) are resumed; ours are published as they are written
    shard_dir = paths.fetch_dir(layout.SHARDS, key)
    inputs = {"base_model": lm.info.fingerprint, "pilot_manifest": manifest.pairs_sha256,
              "test_instructions": content_hash(test_path)}  # fmt: skip
    run_params = params.as_dict() | {"seed": seed, "count": count, "pilot_iteration": manifest.iteration}

    def commit(result: ShardResult, staging: Staging) -> None:
        """The shard's files become visible together with its provenance record."""
        step.commit(
            staging, model=lm.info, inputs=inputs, outputs={"shard_pairs": result.pairs_path}, params=run_params,
            prompt_version=prompts.prompt_version(), row_count=len(result.rows),
            metrics={"accepted": sum(r["accepted"] for r in result.rows), **result.summary()},
        )  # fmt: skip

    with shard_lock(shard_dir, key, label=f"run {context.run_id}"):
        # an earlier run of this shard whose process died still looks STARTED: say so, and mark it failed
        fail_dead_runs(context.instance, partition=key, exclude=context.run_id, log=context.log,
                       by=f" (run {context.run_id} of the same shard)")  # fmt: skip
        result = run_shard(lm, shard_dir, key, count, seed, params, exclude, on_change=paths.publish,
                           log=context.log, overwrite=config.overwrite, commit=commit)  # fmt: skip
    rows = result.rows
    accepted = sum(r["accepted"] for r in rows)
    wall = time.perf_counter() - step.started
    return materialize_result(
        result.content_hash,
        {
            "row_count": len(rows),
            "accepted": accepted,
            "acceptance_rate": accepted / len(rows),
            "seed": seed,
            "pilot_iteration": manifest.iteration,
            "resumed": result.resumed,
            "instructions_reused": result.instructions_reused,
            "resumed_batches": result.resumed_batches,
            "resumed_pairs": result.resumed_pairs,
            "generated_batches": result.generated_batches,
            "reused_existing_shard": result.reused,
            **({"set_aside": dg.MetadataValue.path(result.set_aside)} if result.set_aside else {}),
            **({"repaired": result.repaired} if result.repaired else {}),
            "pairs_per_second": len(rows) / wall if not result.reused else 0.0,
            "content_hash": result.content_hash,
            "path": dg.MetadataValue.path(paths.location(result.pairs_path)),
            "preview": dg.MetadataValue.md(
                markdown_table(rows[:5], ["id", "instruction", "response", "critic_score", "accepted"])
            ),
            **shard_layout_metadata(),  # which profile's keys this is (partitions.check_shard_keys)
        },
    )
