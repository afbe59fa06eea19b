"""GPU assignment on a multi-GPU host: no two processes on one device, a dead process frees its device.

The claims are OS file locks, which behave the same whether the names stand for real GPUs or not,
so these tests run on CPU machines with made-up device ids; the lent 2-GPU machine runs the same
code on real GPUs (bench/bench_multi_gpu.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stage1_assets.core.devices import Candidate, DeviceBusyError, claim_device, holder

CANDIDATES = [Candidate("cuda:0", "GPU-aaaa"), Candidate("cuda:1", "GPU-bbbb")]

CLAIMER = """
import json, sys, time
from pathlib import Path
from stage1_assets.core.devices import Candidate, DeviceBusyError, claim_device
candidates = [Candidate("cuda:0", "GPU-aaaa"), Candidate("cuda:1", "GPU-bbbb")]
try:
    claim = claim_device(candidates, Path(sys.argv[1]), wait_seconds=float(sys.argv[2]))
    print(json.dumps({"device": claim.name}), flush=True)
except DeviceBusyError:
    print(json.dumps({"device": None}), flush=True)
time.sleep(float(sys.argv[3]))
"""


def start_claimer(lock_dir, wait: float = 0.0, hold: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER, str(lock_dir), str(wait), str(hold)], stdout=subprocess.PIPE, text=True
    )


def claimed_device(proc: subprocess.Popen) -> str | None:
    return json.loads(proc.stdout.readline())["device"]


def test_each_process_gets_its_own_device_and_the_rest_are_refused(tmp_path):
    procs = [start_claimer(tmp_path, hold=3.0) for _ in range(4)]
    try:
        got = [claimed_device(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    claimed = [d for d in got if d is not None]
    assert sorted(claimed) == ["cuda:0", "cuda:1"], got  # both devices used, neither twice


def test_a_killed_process_frees_its_device_at_once(tmp_path):
    first = start_claimer(tmp_path, hold=60.0)
    second = start_claimer(tmp_path, hold=60.0)
    try:
        devices = {claimed_device(first), claimed_device(second)}
        assert devices == {"cuda:0", "cuda:1"}
        with pytest.raises(DeviceBusyError, match="dagster instance concurrency set gpu"):
            claim_device(CANDIDATES, tmp_path, wait_seconds=0)
        lock = tmp_path / "GPU-aaaa.lock"
        holder_pid = holder(lock)["pid"]
        assert holder_pid in (first.pid, second.pid)
        os.kill(holder_pid, signal.SIGKILL)
        (first if holder_pid == first.pid else second).wait()
        claim = claim_device(CANDIDATES, tmp_path, wait_seconds=0)  # no lease to expire: free right away
        assert claim.name == "cuda:0"
        assert holder(lock)["pid"] == os.getpid()
        claim.release()
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_a_waiting_process_takes_the_device_when_its_holder_exits(tmp_path):
    claims = [claim_device(CANDIDATES, tmp_path) for _ in CANDIDATES]
    waiter = start_claimer(tmp_path, wait=30.0)
    time.sleep(1.0)
    claims[1].release()
    assert claimed_device(waiter) == "cuda:1"
    waiter.wait()
    claims[0].release()
