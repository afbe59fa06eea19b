"""`scale_shards`: generation at scale, one partition per shard, resumable, with the pilot's parameters."""

import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import PROFILE
from ..core import pilot, prompts
from ..core.config import CriticParams, InstructionSampling, ResponseSampling
from ..core.io import read_jsonl, sha256_file
from ..core.pairs import GenerationParams
from ..core.report import markdown_table
from ..core.shards import run_shard, shard_index, shard_keys, shard_seed, shard_sizes
from ..k8s import GPU_TAGS
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths

# Partition keys are fixed when the code location loads (STAGE1_PROFILE); keys hold no commas.
SHARD_PARTITIONS = dg.StaticPartitionsDefinition(shard_keys(PROFILE.num_shards))


class ScaleShardConfig(dg.Config):
    pilot_iteration: str | None = Field(
        default=None, description="Pilot iteration whose session manifest to reuse (default: latest that passed)."
    )
    seed_base: int = Field(default=100_000, description="Shard k uses seed seed_base + 1000 k.")
    count: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Pairs in this shard (default: the profile's split)."
    )


def session_manifest(pilot_dir: Path, iteration: str | None, fingerprint: str) -> dict:
    """The pilot manifest a shard must reuse; refuses failed pilots and other models."""
    if iteration is None:
        manifest = pilot.latest_passing_manifest(pilot_dir)
        if manifest is None:
            raise dg.Failure(
                f"no pilot iteration under {pilot_dir} passed its QC checks; materialize pilot_data "
                "(adjusting its run config) until one passes, then run the shards"
            )
    else:
        found = [m for m in pilot.manifests(pilot_dir) if m["iteration"] == iteration]
        if not found:
            raise dg.Failure(f"pilot iteration {iteration!r} does not exist under {pilot_dir}")
        manifest = found[0]
        if not manifest["checks_passed"]:
            raise dg.Failure(f"pilot iteration {iteration} failed its QC checks; shards refuse its parameters")
    if manifest["model_fingerprint"] != fingerprint:
        raise dg.Failure(
            f"pilot iteration {manifest['iteration']} was generated with model {manifest['model_fingerprint'][:16]}…, "
            f"but the current base model is {fingerprint[:16]}…; re-run the pilot on this model first"
        )
    return manifest


def params_from_manifest(manifest: dict) -> GenerationParams:
    gen = manifest["generation"]
    return GenerationParams(
        InstructionSampling(**gen["instruction"]),
        ResponseSampling(**gen["response"]),
        CriticParams(**gen["critic"]),
        gen["batch_size"],
    )


@dg.asset(
    partitions_def=SHARD_PARTITIONS,
    deps=["pilot_data", "test_instructions"],
    pool="gpu",
    group_name="scale",
    kinds={"jsonl", "parquet", "pytorch"},
    owners=["team:stage1"],
    tags={"stage": "scale"},
    op_tags=GPU_TAGS,
    description=(
        "One shard of scale generation per partition (`data/shards/<shard-key>/pairs.jsonl`, ids "
        "`shard-003-000117`), generated with exactly the parameters of the latest passing pilot's session "
        "manifest and a per-shard seed. Resumable: completed batches are checkpointed, so a killed run "
        "continues where it stopped. Runs in the `gpu` concurrency pool."
    ),
)
def scale_shards(
    context: dg.AssetExecutionContext,
    config: ScaleShardConfig,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
) -> dg.MaterializeResult:
    started = time.perf_counter()
    key = context.partition_key
    count = config.count or shard_sizes(PROFILE.total_pairs, PROFILE.num_shards)[shard_index(key)]
    test_path = paths.fetch("test_instructions.jsonl")
    exclude = [r["instruction"] for r in read_jsonl(test_path, required=("instruction",))]
    lm = model.load()
    pilot_dir = paths.fetch_dir("pilot", pattern=f"*/{pilot.MANIFEST}")
    manifest = session_manifest(pilot_dir, config.pilot_iteration, lm.info.fingerprint)
    params = params_from_manifest(manifest)
    seed = shard_seed(config.seed_base, key)
    context.log.info(f"{key}: {count} pairs, seed {seed}, pilot iteration {manifest['iteration']}")
    # the store's checkpoints of this shard (from any host) are resumed; ours are published as they are written
    shard_dir = paths.fetch_dir("shards", key)
    result = run_shard(lm, shard_dir, key, count, seed, params, exclude, on_change=paths.publish)
    rows = result.rows
    accepted = sum(r["accepted"] for r in rows)
    wall = time.perf_counter() - started
    provenance.record(
        context,
        started,
        inputs={
            "base_model": lm.info.fingerprint,
            "pilot_manifest": manifest["pairs_sha256"],
            "test_instructions": sha256_file(test_path),
        },  # fmt: skip
        outputs={"shard_pairs": (paths.location(result.pairs_path), result.content_hash)},
        model_fingerprint=lm.info.fingerprint,
        params=params.as_dict() | {"seed": seed, "count": count, "pilot_iteration": manifest["iteration"]},
        prompt_version=prompts.prompt_version(),
        row_count=len(rows),
        metrics={
            "accepted": accepted,
            "resumed_batches": result.resumed_batches,
            "generated_batches": result.generated_batches,
            "reused": result.reused,
        },  # fmt: skip
        device=lm.info.device,
    )
    return dg.MaterializeResult(
        metadata={
            "row_count": len(rows),
            "accepted": accepted,
            "acceptance_rate": accepted / len(rows),
            "seed": seed,
            "pilot_iteration": manifest["iteration"],
            "resumed_batches": result.resumed_batches,
            "generated_batches": result.generated_batches,
            "reused_existing_shard": result.reused,
            "pairs_per_second": len(rows) / wall if not result.reused else 0.0,
            "content_hash": result.content_hash,
            "path": dg.MetadataValue.path(paths.location(result.pairs_path)),
            "preview": dg.MetadataValue.md(
                markdown_table(rows[:5], ["id", "instruction", "response", "critic_score", "accepted"])
            ),
        },
        data_version=dg.DataVersion(result.content_hash[:16]),
    )
