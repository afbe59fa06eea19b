"""Dead runs: a shard run killed mid-shard (SIGKILL to its process group) is failed, its shard runs again.

Through Dagster itself, as a user runs it: `dagster asset materialize` (README: Shards and backfills)
on the repository's dagster.yaml, then `dagster-daemon run` with the schedule turned on. Two shard
runs are killed after their first checkpointed batch. The README's command re-runs one of them at
once: it must proceed (not wait on the dead run's pool slot) and say it resumed. The daemon must
mark the dead runs failed, and the schedule must relaunch the other shard, which resumes too.
The tiny random model keeps it fast: its shards' instruction stage is seeded (see support.py).
"""

import dataclasses
import json
import subprocess
import time

import dagster as dg
import pytest

from stage1_assets.core import liveness
from stage1_assets.core.model_loader import fingerprint_dir
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.schedules import missing_shards_schedule, scale_shards_job
from stage1_assets.sensors import dead_run_sensor

from .support import (
    BIN,
    REPO,
    TINY_SHARD_PARAMS,
    Logged,
    dagster_env,
    kill_group,
    materialize_cli,
    open_instance,
    passing_pilot,
    repo_instance_home,
    run_failure_message,
    runs_of,
    seed_shard_instructions,
    shard_config,
    write_test_set,
)

COUNT = 16  # the `local` profile's shard size (a scheduled run has no run config)
PARAMS = dataclasses.replace(TINY_SHARD_PARAMS, batch_size=1)  # 16 checkpoints: the kill lands long before the end
RERUN, SCHEDULED = "shard-001", "shard-002"


def wait_until(condition, what: str, timeout_s: float, procs: dict[str, Logged] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}) before {what}:\n{proc.output()[-4000:]}")
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {name}\n{proc.output()[-3000:]}" for name, proc in (procs or {}).items())
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{logs}")
        time.sleep(0.2)


def shard_records(data, key: str) -> list[dict]:
    rows = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT run_id, metrics_json FROM records WHERE asset_key = 'scale_shards' AND partition_key = $1 "
        "ORDER BY recorded_at",
        [key],
    )
    return [{"run_id": r["run_id"], **json.loads(r["metrics_json"])} for r in rows]


