"""Pilot iterations and their session manifests.

Each pilot materialization is an iteration under `data/pilot/<NNN>/` with its pairs, QC summary
and a session manifest (parameters, model fingerprint, prompt version, seed, pass/fail). Scale
generation reuses the parameters of the latest iteration whose checks all passed.

Iteration numbers are allocated atomically: a run takes the next number by creating its folder
(`mkdir` fails if another run took it first, and the run tries the next one), and marks it with
`run.json` (its run id and status). The manifest is written only in the run's final commit, with
its provenance; a run that fails marks its `run.json` failed, and a folder without a manifest is
never a session for shards, whatever happened to its run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import liveness
from .artifacts import verify
from .io import atomic_write_json, read_json

MANIFEST = "session_manifest.json"
RUN_FILE = "run.json"
PRODUCER = "pilot_data"
MANIFEST_FIELDS = {"iteration": str, "checks_passed": bool, "model_fingerprint": str, "generation": dict,
                   "pairs_sha256": str}  # fmt: skip


def _numbers(pilot_dir: Path) -> list[int]:
    if not pilot_dir.exists():
        return []
    return [int(p.name) for p in pilot_dir.iterdir() if p.name.isdigit() and len(p.name) >= 3 and p.is_dir()]


def next_iteration(pilot_dir: Path) -> str:
    """The number after the highest existing iteration (not reserved: see `allocate_iteration`)."""
    return f"{max(_numbers(pilot_dir), default=0) + 1:03d}"


def allocate_iteration(pilot_dir: Path, run_id: str) -> str:
    """Reserve the next iteration number for `run_id`: concurrent runs always get distinct numbers."""
    pilot_dir.mkdir(parents=True, exist_ok=True)
    number = max(_numbers(pilot_dir), default=0) + 1
    while True:
        iteration = f"{number:03d}"
        try:
            os.mkdir(pilot_dir / iteration)  # atomic: exactly one run creates it
        except FileExistsError:
            number += 1
            continue
        atomic_write_json(pilot_dir / iteration / RUN_FILE, {
            "iteration": iteration, "run_id": run_id, "status": "running", "started_at": time.time(),
            "worker": liveness.identity(),
        })  # fmt: skip
        return iteration


def mark_failed(pilot_dir: Path, iteration: str, run_id: str, error: BaseException | str) -> Path:
    """Record that `run_id` failed in `iteration` (its folder never gets a manifest, so no shard uses it)."""
    return atomic_write_json(pilot_dir / iteration / RUN_FILE, {
        "iteration": iteration, "run_id": run_id, "status": "failed", "failed_at": time.time(),
        "error": f"{type(error).__name__}: {error}"[:2000] if isinstance(error, BaseException) else str(error),
    })  # fmt: skip


def read_manifest(path: Path, check: bool = True) -> dict[str, Any]:
    """One session manifest; with `check`, first verified against its sidecar (the pilot's commit wrote both)."""
    if check:
        verify(path, PRODUCER)
    return read_json(path, MANIFEST_FIELDS, what=f"; re-materialize {PRODUCER} (or delete {path.parent})")


def manifests(pilot_dir: Path, check: bool = False) -> list[dict[str, Any]]:
    """All iterations' manifests, oldest first (`check`: each verified against its sidecar, or an error)."""
    if not pilot_dir.exists():
        return []
    return [read_manifest(path, check) for path in sorted(pilot_dir.glob(f"[0-9][0-9][0-9]/{MANIFEST}"))]


def latest_passing_manifest(pilot_dir: Path, check: bool = False) -> dict[str, Any] | None:
    passing = [m for m in manifests(pilot_dir, check) if m.get("checks_passed")]
    return passing[-1] if passing else None
