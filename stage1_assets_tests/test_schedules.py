import dagster as dg

from stage1_assets.assets.scale_shards import SHARD_PARTITIONS
from stage1_assets.definitions import defs
from stage1_assets.schedules import missing_shards_schedule, scale_shards_job


def context(instance: dg.DagsterInstance) -> dg.ScheduleEvaluationContext:
    return dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def())


def test_schedule_requests_only_missing_or_failed_shards():
    keys = SHARD_PARTITIONS.get_partition_keys()
    assert len(keys) >= 3
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("scale_shards", partition=keys[0]))
        # a run already in progress for the second shard must not be launched twice
        job = defs.resolve_job_def(scale_shards_job.name)
        instance.create_run_for_job(job, tags={"dagster/partition": keys[1]}, status=dg.DagsterRunStatus.STARTED)
        # a failed run leaves its shard unmaterialized: it is launched again
        instance.create_run_for_job(job, tags={"dagster/partition": keys[2]}, status=dg.DagsterRunStatus.FAILURE)
        # evaluate_tick applies Dagster's own validation of the requests, as the daemon does
        result = missing_shards_schedule.evaluate_tick(context(instance))
        assert [r.partition_key for r in result.run_requests] == keys[2:]
        # the daemon refuses a tick with several requests unless each has its own run key
        run_keys = [r.run_key for r in result.run_requests]
        assert all(run_keys) and len(set(run_keys)) == len(run_keys)

        for key in keys:
            instance.report_runless_asset_event(dg.AssetMaterialization("scale_shards", partition=key))
        skipped = missing_shards_schedule.evaluate_tick(context(instance))
        assert skipped.skip_message and not skipped.run_requests


def test_shards_use_the_gpu_pool_and_a_partitioned_job():
    shards = defs.get_assets_def("scale_shards")
    assert shards.partitions_def == SHARD_PARTITIONS
    assert shards.op.pool == "gpu"
    assert defs.resolve_job_def("scale_shards_job").partitions_def == SHARD_PARTITIONS
