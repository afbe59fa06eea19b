"""`scale_shards`: generation at scale, one partition per shard, resumable, with the pilot's parameters."""

import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import PROFILE
from ..core import layout, pilot, prompts
from ..core.artifacts import Staging
from ..core.config import CriticParams, InstructionSampling, ResponseSampling
from ..core.critic import critic_fingerprint
from ..core.io import InputFileError, content_hash, field_problem, read_jsonl
from ..core.pairs import GenerationParams
from ..core.report import markdown_table
from ..core.shards import ShardResult, run_shard, shard_index, shard_keys, shard_lock, shard_seed, shard_sizes
from ..k8s import GPU_TAGS
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths
from ..runs import fail_dead_runs

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
    overwrite: bool = Field(
        default=False,
        description="Replace a finished shard made with other parameters (it is kept under "
        "`superseded/<spec hash>/` in the shard's folder). Without it such a run is refused and changes nothing.",
    )


def session_manifest(pilot_dir: Path, iteration: str | None, fingerprint: str) -> dict:
    """The pilot manifest a shard must reuse; refuses failed pilots and other models.

    The chosen manifest is checked against its sidecar (what the pilot's commit wrote): one edited or
    cut short since is refused, naming the file and both hashes.
    """
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
    manifest = pilot.read_manifest(pilot_dir / manifest["iteration"] / pilot.MANIFEST, check=True)
    if manifest.get("critic_version") != critic_fingerprint():
        raise dg.Failure(
            f"pilot iteration {manifest['iteration']} was scored by critic {manifest.get('critic_version')!r}, but "
            f"this code's critic is {critic_fingerprint()!r}: shards must score as their pilot did; re-run the "
            "pilot first"
        )
    if manifest["model_fingerprint"] != fingerprint:
        raise dg.Failure(
            f"pilot iteration {manifest['iteration']} was generated with model {manifest['model_fingerprint'][:16]}…, "
            f"but the current base model is {fingerprint[:16]}…; re-run the pilot on this model first"
        )
    return manifest


GENERATION_FIELDS = {"instruction": dict, "response": dict, "critic": dict, "batch_size": int}


def params_from_manifest(manifest: dict) -> GenerationParams:
    gen = manifest["generation"]
    for field, expected in GENERATION_FIELDS.items():
        problem = field_problem(gen, field, expected)
        if problem:
            raise InputFileError(f"pilot iteration {manifest['iteration']}: session manifest: generation {problem}")
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
    started = time.perf_counter()
    key = context.partition_key
    count = config.count or shard_sizes(PROFILE.total_pairs, PROFILE.num_shards)[shard_index(key)]
    test_path = paths.fetch_verified(layout.TEST_SET, producer="test_instructions")
    exclude = [r["instruction"] for r in read_jsonl(test_path, required=("instruction",))]
    lm = model.load()
    pilot_dir = paths.fetch_dir(layout.PILOT, pattern=f"*/{pilot.MANIFEST}*")  # manifests and their sidecars
    manifest = session_manifest(pilot_dir, config.pilot_iteration, lm.info.fingerprint)
    params = params_from_manifest(manifest)
    seed = shard_seed(config.seed_base, key)
    context.log.info(f"{key}: {count} pairs, seed {seed}, pilot iteration {manifest['iteration']}")
    # the store's checkpoints of this shard (from any host) are resumed; ours are published as they are written
    shard_dir = paths.fetch_dir("shards", key)
    inputs = {"base_model": lm.info.fingerprint, "pilot_manifest": manifest["pairs_sha256"],
              "test_instructions": content_hash(test_path)}  # fmt: skip
    run_params = params.as_dict() | {"seed": seed, "count": count, "pilot_iteration": manifest["iteration"]}

    def commit(result: ShardResult, staging: Staging) -> None:
        """The shard's files become visible together with its provenance record."""
        provenance.commit(
            context, started, staging, paths, inputs=inputs, outputs={"shard_pairs": result.pairs_path},
            model_fingerprint=lm.info.fingerprint, params=run_params, prompt_version=prompts.prompt_version(),
            row_count=len(result.rows), device=lm.info.device,
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
    wall = time.perf_counter() - started
    return dg.MaterializeResult(
        metadata={
            "row_count": len(rows),
            "accepted": accepted,
            "acceptance_rate": accepted / len(rows),
            "seed": seed,
            "pilot_iteration": manifest["iteration"],
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
        },
        data_version=dg.DataVersion(result.content_hash[:16]),
    )
