"""core/pilot.py: iteration numbering, allocation under concurrency, failure markers and session manifests."""

import contextlib
import json
import os
import threading

import pytest

from stage1_assets.core import liveness, pilot
from stage1_assets.core.artifacts import ArtifactIntegrityError, describe, manifest_path
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.io import InputFileError, atomic_write_json
from stage1_assets.core.pairs import GenerationParams

GENERATION = GenerationParams(InstructionSampling(), ResponseSampling(), CriticParams(), batch_size=4).as_dict()


def write_manifest(pilot_dir, iteration: str, passed: bool = True, sidecar: bool = True, **extra) -> dict:
    """A session manifest as the pilot's final commit writes it (with its sidecar unless told otherwise)."""
    manifest = {"iteration": iteration, "checks_passed": passed, "model_fingerprint": "fp", "generation": GENERATION,
                "pairs_sha256": f"hash-{iteration}", **extra}  # fmt: skip
    path = pilot_dir / iteration / pilot.MANIFEST
    atomic_write_json(path, manifest)
    if sidecar:
        atomic_write_json(manifest_path(path), describe(path, pilot.PRODUCER))
    return manifest


def run_file(pilot_dir, iteration: str) -> dict:
    return json.loads((pilot_dir / iteration / pilot.RUN_FILE).read_text())


# --- numbering ------------------------------------------------------------------------------------


def test_next_iteration_of_a_missing_or_empty_folder_is_001(tmp_path):
    assert pilot.next_iteration(tmp_path / "missing") == "001"
    assert not (tmp_path / "missing").exists(), "next_iteration only looks; allocate_iteration reserves"
    assert pilot.next_iteration(tmp_path) == "001"


def test_next_iteration_follows_the_highest_iteration_folder_and_ignores_everything_else(tmp_path):
    for name in ("001", "004", "07", "abc", "012x"):
        (tmp_path / name).mkdir()
    (tmp_path / "009").write_text("a file, not an iteration")
    assert pilot.next_iteration(tmp_path) == "005", "gaps are not refilled; 2-digit, non-numeric, files ignored"
    (tmp_path / "999").mkdir()
    assert pilot.next_iteration(tmp_path) == "1000", "past 999 the number grows a digit"
    (tmp_path / "1000").mkdir()
    assert pilot.next_iteration(tmp_path) == "1001"


# --- allocation -----------------------------------------------------------------------------------


def test_allocate_iteration_reserves_the_folder_and_records_the_run(tmp_path):
    pilot_dir = tmp_path / "pilot"
    first = pilot.allocate_iteration(pilot_dir, "run-a")
    second = pilot.allocate_iteration(pilot_dir, "run-b")
    assert (first, second) == ("001", "002")
    assert pilot.next_iteration(pilot_dir) == "003", "an allocated folder counts even before it has a manifest"
    record = run_file(pilot_dir, "002")
    assert record["iteration"] == "002" and record["run_id"] == "run-b" and record["status"] == "running"
    assert record["worker"]["pid"] == os.getpid() and liveness.state(record["worker"]) == "alive", (
        "the worker identity lets a dead run be recognised"
    )


def test_allocate_iteration_skips_a_number_another_run_took_after_it_looked(tmp_path, monkeypatch):
    (tmp_path / "001").mkdir()
    (tmp_path / "002").mkdir()
    monkeypatch.setattr(pilot, "_numbers", lambda _: [])  # a stale view: as if it looked before the others
    assert pilot.allocate_iteration(tmp_path, "late") == "003"
    assert not (tmp_path / "001" / pilot.RUN_FILE).exists(), "the other runs' folders are not touched"


def test_concurrent_allocations_get_distinct_consecutive_iterations(tmp_path, monkeypatch):
    """Every thread reads the folder before any of them creates one, so all first try the same number."""
    runs = 8
    barrier = threading.Barrier(runs, timeout=30)
    real_numbers = pilot._numbers

    def numbers_then_wait(pilot_dir):
        seen = real_numbers(pilot_dir)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()  # only the first look of each thread; the retries after a collision do not look again
        return seen

    monkeypatch.setattr(pilot, "_numbers", numbers_then_wait)
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def allocate(run_id: str) -> None:
        try:
            got[run_id] = pilot.allocate_iteration(tmp_path, run_id)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise only printed
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(f"run-{n}",)) for n in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(got.values()) == [f"{n:03d}" for n in range(1, runs + 1)]
    for run_id, iteration in got.items():
        assert run_file(tmp_path, iteration)["run_id"] == run_id, "each folder belongs to the run that made it"


