import dagster as dg
import pytest

from stage1_assets.config import PROFILE
from stage1_assets.core.config import PROFILES
from stage1_assets.core.shards import shard_sizes
from stage1_assets.definitions import defs
from stage1_assets.jobs import scale_shards_job
from stage1_assets.partitions import SHARD_PARTITIONS, ShardKeysChanged, check_shard_keys, shard_layout_metadata
from stage1_assets.resources import ProvenanceResource, Stage1Paths
from stage1_assets.schedules import missing_shards_schedule


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
    keys = [f"shard-{i:03d}" for i in range(PROFILE.num_shards)]  # one per shard of the profile, in order
    assert shards.partitions_def.get_partition_keys() == keys
    assert len(shard_sizes(PROFILE.total_pairs, len(keys))) == len(keys) and PROFILE.num_shards >= 3
    assert shards.op.pool == "gpu"
    assert defs.resolve_job_def("scale_shards_job").partitions_def.get_partition_keys() == keys
    assert defs.resolve_job_def("scale_shards_job").asset_layer.executable_asset_keys == {shards.key}


def test_an_instance_of_another_profiles_shard_keys_is_refused_by_every_shard_step(tmp_path):
    """Partition keys follow STAGE1_PROFILE; an instance that holds shards of another profile says so."""
    other = next(p for p in PROFILES.values() if p.num_shards != PROFILE.num_shards)
    with dg.instance_for_test() as instance:
        check_shard_keys(instance)  # empty: fine
        instance.report_runless_asset_event(
            dg.AssetMaterialization("scale_shards", partition="shard-000", metadata=shard_layout_metadata())
        )
        check_shard_keys(instance)  # this profile's own: fine
    with dg.instance_for_test() as instance:  # a bigger profile materialized a key this one does not have
        instance.report_runless_asset_event(dg.AssetMaterialization("scale_shards", partition="shard-999"))
        with pytest.raises(ShardKeysChanged, match=r"another profile: partitions \['shard-999'\]"):
            check_shard_keys(instance)
        # the schedule's tick fails with the same message instead of launching shards of the wrong keys
        with pytest.raises(dg.DagsterUserCodeExecutionError) as tick:
            missing_shards_schedule.evaluate_tick(context(instance))
        assert isinstance(tick.value.user_exception, ShardKeysChanged)
        assert "another DAGSTER_HOME" in str(tick.value.user_exception)
    with dg.instance_for_test() as instance:  # a profile with another number of shards, on keys we share
        metadata = {"profile": other.name, "num_shards": other.num_shards}
        instance.report_runless_asset_event(dg.AssetMaterialization("scale_shards", partition="shard-000",
                                                                    metadata=metadata))  # fmt: skip
        with pytest.raises(ShardKeysChanged, match=rf"{other.num_shards} shards \(profile '{other.name}'\)"):
            check_shard_keys(instance)
        # the steps that read every shard refuse it too, before reading anything
        resources = {"paths": Stage1Paths(data_dir=str(tmp_path)),
                     "provenance": ProvenanceResource(db_path=str(tmp_path / "prov.duckdb"))}  # fmt: skip
        result = dg.materialize([defs.get_assets_def("sft_dataset")], instance=instance, resources=resources,
                                raise_on_error=False)  # fmt: skip
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert "another profile" in failure.step_failure_data.error.message
        assert not list(tmp_path.iterdir()), "refused before reading or writing anything"
