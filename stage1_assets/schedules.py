"""Scheduled shard backfill: on each tick, launch runs only for shards that are missing or failed."""

import os

import dagster as dg

from .assets.scale_shards import SHARD_PARTITIONS, scale_shards
from .k8s import GPU_TAGS
from .runs import in_flight_partitions

# how often the schedule looks for missing shards (a cron string; every 15 minutes by default)
MISSING_SHARDS_CRON = os.environ.get("STAGE1_MISSING_SHARDS_CRON", "*/15 * * * *")

SHARD_ASSET = dg.AssetKey("scale_shards")

scale_shards_job = dg.define_asset_job(
    "scale_shards_job",
    selection=[scale_shards],
    partitions_def=SHARD_PARTITIONS,
    description="Generate one scale shard (backfill it over all or some partitions).",
    tags=GPU_TAGS,  # run tags too: on Kubernetes each run's pod asks for a GPU (stage1_assets/k8s.py)
)
training_job = dg.define_asset_job(
    "training_job",
    selection=["adapter_checkpoint"],
    description="Train the adapter (on Kubernetes, in a pod with a GPU).",
    tags=GPU_TAGS,
)
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=["eval_report"],
    description="Evaluate base vs base+adapter (on Kubernetes, in a pod with a GPU).",
    tags=GPU_TAGS,
)


def shards_to_launch(instance: dg.DagsterInstance) -> list[str]:
    """Shards with no successful materialization and no live run queued or in progress.

    A shard whose last run failed has no materialization, so it is launched again (and resumes
    from its checkpointed batches); a shard already running is left alone. A run that storage still
    calls STARTED but whose process died (killed, its host lost) is not in flight: its shard is
    launched again (stage1_assets/runs.py).
    """
    done = instance.get_materialized_partitions(SHARD_ASSET)
    in_flight = in_flight_partitions(instance)  # runs of scale_shards_job, and of a shard launched any other way
    return [k for k in SHARD_PARTITIONS.get_partition_keys() if k not in done and k not in in_flight]


@dg.schedule(
    job=scale_shards_job,
    cron_schedule=MISSING_SHARDS_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every 15 minutes (STAGE1_MISSING_SHARDS_CRON), launch a run for each shard that is missing, failed "
    "or whose run died (turn on in the UI).",
)
def missing_shards_schedule(context: dg.ScheduleEvaluationContext):
    keys = shards_to_launch(context.instance)
    if not keys:
        return dg.SkipReason("every shard is materialized or has a live run in flight")
    # a run key per shard: Dagster requires one when a tick requests several runs
    return [dg.RunRequest(run_key=k, partition_key=k, tags={"stage1/trigger": "missing_shards_schedule"}) for k in keys]
