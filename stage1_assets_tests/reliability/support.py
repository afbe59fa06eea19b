"""Helpers shared by the reliability tests: synthetic shard data and a reader that never trusts a file."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg

from stage1_assets.core import prompts
from stage1_assets.core.artifacts import describe, manifest_path
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.critic import critic_fingerprint
from stage1_assets.core.io import atomic_write_json, atomic_write_jsonl
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.resources import BaseModelResource, ProvenanceResource, Stage1Paths

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


def write_produced(path: Path, rows: list[dict], producer: str) -> Path:
    """A JSONL artifact as its producing asset commits it: the file and its sidecar manifest."""
    atomic_write_jsonl(path, rows)
    atomic_write_json(manifest_path(path), describe(path, producer, rows=len(rows)))
    return path


def write_shard(data: Path, key: str, rows: list[dict]) -> Path:
    return write_produced(data / "shards" / key / "pairs.jsonl", rows, "scale_shards")


def write_test_set(data: Path, instructions: list[str] | None = None) -> Path:
    instructions = instructions or ["What causes ocean tides on Earth?"]
    rows = [{"id": f"test-{n:04d}", "instruction": text} for n, text in enumerate(instructions, 1)]
    return write_produced(data / "test_instructions.jsonl", rows, "test_instructions")


def write_pilot_manifest(data: Path, manifest: dict) -> Path:
    """A passing pilot iteration's session manifest, as `pilot_data` commits it (with its sidecar)."""
    path = data / "pilot" / manifest["iteration"] / "session_manifest.json"
    atomic_write_json(path, manifest)
    atomic_write_json(manifest_path(path), describe(path, "pilot_data"))
    return path


def write_merge_inputs(data: Path, shard_keys: list[str], per_shard: int) -> None:
    """What `sft_dataset` reads: every shard's pairs.jsonl and the held-out set, with their manifests."""
    for n, key in enumerate(shard_keys):
        write_shard(data, key, synthetic_shard_rows(key, per_shard, seed=n))
    write_test_set(data)


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


# ------------------------------------------------- Dagster runs on the tiny model (integrity tests)

BIN = Path(sys.executable).parent
# shard generation on the tiny random model: about a second per batch of two pairs on one core
TINY_SHARD_PARAMS = GenerationParams(InstructionSampling(), ResponseSampling(max_new_tokens=32), CriticParams(),
                                     batch_size=2)  # fmt: skip
# a random model writes an instruction only where a stop sequence ends it: "q" is rare enough to leave several words
TINY_PILOT_CONFIG = {"count": 2, "batch_size": 4, "response_sampling": {"max_new_tokens": 16},
                     "instruction_sampling": {"stop_sequences": ["q"], "max_new_tokens": 40}}  # fmt: skip


def passing_pilot(data: Path, fingerprint: str, params: GenerationParams = TINY_SHARD_PARAMS) -> dict:
    """A pilot iteration that passed its checks, as shards look for it (tiny-model parameters)."""
    manifest = {"iteration": "001", "checks_passed": True, "model_fingerprint": fingerprint,
                "generation": params.as_dict(), "pairs_sha256": "pilot-hash", "critic_version": critic_fingerprint(),
                "prompt_version": prompts.prompt_version()}  # fmt: skip
    write_pilot_manifest(data, manifest)
    return manifest


def seed_shard_instructions(
    data: Path, key: str, count: int, fingerprint: str, seed_base: int = 100_000,
    params: GenerationParams = TINY_SHARD_PARAMS,
) -> None:  # fmt: skip
    """A shard whose instruction stage is done (a random model writes no usable instructions): spec + instructions."""
    seed = seed_base + 1000 * int(key.rsplit("-", 1)[1])
    spec = {"key": key, "count": count, "seed": seed, "generation": params.as_dict(), "model_fingerprint": fingerprint,
            "prompt_version": prompts.prompt_version()}  # fmt: skip
    rng = random.Random(seed)
    words = [f"{syllable}{n}" for syllable in ("ka", "lo", "mi", "su", "te") for n in range(60)]
    instructions = [" ".join(rng.sample(words, 7)) + "?" for _ in range(count)]
    atomic_write_json(data / "shards" / key / "spec.json", spec)
    atomic_write_json(data / "shards" / key / "instructions.json", {"instructions": instructions, "removed": {},
                                                                    "seed": seed})  # fmt: skip


def tiny_resources(data: Path, model_dir: Path, models_dir: Path | None = None) -> dict:
    return {
        "model": BaseModelResource(source=str(model_dir), models_dir=str(models_dir or data.parent / "models")),
        "paths": Stage1Paths(data_dir=str(data)),
        "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb")),
    }


@contextlib.contextmanager
def open_instance(home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance at `home`, disposed after use. Not `with DagsterInstance...`: Dagster 1.13's `__exit__` leaves
    the instance's defs-state storage set as the current one, and a later `dg.materialize` in this process would
    read it (from a test's instance whose folder may be gone)."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


def repo_instance_home(tmp: Path) -> Path:
    """A DAGSTER_HOME holding the repository's own dagster.yaml, its storage created as `dagster dev` would."""
    home = tmp / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with open_instance(home):
        pass
    return home


def dagster_env(home: Path, data: Path, models_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home), "STAGE1_DATA_DIR": str(data), "STAGE1_PROFILE": "local",
            "STAGE1_MODELS_DIR": str(models_dir), "OMP_NUM_THREADS": "1", **extra}  # fmt: skip


class Logged(subprocess.Popen):
    """A process whose output goes to a file (a pipe nobody reads would stall it); `output()` reads it back."""

    def __init__(self, cmd: list[str], log: Path, **kwargs) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with open(log, "w") as fh:
            super().__init__(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self, timeout: float) -> str:
        """Wait for the process; its whole output."""
        try:
            self.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self)
            message = f"{self.args[:4]} still running after {timeout:.0f} s:\n{self.output()[-4000:]}"
            raise AssertionError(message) from None
        return self.output()


def materialize_cli(asset: str, env: dict, config: dict, log: Path, partition: str | None = None) -> Logged:
    """`dagster asset materialize` as the README runs it, in its own process group (to kill it as a user would)."""
    cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "stage1_assets.definitions", "--select", asset,
           "--config-json", json.dumps(config)] + (["--partition", partition] if partition else [])  # fmt: skip
    return Logged(cmd, log, cwd=REPO, env=env)


def shard_config(model_dir: Path, **options) -> dict:
    model = {"config": {"source": str(model_dir)}}
    return {"ops": {"scale_shards": {"config": options}}, "resources": {"model": model}}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group: the CLI and the step process it started, nothing runs on the way out."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def runs_of(home: Path, partition: str | None = None) -> list[dg.DagsterRun]:
    with open_instance(home) as instance:
        tags = {"dagster/partition": partition} if partition else {}
        return list(instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def run_failure_message(home: Path, run_id: str) -> str:
    with open_instance(home) as instance:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        return "\n".join(e.message or "" for e in events)
