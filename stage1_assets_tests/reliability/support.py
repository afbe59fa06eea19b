"""Helpers shared by the reliability tests: synthetic shard data and a reader that never trusts a file."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stage1_assets.core.io import atomic_write_jsonl

REPO = Path(__file__).resolve().parents[2]
TEMP_SUFFIX = ".tmp"  # atomic_path's temporary files: `.<target name>.<random>.tmp`


def is_temp_file(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def synthetic_shard_rows(key: str, count: int, seed: int) -> list[dict]:
    """Shard rows as `run_shard` writes them, with distinct random-word instructions.

    Every fifth pair is critic-rejected and every seventh repeats an earlier instruction, so the
    merge has something to remove and report.
    """
    rng = random.Random(seed)
    words = [f"{syllable}{n}" for syllable in ("ka", "lo", "mi", "su", "te") for n in range(60)]
    rows = []
    for i in range(count):
        instruction = " ".join(rng.sample(words, 8)) + "?"
        if i % 7 == 6:
            instruction = rows[i - 3]["instruction"]
        rows.append({
            "id": f"{key}-{i:06d}", "instruction": instruction, "response": " ".join(rng.sample(words, 12)) + ".",
            "shard": key, "critic_score": round(rng.uniform(1.0, 3.0), 6) if i % 5 else 0.25,
            "accepted": bool(i % 5), "finish_reason": "stop",
        })  # fmt: skip
    return rows


def write_merge_inputs(data: Path, shard_keys: list[str], per_shard: int) -> None:
    """What `sft_dataset` reads: every shard's pairs.jsonl and the held-out set."""
    for n, key in enumerate(shard_keys):
        atomic_write_jsonl(data / "shards" / key / "pairs.jsonl", synthetic_shard_rows(key, per_shard, seed=n))
    tests = [{"id": "test-0001", "instruction": "What causes ocean tides on Earth?"}]
    atomic_write_jsonl(data / "test_instructions.jsonl", tests)


def jsonl_line_count(path: Path) -> int:
    """Lines of a complete JSONL file; raises if any line does not parse (a truncated write)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


class Reader(threading.Thread):
    """Polls output files while a writer runs, as a user or a downstream step would read them.

    `checks` maps a glob under `root` to a function that reads a file completely and returns its
    row count; `expected` maps a pattern (matched against the path relative to `root`, first match
    wins) to the row count a complete file has; files no pattern matches only have to parse.
    Temporary files are skipped (nothing reads them). A file seen half-written, or with the wrong
    row count, is a violation.
    """

    POLL_S = 0.005

    def __init__(self, root: Path, checks: dict[str, Callable[[Path], int]], expected: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.root, self.checks, self.expected = root, checks, expected
        self.observed = 0
        self.violations: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pattern, read in self.checks.items():
                for path in self.root.glob(pattern):
                    if is_temp_file(path):
                        continue
                    try:
                        rows = read(path)
                    except FileNotFoundError:
                        continue  # removed between glob and open (e.g. batch files after the shard is done)
                    except Exception as exc:  # any failure to read is what this reader looks for
                        self.violations.append(f"{path.name}: {type(exc).__name__}: {exc}")
                        continue
                    self.observed += 1
                    relative = path.relative_to(self.root)
                    want = next((n for glob, n in self.expected.items() if relative.match(glob)), None)
                    if want is not None and rows != want:
                        self.violations.append(f"{path.name}: {rows} rows, a complete file has {want}")
            time.sleep(self.POLL_S)

    def stop(self) -> Reader:
        self._stop_event.set()
        self.join()
        return self


def wait_for(condition: Callable[[], bool], alive: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
    """Poll until `condition()`; fail early when the process under test died or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert alive(), f"the process exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def step_failure_text(result) -> str:
    """The failed step's error and its causes, messages only (what the UI shows first)."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error, parts = failure.event_specific_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: compare before and after to prove nothing was written."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