# --- failure markers ------------------------------------------------------------------------------


def test_mark_failed_records_the_error_in_the_runs_file(tmp_path):
    iteration = pilot.allocate_iteration(tmp_path, "run-a")
    pilot.mark_failed(tmp_path, iteration, "run-a", ValueError("critic crashed"))
    record = run_file(tmp_path, iteration)
    assert record["status"] == "failed" and record["run_id"] == "run-a"
    assert record["error"] == "ValueError: critic crashed"
    pilot.mark_failed(tmp_path, iteration, "run-a", "killed by the dead-run sensor")
    assert run_file(tmp_path, iteration)["error"] == "killed by the dead-run sensor"


def test_mark_failed_bounds_a_huge_error_message(tmp_path):
    pilot.mark_failed(tmp_path, "001", "run-a", RuntimeError("x" * 10_000))
    assert len(run_file(tmp_path, "001")["error"]) == 2000


# --- manifests ------------------------------------------------------------------------------------


def test_manifests_are_read_oldest_first_and_a_folder_without_one_is_no_session(tmp_path):
    assert pilot.manifests(tmp_path / "missing") == []
    write_manifest(tmp_path, "010")
    write_manifest(tmp_path, "002", passed=False)
    pilot.allocate_iteration(tmp_path, "still running")  # 011: a folder and run.json, no manifest
    assert [m.iteration for m in pilot.manifests(tmp_path)] == ["002", "010"]


def test_latest_passing_manifest_skips_failed_checks_failed_runs_and_running_ones(tmp_path):
    assert pilot.latest_passing_manifest(tmp_path) is None
    write_manifest(tmp_path, "001")
    write_manifest(tmp_path, "002", seed=7)
    write_manifest(tmp_path, "003", passed=False)
    failed = pilot.allocate_iteration(tmp_path, "run-x")
    pilot.mark_failed(tmp_path, failed, "run-x", RuntimeError("out of memory"))
    pilot.allocate_iteration(tmp_path, "run-y")  # still running
    for check in (False, True):
        latest = pilot.latest_passing_manifest(tmp_path, check=check)
        assert (latest.iteration, latest.seed, latest.checks_passed) == ("002", 7, True)


def test_no_passing_iteration_means_no_session(tmp_path):
    write_manifest(tmp_path, "001", passed=False)
    assert pilot.latest_passing_manifest(tmp_path) is None


def test_checked_manifests_refuse_one_changed_after_its_commit(tmp_path):
    write_manifest(tmp_path, "001")
    path = tmp_path / "001" / pilot.MANIFEST
    edited = {**json.loads(path.read_text()), "checks_passed": True, "model_fingerprint": "another model"}
    path.write_text(json.dumps(edited))
    assert pilot.latest_passing_manifest(tmp_path).model_fingerprint == "another model"  # unchecked: as is
    with pytest.raises(ArtifactIntegrityError, match="001"):
        pilot.latest_passing_manifest(tmp_path, check=True)


def test_checked_manifests_refuse_one_without_its_sidecar(tmp_path):
    write_manifest(tmp_path, "001", sidecar=False)
    with pytest.raises(ArtifactIntegrityError, match="manifest .* is missing"):
        pilot.manifests(tmp_path, check=True)


@pytest.mark.parametrize("field, value", [("checks_passed", "yes"), ("pairs_sha256", None), ("generation", [])])
def test_a_manifest_missing_a_field_or_of_the_wrong_type_is_refused_by_name(tmp_path, field, value):
    write_manifest(tmp_path, "001", sidecar=False)
    path = tmp_path / "001" / pilot.MANIFEST
    manifest = json.loads(path.read_text())
    if value is None:
        del manifest[field]
    else:
        manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputFileError, match=field):
        pilot.read_manifest(path, check=False)