@pytest.mark.slow
def test_killed_shard_runs_are_failed_rerun_at_once_and_relaunched_by_the_schedule(tmp_path, tiny_model_dir):
    data, models = tmp_path / "data", tmp_path / "models"
    fingerprint = fingerprint_dir(tiny_model_dir)
    write_test_set(data)
    passing_pilot(data, fingerprint, PARAMS)
    for key in (RERUN, SCHEDULED):
        seed_shard_instructions(data, key, COUNT, fingerprint, params=PARAMS)
    home = repo_instance_home(tmp_path)
    # the schedule ticks every minute here (every 15 by default); daemon-launched runs get the tiny model too
    env = dagster_env(home, data, models, STAGE1_MISSING_SHARDS_CRON="* * * * *",
                      STAGE1_MODEL_SOURCE=str(tiny_model_dir))  # fmt: skip
    config = shard_config(tiny_model_dir)

    # 1. two shard runs, each SIGKILLed (with its step process) once its first batch is checkpointed
    logs = tmp_path / "logs"
    procs = {key: materialize_cli("scale_shards", env, config, logs / f"{key}-killed.log", partition=key)
             for key in (RERUN, SCHEDULED)}  # fmt: skip
    for key, proc in procs.items():
        wait_until(lambda k=key: any((data / "shards" / k / "batches").glob("batch-*.jsonl")),
                   f"{key}'s first checkpoint", 300, {key: proc})  # fmt: skip
        kill_group(proc)
    batches_before = {k: len(list((data / "shards" / k / "batches").glob("batch-*.jsonl"))) for k in procs}
    killed = {k: [r.run_id for r in runs_of(home, k)] for k in procs}
    assert all(len(ids) == 1 for ids in killed.values())
    assert {r.status for k in procs for r in runs_of(home, k)} == {dg.DagsterRunStatus.STARTED}, "dead, yet STARTED"
    assert not (data / "shards" / RERUN / "pairs.jsonl").exists()
    with open_instance(home) as instance:  # the only missing shards are the two killed ones
        instance.report_runless_asset_event(dg.AssetMaterialization("scale_shards", partition="shard-000"))

    daemon = Logged([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], logs / "daemon.log", cwd=REPO,
                    env=env)  # fmt: skip
    try:
        subprocess.run([str(BIN / "dagster"), "schedule", "start", "missing_shards_schedule", "-w", "workspace.yaml"],
                       cwd=REPO, env=env, check=True, capture_output=True, timeout=180)  # fmt: skip

        # 2. the README's command again, at once: it proceeds, says it resumed, and records how much it reused
        rerun = materialize_cli("scale_shards", env, config, logs / f"{RERUN}-rerun.log", partition=RERUN)
        out = rerun.finish(timeout=300)
        assert rerun.returncode == 0, out[-4000:]
        assert "resuming an interrupted attempt" in out and f"{batches_before[RERUN]} of 16 completed batches" in out
        [record] = shard_records(data, RERUN)
        assert record["resumed"] and record["resumed_batches"] == batches_before[RERUN] >= 1
        assert record["resumed_batches"] + record["generated_batches"] == record["total_batches"] == 16

        # 3. the daemon marks the dead runs failed, and the schedule relaunches the other shard, which resumes
        def settled() -> bool:
            with open_instance(home) as instance:
                done = instance.get_materialized_partitions(dg.AssetKey("scale_shards"))
                statuses = [instance.get_run_by_id(i).status for ids in killed.values() for i in ids]
            finished = [r for r in runs_of(home, SCHEDULED) if r.run_id not in killed[SCHEDULED] and r.is_finished]
            return {RERUN, SCHEDULED} <= done and set(statuses) == {dg.DagsterRunStatus.FAILURE} and bool(finished)

        wait_until(settled, "the dead runs failed and the schedule's run of the other shard done", 420,
                   {"dagster-daemon": daemon})  # fmt: skip
    finally:
        kill_group(daemon)

    for [run_id] in killed.values():
        message = run_failure_message(home, run_id)
        assert "Marked failed by stage1" in message and "run worker" in message and "is gone" in message, message
    relaunched = [r for r in runs_of(home, SCHEDULED) if r.run_id not in killed[SCHEDULED]]
    assert [r.tags.get("stage1/trigger") for r in relaunched] == ["missing_shards_schedule"]
    assert relaunched[0].status == dg.DagsterRunStatus.SUCCESS
    [record] = shard_records(data, SCHEDULED)
    assert record["run_id"] == relaunched[0].run_id
    assert record["resumed"] and record["resumed_batches"] >= batches_before[SCHEDULED] >= 1
    for key in (RERUN, SCHEDULED):
        ids = [json.loads(line)["id"] for line in (data / "shards" / key / "pairs.jsonl").read_text().splitlines()]
        assert ids == [f"{key}-{i:06d}" for i in range(COUNT)]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_schedule_and_the_sensor_tell_dead_runs_from_live_ones(tmp_path):
    """Fabricated STARTED runs: dead or alive on this host, silent or beating elsewhere, and one not started yet."""
    now = float(int(time.time()))  # heartbeats are whole seconds
    here = liveness.identity()
    dead = {**liveness.identity(_dead_pid()), "started": None}
    elsewhere = {"host": "gpu-host-7/boot", "pid": 4242, "started": now - 5000}
    cases = {  # partition: (status, tags, expected to be relaunched)
        "shard-000": (dg.DagsterRunStatus.STARTED, {liveness.WORKER_TAG: json.dumps(dead)}, True),
        "shard-001": (dg.DagsterRunStatus.STARTED, {liveness.WORKER_TAG: json.dumps(here)}, False),
        "shard-002": (dg.DagsterRunStatus.NOT_STARTED, {}, False),  # launched, not started yet
    }
    remote = {  # on another host: only the heartbeat can tell
        "beating": {liveness.WORKER_TAG: json.dumps(elsewhere), liveness.HEARTBEAT_TAG: str(int(now - 20))},
        "silent": {liveness.WORKER_TAG: json.dumps(elsewhere), liveness.HEARTBEAT_TAG: str(int(now - 4000))},
    }
    assert not liveness.run_verdict(remote["beating"], now - 5000, now).dead
    verdict = liveness.run_verdict(remote["silent"], now - 5000, now)
    assert verdict.dead and "no heartbeat or event for 4000 s" in verdict.reason
    assert liveness.run_verdict({liveness.WORKER_TAG: json.dumps(dead)}, now, now).dead, "no grace on its own host"

    with open_instance(tmp_path) as instance:
        job = defs.resolve_job_def(scale_shards_job.name)
        runs = {
            key: instance.create_run_for_job(job, tags={"dagster/partition": key, **tags}, status=status)
            for key, (status, tags, _) in cases.items()
        }
        context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def())
        requests = missing_shards_schedule.evaluate_tick(context).run_requests
        assert [r.partition_key for r in requests] == [k for k, (*_, relaunch) in cases.items() if relaunch]

        dead_run_sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        statuses = {key: instance.get_run_by_id(run.run_id).status for key, run in runs.items()}
        assert statuses == {"shard-000": dg.DagsterRunStatus.FAILURE, "shard-001": dg.DagsterRunStatus.STARTED,
                            "shard-002": dg.DagsterRunStatus.NOT_STARTED}  # fmt: skip
        [failure] = instance.all_logs(runs["shard-000"].run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        message = failure.message
        assert f"its run worker (pid {dead['pid']} on " in message and "is gone" in message
