"""Scheduled shard backfill: on each tick, launch runs only for shards that are missing or failed."""

import os

import dagster as dg

from .jobs import scale_shards_job
from .partitions import SHARD_ASSET, SHARD_PARTITIONS, check_shard_keys
from .runs import in_flight_partitions

# how often the schedule looks for missing shards (a cron string; every 15 minutes by default)
MISSING_SHARDS_CRON = os.environ.get("STAGE1_MISSING_SHARDS_CRON", "*/15 * * * *")


def shards_to_launch(instance: dg.DagsterInstance) -> list[str]:
    """Shards with no successful materialization and no live run queued or in progress.

    A shard whose last run failed has no materialization, so it is launched again (and resumes
    from its checkpointed batches); a shard already running is left alone. A run that storage still
    calls STARTED but whose process died (killed, its host lost) is not in flight: its shard is
    launched again (stage1_assets/runs.py).
    """
    check_shard_keys(instance)  # an instance of another profile's keys: a failed tick that says so
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
