"""Scale shards on the real embedded model: SIGKILL and resume, and two shard runs at once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.io import atomic_write_json, atomic_write_jsonl
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.core.provenance import ProvenanceStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PARAMS = GenerationParams(InstructionSampling(), ResponseSampling(max_new_tokens=40), CriticParams(), batch_size=2)

SHARD_SCRIPT = """
import json, sys
from pathlib import Path
from stage1_assets.core import model_loader
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.core.shards import run_shard
params = GenerationParams(InstructionSampling(), ResponseSampling(max_new_tokens=40), CriticParams(), batch_size=2)
lm = model_loader.load_model(models_dir=Path(sys.argv[2]), device="cpu")
result = run_shard(lm, Path(sys.argv[1]), "shard-001", 8, 4321, params)
print(json.dumps({"resumed": result.resumed_batches, "generated": result.generated_batches,
                  "hash": result.content_hash, "reused_instructions": result.instructions_reused}))
"""


def run_shard_process(shard_dir: Path, models_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(shard_dir), str(models_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_shard_killed_mid_way_resumes_to_the_same_content(tmp_path, embedded_dir):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = run_shard_process(killed_dir, embedded_dir.parent)
    deadline = time.monotonic() + 600
    while len(list((killed_dir / "batches").glob("batch-*.jsonl"))) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no batch checkpoint appeared"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "pairs.jsonl").exists(), "a killed shard must not look complete"
    done_before = len(list((killed_dir / "batches").glob("batch-*.jsonl")))

    resumed = finish(run_shard_process(killed_dir, embedded_dir.parent))
    assert resumed["reused_instructions"] and resumed["resumed"] == done_before
    assert resumed["resumed"] + resumed["generated"] == 4
    rows = [json.loads(line) for line in (killed_dir / "pairs.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(rows) == 8 and len(set(ids)) == 8 and ids == [f"shard-001-{i:06d}" for i in range(8)]
    assert not (killed_dir / "batches").exists()
    assert not list(killed_dir.glob(".*.tmp"))

    uninterrupted = finish(run_shard_process(clean_dir, embedded_dir.parent))
    assert uninterrupted["resumed"] == 0 and uninterrupted["hash"] == resumed["hash"]


def test_two_shards_materialize_concurrently_with_all_provenance(tmp_path, real_model):
    data = tmp_path / "data"
    atomic_write_jsonl(data / "test_instructions.jsonl",
                       [{"id": "test-0001", "instruction": "What causes ocean tides on Earth?"}])  # fmt: skip
    atomic_write_json(data / "pilot/001/session_manifest.json", {
        "iteration": "001", "checks_passed": True, "model_fingerprint": real_model.info.fingerprint,
        "generation": PARAMS.as_dict() | {"batch_size": 4}, "pairs_sha256": "pilot-hash",
    })  # fmt: skip
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)):
        pass  # the instance's storage exists before runs start, as under `dagster dev`
    # one thread each: two processes share this machine's cores, as two shard runs would share a host
    env = {**os.environ, "DAGSTER_HOME": str(home), "STAGE1_DATA_DIR": str(data), "STAGE1_PROFILE": "local",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    config = json.dumps({"ops": {"scale_shards": {"config": {"count": 4}}}})
    procs = [
        subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                          "stage1_assets.definitions", "--select", "scale_shards", "--partition", key,
                          "--config-json", config],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for key in ("shard-000", "shard-001")
    ]  # fmt: skip
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    for key in ("shard-000", "shard-001"):
        rows = (data / "shards" / key / "pairs.jsonl").read_text().splitlines()
        assert len(rows) == 4 and json.loads(rows[0])["id"] == f"{key}-000000"
    records = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT partition_key, params_json, model_fingerprint, run_id FROM records WHERE asset_key = 'scale_shards' "
        "ORDER BY partition_key"
    )
    assert [r["partition_key"] for r in records] == ["shard-000", "shard-001"]
    assert {json.loads(r["params_json"])["seed"] for r in records} == {100_000, 101_000}
    assert {r["model_fingerprint"] for r in records} == {real_model.info.fingerprint}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("scale_shards"))
    assert done == {"shard-000", "shard-001"}

    # idempotence: the same shard with unchanged inputs and parameters reuses its content
    before = (data / "shards/shard-000/pairs.jsonl").read_bytes()
    again = subprocess.run(procs[0].args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (data / "shards/shard-000/pairs.jsonl").read_bytes() == before
    hashes = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT json_extract(r.metrics_json, '$.reused') AS reused, a.content_hash FROM records r "
        "JOIN artifacts a USING (record_id) WHERE r.partition_key = 'shard-000' AND a.role = 'output' "
        "ORDER BY r.recorded_at"
    )
    assert [h["reused"] for h in hashes] == ["false", "true"]
    assert hashes[0]["content_hash"] == hashes[1]["content_hash"]
