"""Crash safety: SIGKILL during a shard, during the merge and during training, then re-materialize.

Each test kills a real separate process with SIGKILL (nothing runs on the way out), checks that
nothing half-written looks complete, resumes, and compares with an uninterrupted run. A reader
thread polls the outputs throughout: every file it can open must be complete, which holds only
because every output is written to a temporary file and renamed into place.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from stage1_assets.assets.scale_shards import SHARD_PARTITIONS
from stage1_assets.core.io import atomic_path, atomic_write_text, sha256_file
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import ProvenanceResource, Stage1Paths

from ..support import ROWS
from .support import REPO, Reader, is_temp_file, jsonl_line_count, wait_for, write_merge_inputs


def parquet_rows(path: Path) -> int:
    return pl.read_parquet(path).height


def json_document(path: Path) -> int:
    json.loads(path.read_text(encoding="utf-8"))
    return 1


def test_a_write_that_fails_leaves_the_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, json.dumps({"v": 1}))

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')  # crash mid-write
        raise Boom
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ---------------------------------------------------------------- shard (real embedded model)

SHARD_COUNT, SHARD_BATCH = 4, 2  # two checkpointed batches: the kill lands after the first
SHARD_SCRIPT = f"""
import json, sys
from pathlib import Path
from stage1_assets.core import model_loader
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.core.shards import run_shard
params = GenerationParams(InstructionSampling(), ResponseSampling(max_new_tokens=32), CriticParams(),
                          batch_size={SHARD_BATCH})
lm = model_loader.load_model(models_dir=Path(sys.argv[2]), device="cpu")
result = run_shard(lm, Path(sys.argv[1]), "shard-001", {SHARD_COUNT}, 4321, params)
print(json.dumps({{"resumed": result.resumed_batches, "generated": result.generated_batches,
                  "hash": result.content_hash, "reused_instructions": result.instructions_reused}}))
"""


def run_shard_process(shard_dir: Path, models_dir: Path) -> subprocess.Popen:
    # one thread each: the uninterrupted run shares the cores with the killed and resumed ones
    return subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(shard_dir), str(models_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_shard_killed_mid_way_resumes_to_the_same_content(tmp_path, embedded_dir):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    reader = Reader(
        killed_dir,
        {"pairs.jsonl": jsonl_line_count, "batches/*.jsonl": jsonl_line_count, "pairs.parquet": parquet_rows,
         "*.json": json_document},
        {"pairs.jsonl": SHARD_COUNT, "batches/*.jsonl": SHARD_BATCH, "pairs.parquet": SHARD_COUNT},
    )  # fmt: skip
    reader.start()
    uninterrupted = run_shard_process(clean_dir, embedded_dir.parent)
    proc = run_shard_process(killed_dir, embedded_dir.parent)
    wait_for(lambda: any((killed_dir / "batches").glob("batch-*.jsonl")), lambda: proc.poll() is None,
             "a batch checkpoint appeared")  # fmt: skip
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "pairs.jsonl").exists(), "a killed shard must not look complete"
    done_before = len(list((killed_dir / "batches").glob("batch-*.jsonl")))

    resumed = finish(run_shard_process(killed_dir, embedded_dir.parent))
    reader.stop()
    assert resumed["reused_instructions"] and resumed["resumed"] == done_before
    assert resumed["resumed"] + resumed["generated"] == SHARD_COUNT // SHARD_BATCH
    rows = [json.loads(line) for line in (killed_dir / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"shard-001-{i:06d}" for i in range(SHARD_COUNT)]
    assert not (killed_dir / "batches").exists()
    assert not [p for p in killed_dir.rglob("*") if is_temp_file(p)]
    assert reader.observed > 0 and reader.violations == []

    clean = finish(uninterrupted)
    assert clean["resumed"] == 0 and clean["hash"] == resumed["hash"]


# ---------------------------------------------------------------- merge (no model needed)

MERGE_OUTPUTS = ("stage1_sft_data.jsonl", "stage1_sft_data.parquet", "sft_removed.jsonl")
# A slow disk, so the parent can SIGKILL the merge while a file is being written: every
# Path.write_bytes (how atomic_write_* fills its temporary file) trickles its bytes out.
MERGE_SCRIPT = """
import pathlib, sys, time
import dagster as dg

