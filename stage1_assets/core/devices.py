"""Which GPU a run gets on a multi-GPU host: one process per device, freed when the process dies.

The `gpu` concurrency pool (its limit set to the host's GPU count) decides *how many* GPU steps
run at once; this module decides *which* GPU each one gets. A claim is an exclusive, non-blocking
`flock` on `<lock_dir>/<device id>.lock`, held for the life of the process. The kernel drops the
lock when the process exits for any reason, SIGKILL and OOM-kill included, so a crashed run frees
its GPU at once: there is no lease to expire and no stale state to clean up. The lock file also
names its holder (pid, host, time) for whoever is looking for the process that holds a device.

Device ids are the CUDA UUIDs, not indices: two processes with different CUDA_VISIBLE_DEVICES
number the same card differently but agree on its UUID. On Kubernetes the device plugin already
gives each pod its own GPU, so there every claim succeeds on the first try.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOCK_DIR = Path(os.environ.get("STAGE1_GPU_LOCK_DIR", "/tmp/stage1-gpu-locks"))
POLL_SECONDS = 2.0


class DeviceBusyError(RuntimeError):
    """Every candidate device stayed claimed by another process for the whole wait."""


@dataclass(frozen=True)
class Candidate:
    name: str  # what torch calls it in this process, e.g. "cuda:1"
    device_id: str  # the same for every process on the host, e.g. the CUDA UUID


@dataclass
class DeviceClaim:
    name: str
    device_id: str
    lock_path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _try_lock(lock_path: Path) -> int | None:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def holder(lock_path: Path) -> dict:
    """Who last claimed this device (the holder, if the lock is still held)."""
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def claim_device(
    candidates: Sequence[Candidate], lock_dir: Path = DEFAULT_LOCK_DIR, wait_seconds: float = 0.0, label: str = ""
) -> DeviceClaim:
    """Claim the first free candidate, polling for up to `wait_seconds` while all are taken."""
    if not candidates:
        raise ValueError("no candidate devices to claim")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        for candidate in candidates:
            lock_path = lock_dir / f"{candidate.device_id}.lock"
            fd = _try_lock(lock_path)
            if fd is None:
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "device": candidate.name,
                    "claimed_at": time.time(), "label": label}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            return DeviceClaim(candidate.name, candidate.device_id, lock_path, fd)
        if time.monotonic() >= deadline:
            holders = {c.name: holder(lock_dir / f"{c.device_id}.lock") for c in candidates}
            raise DeviceBusyError(
                f"all {len(candidates)} devices are claimed by other processes (holders: {holders}); "
                "the `gpu` pool limit is probably above the number of GPUs on this host: set it with "
                "`dagster instance concurrency set gpu <number of GPUs>`"
            )
        time.sleep(POLL_SECONDS)


def cuda_candidates() -> list[Candidate]:
    import torch

    return [
        Candidate(f"cuda:{i}", str(torch.cuda.get_device_properties(i).uuid)) for i in range(torch.cuda.device_count())
    ]


_PROCESS_CLAIM: DeviceClaim | None = None


def claim_gpu_for_process(lock_dir: Path = DEFAULT_LOCK_DIR, wait_seconds: float = 0.0, label: str = "") -> str:
    """This process's GPU ("cuda:k"): claimed on first call, then kept until the process ends."""
    global _PROCESS_CLAIM
    if _PROCESS_CLAIM is None:
        import torch

        _PROCESS_CLAIM = claim_device(cuda_candidates(), lock_dir, wait_seconds, label)
        torch.cuda.set_device(_PROCESS_CLAIM.name)  # so peak-memory stats and bare .cuda() use it too
    return _PROCESS_CLAIM.name
