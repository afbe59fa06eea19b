"""`dead_run_sensor`: in the daemon, every 30 s, mark STARTED runs whose process is gone as failed.

Dagster's own run monitoring cannot see these with the default run launcher, or for runs started
by `dagster asset materialize` (README: On failure; stage1_assets/runs.py says how a dead run is
recognized). Once a run is failed, Dagster's run monitoring frees any concurrency slot it held
(`free_slots_after_run_end_seconds`), the queue admits the next run of its pool, and
`missing_shards_schedule` relaunches its shard. On by default; nothing to configure.
"""

import dagster as dg

from .runs import fail_dead_runs


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 30 s, marks failed each STARTED run whose run worker died (killed, out of memory, host lost), "
    "with the reason; its pool slot is then freed and its shard can run again.",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    failed = fail_dead_runs(context.instance, log=context.log, by=" (dead_run_sensor)")
    if failed:
        return dg.SkipReason(f"marked {len(failed)} dead run(s) failed: {', '.join(failed)}")
    return dg.SkipReason("no dead runs")
