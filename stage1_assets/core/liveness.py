"""Is the process that runs a run still there? Process identities that survive pid reuse.

A run records the process that works on it (its run worker) as an identity: host, pid and the
process's start time. On the same host (same hostname and boot) the answer is certain: the pid is
gone, a zombie, or now belongs to a process started at another time, so the run worker is dead.
On another host it cannot be checked; there the run's heartbeat (a timestamp it refreshes every
`HEARTBEAT_SECONDS`) decides: a run silent for `STALE_AFTER_SECONDS` is dead.

Plain Python: the Dagster side (run tags, the dead-run sensor, the schedule) is `stage1_assets/runs.py`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

WORKER_TAG = "stage1/worker"  # JSON identity of the run worker, written when a step of the run starts
HEARTBEAT_TAG = "stage1/heartbeat"  # unix time, refreshed while a step of the run is executing
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = float(os.environ.get("STAGE1_DEAD_RUN_AFTER_SECONDS", "600"))
START_TOLERANCE_S = 1.0

State = Literal["alive", "dead", "unknown"]


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@cache
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def host_id() -> str:
    """This machine as of this boot: a pid means nothing on another host or after a reboot."""
    return f"{socket.gethostname()}/{_boot_id()}"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): state is [0], start time [19]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def process_start(pid: int) -> float | None:
    """When process `pid` started (unix time), where /proc says; None if unknown."""
    fields, boot = _stat_fields(pid), _boot_time()
    if not fields or boot is None:
        return None
    try:
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return None


def identity(pid: int | None = None) -> dict[str, Any]:
    """The identity of process `pid` (default: this one) for a later `state()` check."""
    pid = os.getpid() if pid is None else pid
    return {"host": host_id(), "pid": pid, "started": process_start(pid)}


def state(ident: Mapping[str, Any] | None) -> State:
    """'alive' or 'dead' for a process of this host (and boot); 'unknown' for anything else."""
    if not ident or ident.get("host") != host_id() or not isinstance(ident.get("pid"), int):
        return "unknown"
    pid = ident["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # exists, owned by another user
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):
        return "dead"  # killed, not yet reaped by its parent
    started, recorded = process_start(pid), ident.get("started")
    if started is not None and isinstance(recorded, int | float) and abs(started - recorded) > START_TOLERANCE_S:
        return "dead"  # the pid now belongs to another process
    return "alive"


@dataclass(frozen=True)
class Verdict:
    dead: bool
    reason: str


def run_verdict(
    tags: Mapping[str, str],
    started_at: float | None,
    now: float,
    last_event_at: float | None = None,
    stale_after_s: float = STALE_AFTER_SECONDS,
) -> Verdict:
    """Whether a run that storage calls STARTED is really running, from its tags and timestamps.

    Certain on the worker's own host (its process is alive or not); elsewhere, dead only when
    neither a heartbeat, nor an event, nor the start itself is more recent than `stale_after_s`.
    """
    try:
        worker = json.loads(tags.get(WORKER_TAG) or "null")
    except ValueError:
        worker = None
    where = f"pid {worker.get('pid')} on {str(worker.get('host', '?')).split('/')[0]}" if worker else "unknown"
    verdict = state(worker)
    if verdict == "dead":
        return Verdict(True, f"its run worker ({where}) is gone")
    if verdict == "alive":
        return Verdict(False, f"its run worker ({where}) is alive")
    try:
        beat = float(tags.get(HEARTBEAT_TAG) or 0.0)
    except ValueError:
        beat = 0.0
    last = max(beat, started_at or 0.0, last_event_at or 0.0)
    if last and now - last > stale_after_s:
        return Verdict(True, f"no heartbeat or event for {now - last:.0f} s (run worker: {where})")
    return Verdict(False, f"last sign of life {now - last:.0f} s ago (run worker: {where})")
