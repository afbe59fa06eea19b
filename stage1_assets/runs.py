"""Dead runs: which STARTED runs have no live process behind them, and what is done about them.

Dagster's run monitoring checks a run's worker only through run launchers that can
(`K8sRunLauncher`, …); the `DefaultRunLauncher` of a single host cannot, and a run started by
`dagster asset materialize` has no launcher at all. So every stage1 step records its run worker
(host, pid, process start time) and refreshes a heartbeat in run tags (`heartbeat`, used by the
`provenance` resource), and the judgement is `core/liveness.py`'s: certain on the worker's host,
by a stale heartbeat elsewhere.

* `dead_run_sensor` (stage1_assets/sensors.py, in the daemon) marks dead runs failed, with the
  reason, within a minute; Dagster's run monitoring then frees any pool slots they held
  (`free_slots_after_run_end_seconds` in dagster.yaml).
* `missing_shards_schedule` does not count a dead run as in flight, so it relaunches its shard.
* A new run of a shard marks an earlier, dead run of the same partition failed when it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

import dagster as dg

from .core import liveness

# a run in any of these will (or may still) produce its partition: queued or launched, and not finished
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
]


def _run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    """The pid of the process that owns the run: the one that reported RUN_START (else this one)."""
    with contextlib.suppress(Exception):
        conn = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1)
        for record in conn.records:
            event = record.event_log_entry.dagster_event
            if event is not None and event.pid:
                return int(event.pid)
    return os.getpid()


@contextlib.contextmanager
def heartbeat(instance: dg.DagsterInstance | None, run_id: str | None) -> Iterator[None]:
    """While a step runs: its run worker's identity in the run's tags, and a heartbeat every 30 s."""
    if instance is None or not run_id or instance.get_run_by_id(run_id) is None:
        yield
        return
    worker = liveness.identity(_run_worker_pid(instance, run_id))
    worker["step_pid"] = os.getpid()
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is no reason to fail the step
                instance.add_run_tags(run_id, {liveness.HEARTBEAT_TAG: str(int(time.time()))})
            if stop.wait(liveness.HEARTBEAT_SECONDS):
                return

    with contextlib.suppress(Exception):
        instance.add_run_tags(run_id, {liveness.WORKER_TAG: json.dumps(worker, sort_keys=True)})
    thread = threading.Thread(target=beat, name=f"stage1-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _last_event_at(instance: dg.DagsterInstance, run_id: str) -> float | None:
    with contextlib.suppress(Exception):
        conn = instance.get_records_for_run(run_id, limit=1, ascending=False)
        if conn.records:
            return conn.records[0].timestamp
    return None


def verdict(instance: dg.DagsterInstance, record: dg.RunRecord, now: float | None = None) -> liveness.Verdict:
    """Whether the run of `record` (STARTED in storage) has a live process behind it."""
    run = record.dagster_run
    if run.status != dg.DagsterRunStatus.STARTED:
        return liveness.Verdict(False, f"status {run.status.value}")
    started = record.start_time or record.create_timestamp.timestamp()
    return liveness.run_verdict(run.tags, started, time.time() if now is None else now,
                                _last_event_at(instance, run.run_id))  # fmt: skip


def dead_runs(
    instance: dg.DagsterInstance, partition: str | None = None, exclude: str | None = None
) -> list[tuple[dg.RunRecord, liveness.Verdict]]:
    """STARTED runs (of `partition`, if given) whose worker is dead."""
    filters = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                            tags={"dagster/partition": partition} if partition else {})  # fmt: skip
    found = []
    for record in instance.get_run_records(filters=filters):
        if record.dagster_run.run_id == exclude:
            continue
        judged = verdict(instance, record)
        if judged.dead:
            found.append((record, judged))
    return found


def fail_dead_runs(
    instance: dg.DagsterInstance, partition: str | None = None, exclude: str | None = None, log=None, by: str = ""
) -> list[str]:
    """Mark every dead STARTED run (of `partition`) failed, saying why; returns their run ids."""
    failed = []
    for record, judged in dead_runs(instance, partition, exclude):
        run = record.dagster_run
        message = f"Marked failed by stage1{by}: {judged.reason}. Re-run it (a shard resumes from its checkpoints)."
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue  # it finished meanwhile
        instance.report_run_failed(current, message)
        failed.append(run.run_id)
        if log is not None:
            where = f" (partition {run.tags['dagster/partition']})" if "dagster/partition" in run.tags else ""
            log.warning(f"run {run.run_id}{where}: {message}")
    return failed


def in_flight_partitions(instance: dg.DagsterInstance, job_name: str | None = None) -> set[str]:
    """Partitions with a run (of `job_name`, or any job) queued or in progress whose worker is not known dead."""
    keys = set()
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES, job_name=job_name)):
        key = record.dagster_run.tags.get("dagster/partition")
        if key and not verdict(instance, record).dead:
            keys.add(key)
    return keys