def slow_write_bytes(self, data):
    with open(self, "wb") as fh:
        for start in range(0, len(data), 512):
            fh.write(data[start : start + 512])
            fh.flush()
            time.sleep(0.02)
    return len(data)

pathlib.Path.write_bytes = slow_write_bytes
from stage1_assets.definitions import defs
from stage1_assets.resources import ProvenanceResource, Stage1Paths
data = sys.argv[1]
dg.materialize([defs.get_assets_def("sft_dataset")], resources={
    "paths": Stage1Paths(data_dir=data), "provenance": ProvenanceResource(db_path=data + "/provenance.duckdb")})
"""


def merge_in_process(data: Path) -> None:
    resources = {"paths": Stage1Paths(data_dir=str(data)),
                 "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb"))}  # fmt: skip
    assert dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources).success


def kill_merge_while_writing(data: Path, output: str) -> None:
    """Start the merge in its own process and SIGKILL it once `output`'s temporary file has bytes."""
    proc = subprocess.Popen([sys.executable, "-c", MERGE_SCRIPT, str(data)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    writing = lambda: any(p.stat().st_size for p in data.glob(f".{output}.*.tmp"))  # noqa: E731
    wait_for(writing, lambda: proc.poll() is None, f"the merge started writing {output}", timeout_s=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def sft_records(data: Path) -> list[dict]:
    return ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT r.status, a.content_hash FROM records r JOIN artifacts a USING (record_id) "
        "WHERE r.asset_key = 'sft_dataset' AND a.role = 'output'"
    )


def test_merge_killed_mid_write_and_between_outputs_then_rerun_equals_an_uninterrupted_merge(tmp_path):
    keys = SHARD_PARTITIONS.get_partition_keys()
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for data in (clean, killed):
        write_merge_inputs(data, keys, per_shard=40)
    merge_in_process(clean)
    expected = {name: jsonl_line_count(clean / name) for name in MERGE_OUTPUTS if name.endswith(".jsonl")}
    expected["stage1_sft_data.parquet"] = parquet_rows(clean / "stage1_sft_data.parquet")
    reader = Reader(killed, {"*.jsonl": jsonl_line_count, "*.parquet": parquet_rows}, expected)
    reader.start()

    # 1. killed while the first output's temporary file is half-written: no output appears at all
    kill_merge_while_writing(killed, "stage1_sft_data.jsonl")
    assert not any((killed / name).exists() for name in MERGE_OUTPUTS)
    assert [p.name for p in killed.glob(".stage1_sft_data.jsonl.*.tmp")], "the partial write stays a temp file"
    assert sft_records(killed) == [], "a killed merge must not be recorded as a success"

    # 2. killed while writing the last output, the first two already written in full: still no output appears,
    #    because a step's outputs become visible only together, with their provenance record
    kill_merge_while_writing(killed, "sft_removed.jsonl")
    assert not any((killed / name).exists() for name in MERGE_OUTPUTS)
    assert sft_records(killed) == []

    # 3. re-materialize: the same content as the merge that was never interrupted
    merge_in_process(killed)
    reader.stop()
    for name in ("stage1_sft_data.jsonl", "sft_removed.jsonl"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    assert pl.read_parquet(killed / "stage1_sft_data.parquet").equals(
        pl.read_parquet(clean / "stage1_sft_data.parquet")
    )
    ids = [json.loads(line)["id"] for line in (killed / "stage1_sft_data.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == expected["stage1_sft_data.jsonl"] > 0
    assert sft_records(killed) == [{"status": "success", "content_hash": sha256_file(clean / "stage1_sft_data.jsonl")}]
    # what the kills left behind is named as temporary (dot-prefixed, .tmp), never as an output
    leftovers = [p for p in killed.iterdir() if p.name.startswith(".")]
    assert leftovers and all(is_temp_file(p) for p in leftovers)
    assert reader.observed > 0 and reader.violations == []


# ---------------------------------------------------------------- training (tiny model)

TOTAL_STEPS = 12  # 3 epochs of 8 rows in batches of 2
# argv: model dir, adapter dir, rows file, mode. "pace": steps take long enough for an outside
# SIGKILL to land mid-way; "die-saving-4": the process SIGKILLs itself inside the step-4
# checkpoint write, after the adapter weights and before the optimizer state. No dropout, so the
# run is deterministic and a resumed adapter can be compared bit for bit.
TRAIN_SCRIPT = """
import json, os, signal, sys, time
from pathlib import Path
import torch
from transformers import AutoTokenizer
from stage1_assets.core.training import TrainingParams, train_adapter
model_dir, out, rows_file, mode = sys.argv[1:5]
if mode == "die-saving-4":
    real_save = torch.save
    def save_or_die(obj, path, *args, **kwargs):
        if "step-000004" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *args, **kwargs)
    torch.save = save_or_die
params = TrainingParams(epochs=3, batch_size=2, checkpoint_every=2, learning_rate=1e-3, validation_fraction=0.0,
                        lora_dropout=0.0)
pace = (lambda record: time.sleep(0.3)) if mode == "pace" else None
result = train_adapter(model_dir, AutoTokenizer.from_pretrained(model_dir), json.loads(Path(rows_file).read_text()),
                       Path(out), params, device="cpu",
                       on_step=lambda r, _line: (print(json.dumps(r), flush=True), pace and pace(r)))
print(json.dumps({"done": result.metrics["steps"], "resumed_from": result.resumed_from_step,
                  "losses": [h["train_loss"] for h in result.history]}), flush=True)
"""


def train_process(tmp_path: Path, model_dir: Path, out: Path, mode: str) -> subprocess.Popen:
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(ROWS))
    args = [sys.executable, "-c", TRAIN_SCRIPT, str(model_dir), str(out), str(rows_file), mode]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_training(proc: subprocess.Popen) -> tuple[list[dict], dict]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]


@pytest.fixture(scope="module")
def uninterrupted_training(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    _, summary = finish_training(train_process(tmp, tiny_model_dir, tmp / "adapter", "plain"))
    assert summary["done"] == TOTAL_STEPS and summary["resumed_from"] == 0
    return tmp / "adapter", summary


def assert_same_adapter(resumed: Path, reference: Path) -> None:
    a, b = load_file(resumed / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kill", ["outside, mid-way", "inside a checkpoint write"])
def test_training_killed_resumes_from_its_last_complete_checkpoint_to_the_same_adapter(
    tmp_path, tiny_model_dir, uninterrupted_training, kill
):
    reference, reference_summary = uninterrupted_training
    out = tmp_path / "adapter"
    if kill == "outside, mid-way":
        proc = train_process(tmp_path, tiny_model_dir, out, "pace")
        wait_for(lambda: (out / "checkpoints/step-000004").exists(), lambda: proc.poll() is None,
                 "checkpoint 4 appeared", timeout_s=300)  # fmt: skip
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        proc = train_process(tmp_path, tiny_model_dir, out, "die-saving-4")
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL
        assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1].startswith("step-000004.partial")
    assert not (out / "adapter_model.safetensors").exists(), "a killed run must not look like a finished adapter"

    steps, summary = finish_training(train_process(tmp_path, tiny_model_dir, out, "plain"))
    assert summary["done"] == TOTAL_STEPS and summary["resumed_from"] >= 2
    assert [r["step"] for r in steps] == list(range(summary["resumed_from"] + 1, TOTAL_STEPS + 1)), (
        "the step counter must continue, not restart"
    )
    assert summary["losses"] == reference_summary["losses"]
    assert_same_adapter(out, reference)
