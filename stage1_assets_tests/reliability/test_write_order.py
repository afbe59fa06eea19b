"""Write order: a step's outputs become visible only together with their provenance record, never without it.

Each output is staged beside its target; the record's journal is written next (the one write that
needs space), and only then are the outputs renamed into place and the record into the spool. So:
provenance that cannot be written (a full disk) leaves every earlier artifact as it was; a user
holding the DuckDB file open only delays ingestion; a pilot that fails at its commit leaves no
manifest a shard could use; a process killed in the middle of a commit has it finished by the next.
"""

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from stage1_assets.assets.scale_shards import SHARD_PARTITIONS
from stage1_assets.core import pilot
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import ProvenanceResource, Stage1Paths

from .support import (
    REPO,
    TINY_PILOT_CONFIG,
    is_temp_file,
    step_failure_text,
    synthetic_shard_rows,
    tiny_resources,
    tree,
    write_merge_inputs,
    write_shard,
    write_test_set,
)

KEYS = SHARD_PARTITIONS.get_partition_keys()
SPOOL = "provenance.duckdb.spool"


def resources(data: Path) -> dict:
    return {"paths": Stage1Paths(data_dir=str(data)),
            "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb"))}  # fmt: skip


def outputs(data: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(data).items() if not k.startswith("provenance.duckdb")}


def records(data: Path, asset: str) -> list[dict]:
    return ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT r.run_id, a.content_hash FROM records r JOIN artifacts a USING (record_id) "
        "WHERE r.asset_key = $1 AND a.role = 'output' ORDER BY r.recorded_at",
        [asset],
    )


def full_disk_under(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    """Every write of a file under `folder` fails with ENOSPC half-way, as on a full disk."""
    real = Path.write_bytes

    def write_bytes(self: Path, payload: bytes) -> int:
        if folder not in self.parts:
            return real(self, payload)
        with open(self, "wb") as fh:
            fh.write(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_provenance_unwritable_after_the_outputs_are_computed_leaves_the_old_artifacts(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_merge_inputs(data, KEYS, per_shard=12)
    assert dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources(data)).success
    write_shard(data, KEYS[0], synthetic_shard_rows(KEYS[0], 12, seed=99))  # the next merge has new content
    before = outputs(data)

    full_disk_under(monkeypatch, SPOOL)
    result = dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources(data), raise_on_error=False)
    monkeypatch.undo()

    assert not result.success
    message = step_failure_text(result)
    assert "No space left on device" in message and SPOOL in message, message
    assert outputs(data) == before, "the outputs stay as they were: none is published without its record"
    assert not [p for p in data.rglob("*") if is_temp_file(p)], "staged files are removed"
    assert len(records(data, "sft_dataset")) == 1, "only the earlier merge is recorded"


HOLD_DATABASE = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # a user's session: DuckDB lets no other process open the file meanwhile
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_user_holding_the_provenance_database_does_not_fail_a_step(tmp_path):
    data = tmp_path / "data"
    write_merge_inputs(data, KEYS, per_shard=12)
    ProvenanceStore(data / "provenance.duckdb").query("SELECT 1")  # the database exists, as after any run
    holder = subprocess.Popen([sys.executable, "-c", HOLD_DATABASE, str(data / "provenance.duckdb"), "600"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        result = dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources(data), raise_on_error=False)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.success, step_failure_text(result)
    assert took < 45, f"the step waited {took:.0f} s for the database"
    [event] = result.get_asset_materialization_events()
    dataset_hash = event.materialization.metadata["content_hash"].value
    assert list((data / SPOOL).glob("*.json")), "the record waits in the spool"
    # once the session ends, the next reader ingests it: the artifact on disk and its record agree
    assert records(data, "sft_dataset") == [{"run_id": result.run_id, "content_hash": dataset_hash}]
    assert json.loads((data / "stage1_sft_data.jsonl.manifest.json").read_text())["sha256"] == dataset_hash


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_pilot_that_cannot_record_provenance_leaves_no_manifest_and_is_marked_failed(
    tmp_path, monkeypatch, tiny_model_dir, tiny_pilot_models
):
    data = tmp_path / "data"
    write_test_set(data)
    full_disk_under(monkeypatch, SPOOL)
    result = dg.materialize([defs.get_assets_def("pilot_data")], resources=tiny_resources(data, tiny_model_dir,
                            tiny_pilot_models), run_config={"ops": {"pilot_data": {"config": TINY_PILOT_CONFIG}}},
                            raise_on_error=False)  # fmt: skip
    monkeypatch.undo()
    assert not result.success and "No space left on device" in step_failure_text(result)
    iteration = data / "pilot" / "001"
    assert sorted(p.name for p in iteration.iterdir()) == ["run.json"], "no pairs, summary or manifest"
    status = json.loads((iteration / "run.json").read_text())
    assert status["status"] == "failed" and status["run_id"] == result.run_id and "No space" in status["error"]
    assert pilot.latest_passing_manifest(data / "pilot") is None and pilot.manifests(data / "pilot") == []


# A process that dies in the middle of a commit: after the journal, after renaming one of the two outputs.
DIE_MID_COMMIT = """
import os, signal, sys
from pathlib import Path
from stage1_assets.core.artifacts import Staging
from stage1_assets.core.provenance import Artifact, ProvenanceRecord, ProvenanceStore
data = Path(sys.argv[1])
staging = Staging()
a = staging.write_text(data / "a.txt", "new a")
b = staging.write_text(data / "b.txt", "new b")
record = ProvenanceRecord("demo", run_id="killed-run",
                          outputs=[Artifact("a", staging.hash(a)), Artifact("b", staging.hash(b))])
real_replace, calls = os.replace, []
def replace(src, dst):
    calls.append(dst)
    if len(calls) == 3:  # the journal went in at the first call (atomic write), one output at the second
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
os.replace = replace
ProvenanceStore(data / "provenance.duckdb").commit(record, staging)
"""


def test_a_commit_cut_short_by_sigkill_is_finished_by_the_next_process(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.txt", "b.txt"):
        (data / name).write_text(f"old {name[0]}")
    proc = subprocess.run([sys.executable, "-c", DIE_MID_COMMIT, str(data)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert {(data / n).read_text() for n in ("a.txt", "b.txt")} == {"new a", "old b"}, "killed between two renames"
    assert list((data / SPOOL / ".pending").glob("*.json")), "the journal stays until someone finishes it"

    rows = ProvenanceStore(data / "provenance.duckdb").query("SELECT run_id FROM records")  # any next process
    assert rows == [{"run_id": "killed-run"}]
    assert [(data / n).read_text() for n in ("a.txt", "b.txt")] == ["new a", "new b"]
    assert not list((data / SPOOL / ".pending").glob("*.json")) and not any(is_temp_file(p) for p in data.iterdir())
