"""Four shard runs at once, shared by the concurrency test and the idempotence test that follows it; a models
folder with which tiny-model pilots are quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.model_loader import fingerprint_dir
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import DEFAULT_MODELS_DIR

from .support import REPO, TINY_PILOT_CONFIG, passing_pilot, tiny_resources, write_test_set

CONCURRENT_SHARDS = ("shard-000", "shard-001", "shard-002", "shard-003")
PAIRS_PER_SHARD = 2
# one batch holds all of a shard's instruction prompts (pairs + spares): the fewest decode loops
PARAMS = GenerationParams(InstructionSampling(), ResponseSampling(max_new_tokens=32), CriticParams(), batch_size=8)
# A user querying provenance while shards run: every query ingests the spool and reads DuckDB.
READER_SCRIPT = """
import json, sys, time
from pathlib import Path
from stage1_assets.core.provenance import ProvenanceStore
store, stop = ProvenanceStore(Path(sys.argv[1])), Path(sys.argv[2])
counts, errors = [], []
while not stop.exists():
    try:
        counts.append(store.query("SELECT count(*) AS n FROM records WHERE asset_key = 'scale_shards'")[0]["n"])
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.05)
print(json.dumps({"counts": counts, "errors": errors}))
"""


@dataclass
class ConcurrentShards:
    data: Path
    home: Path
    fingerprint: str
    outputs: dict[str, str]  # CLI output of each shard run
    reader: dict  # counts seen and errors raised by the provenance reader
    records: list[dict]  # scale_shards provenance right after the runs
    materialized: set[str]  # partitions the Dagster instance recorded


def instance_home(tmp: Path) -> Path:
    """An instance like the repo's, on a host with four GPUs: the `gpu` pool admits four shard steps."""
    home = tmp / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["concurrency"]["pools"]["default_limit"] = len(CONCURRENT_SHARDS)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)):
        pass  # the instance's storage exists before runs start, as under `dagster dev`
    return home


@pytest.fixture(scope="session")
def concurrent_shards(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> ConcurrentShards:
    tmp = tmp_path_factory.mktemp("concurrent")
    data, fingerprint = tmp / "data", fingerprint_dir(embedded_dir)
    write_test_set(data)
    passing_pilot(data, fingerprint, PARAMS)
    home = instance_home(tmp)
    # the `full` profile has ten shard partitions; one thread per process, as runs sharing a host
    env = {**os.environ, "DAGSTER_HOME": str(home), "STAGE1_DATA_DIR": str(data), "STAGE1_PROFILE": "full",
           "STAGE1_MODELS_DIR": str(embedded_dir.parent), "OMP_NUM_THREADS": "1"}  # fmt: skip
    stop = tmp / "stop-reading"
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(data / "provenance.duckdb"), str(stop)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    config = json.dumps({"ops": {"scale_shards": {"config": {"count": PAIRS_PER_SHARD}}}})
    runs = {
        key: subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                               "stage1_assets.definitions", "--select", "scale_shards", "--partition", key,
                               "--config-json", config],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for key in CONCURRENT_SHARDS
    }  # fmt: skip
    outputs = {}
    for key, proc in runs.items():
        outputs[key], _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, outputs[key][-4000:]
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    records = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT r.partition_key, r.run_id, r.params_json, r.model_fingerprint, r.wall_seconds, r.recorded_at, "
        "a.content_hash FROM records r JOIN artifacts a USING (record_id) "
        "WHERE r.asset_key = 'scale_shards' AND a.role = 'output' ORDER BY r.partition_key"
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        materialized = instance.get_materialized_partitions(dg.AssetKey("scale_shards"))
    return ConcurrentShards(data, home, fingerprint, outputs, json.loads(out), records, materialized)


@pytest.fixture(scope="session")
def tiny_pilot_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The models folder, its critic-controls cache holding the tiny model's report: pilots on the tiny model then
    take seconds. The report takes minutes on a CPU the first time, as for any new model; one pilot run warms it,
    and it lasts (the tiny model is the same in every session)."""
    import torch

    data, models = tmp_path_factory.mktemp("tiny-pilot") / "data", Path(DEFAULT_MODELS_DIR)
    write_test_set(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = dg.materialize([defs.get_assets_def("pilot_data")], resources=tiny_resources(data, tiny_model_dir, models),
                            run_config={"ops": {"pilot_data": {"config": TINY_PILOT_CONFIG}}},
                            raise_on_error=False)  # fmt: skip
    torch.set_num_threads(threads)
    assert (data / "pilot" / "001" / "session_manifest.json").exists(), result.all_events[-1]
    return models
