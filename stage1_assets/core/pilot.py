"""Pilot iterations and their session manifests.

Each pilot materialization is an iteration under `data/pilot/<NNN>/` with its pairs, QC summary
and a session manifest (parameters, model fingerprint, prompt version, seed, pass/fail). Scale
generation reuses the parameters of the latest iteration whose checks all passed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MANIFEST = "session_manifest.json"


def next_iteration(pilot_dir: Path) -> str:
    existing = [int(p.name) for p in pilot_dir.glob("[0-9][0-9][0-9]") if p.is_dir()] if pilot_dir.exists() else []
    return f"{max(existing, default=0) + 1:03d}"


def sign_test_p_value(successes: int, trials: int) -> float:
    """One-sided P(X >= successes) for X ~ Binomial(trials, 1/2)."""
    if trials == 0:
        return 1.0
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials


def manifests(pilot_dir: Path) -> list[dict[str, Any]]:
    """All iterations' manifests, oldest first."""
    if not pilot_dir.exists():
        return []
    found = []
    for path in sorted(pilot_dir.glob(f"[0-9][0-9][0-9]/{MANIFEST}")):
        found.append(json.loads(path.read_text()))
    return found


def latest_passing_manifest(pilot_dir: Path) -> dict[str, Any] | None:
    passing = [m for m in manifests(pilot_dir) if m.get("checks_passed")]
    return passing[-1] if passing else None
