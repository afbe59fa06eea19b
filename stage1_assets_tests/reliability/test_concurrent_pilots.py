"""Concurrency (pilots): two `pilot_data` runs at once get two iterations, each with its own data and provenance.

Both are `dagster asset materialize` processes started together on the tiny model (their QC checks
fail, which is not the point: the materialization is committed before the checks are evaluated).
"""

import json

import pytest

from stage1_assets.core import pilot
from stage1_assets.core.io import sha256_file
from stage1_assets.core.provenance import ProvenanceStore

from .support import TINY_PILOT_CONFIG, dagster_env, materialize_cli, open_instance, repo_instance_home, write_test_set

pytestmark = pytest.mark.slow


def test_concurrent_pilots_get_distinct_iterations_and_keep_their_own_data(tmp_path, tiny_model_dir, tiny_pilot_models):
    data = tmp_path / "data"
    write_test_set(data)
    home = repo_instance_home(tmp_path)
    env = dagster_env(home, data, tiny_pilot_models)
    procs = [
        materialize_cli("pilot_data", env, {
            "ops": {"pilot_data": {"config": TINY_PILOT_CONFIG | {"seed": seed}}},
            "resources": {"model": {"config": {"source": str(tiny_model_dir)}}},
        }, tmp_path / f"pilot-{seed}.log")
        for seed in (11, 22)
    ]  # fmt: skip
    outputs = [proc.finish(timeout=600) for proc in procs]

    with open_instance(home) as instance:
        runs = {r.run_id for r in instance.get_runs()}
    assert len(runs) == 2, outputs
    records = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT r.run_id, json_extract(r.metrics_json, '$.iteration') AS iteration, a.content_hash "
        "FROM records r JOIN artifacts a USING (record_id) WHERE r.asset_key = 'pilot_data' AND a.role = 'output'"
    )
    assert {r["run_id"] for r in records} == set(runs), [o[-3000:] for o in outputs]
    iterations = sorted(json.loads(r["iteration"]) for r in records)
    assert iterations == ["001", "002"], "each run takes its own iteration"
    for record in records:
        folder = data / "pilot" / json.loads(record["iteration"])
        manifest = json.loads((folder / "session_manifest.json").read_text())
        claim = json.loads((folder / "run.json").read_text())
        assert manifest["run_id"] == claim["run_id"] == record["run_id"] and claim["status"] == "success"
        # the folder holds this run's pairs: the hash its provenance row records is the file's hash
        assert sha256_file(folder / "pairs.jsonl") == manifest["pairs_sha256"] == record["content_hash"]
        ids = [json.loads(line)["id"] for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert ids and all(i.startswith(f"pilot-{folder.name}-") for i in ids)
    assert pilot.manifests(data / "pilot", check=True), "both manifests match their sidecars"
