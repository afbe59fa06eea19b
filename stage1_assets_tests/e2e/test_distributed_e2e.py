"""The pipeline across "hosts" on real servers: PostgreSQL as the Dagster instance, an S3 server as the artifact store.

Each host has its own empty local folder and shares only the instance (deploy/dagster.yaml) and the bucket:
host A runs the pilot, hosts B and C each run a shard in their own `dagster` process configured by
environment alone (concurrently), host A the last shard, and host D, which produced nothing, the merge and
its QC. Everything D reads must come through the store, and its provenance through the store's shared log.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import s3fs

from stage1_assets.core.io import atomic_write_jsonl
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import BaseModelResource, ProvenanceResource, Stage1Paths

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SHARDS = ("shard-000", "shard-001", "shard-002")
SHARD_CONFIG = {"ops": {"scale_shards": {"config": {"count": 2}}}}
# the QC gate is not what this test is about (test_pilot_e2e is): with a few pairs, one runaway is 17%
LENIENT_QC = {"max_runaway_rate": 1.0, "max_token_limit_rate": 1.0, "max_median_response_tokens": 1000,
              "max_delimiter_leakage": 1000, "min_acceptance_rate": 0.0}  # fmt: skip
# a held-out set from a file and a small pilot with short responses (the shards reuse its parameters):
# this test is about where things go, not about generating them (test_pilot_e2e is)
TEST_SET = ["What causes ocean tides on Earth?", "How do vaccines train the immune system?",
            "Why is the sky blue during the day?", "What is the difference between weather and climate?"]  # fmt: skip
PILOT_CONFIG = {"count": 4, "response_sampling": {"max_new_tokens": 40},
                "qc": LENIENT_QC | {"min_critic_discrimination": 0.5}}  # fmt: skip


def test_pilot_shards_and_merge_across_hosts(tmp_path, monkeypatch, postgres_server, s3_bucket, embedded_dir):
    store = f"s3://{s3_bucket}/stage1"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    for key, value in postgres_server.env().items():
        monkeypatch.setenv(key, value)

    def resources(host: str) -> dict:
        data = tmp_path / host
        return {
            "model": BaseModelResource(models_dir=str(embedded_dir.parent)),
            "paths": Stage1Paths(data_dir=str(data), artifact_store=store),
            "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb"), artifact_store=store),
        }

    assets = {k: defs.get_assets_def(k) for k in ("base_model", "test_instructions", "pilot_data", "scale_shards",
                                                   "sft_dataset", "qc_summary")}  # fmt: skip
    instance = dg.DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"

    # host A: base model, held-out set and pilot (its blocking checks must pass for the shards to start)
    test_set = atomic_write_jsonl(tmp_path / "held_out.jsonl", [{"instruction": t} for t in TEST_SET])
    upstream_config = {"ops": {"test_instructions": {"config": {"source_file": str(test_set)}},
                               "pilot_data": {"config": PILOT_CONFIG}}}  # fmt: skip
    upstream = dg.materialize([assets[k] for k in ("base_model", "test_instructions", "pilot_data")],
                              instance=instance, resources=resources("host-a"), run_config=upstream_config)  # fmt: skip
    assert upstream.success

    # hosts B and C: one shard each, in their own processes, configured by environment only
    env = {**os.environ, "DAGSTER_HOME": str(home), "STAGE1_ARTIFACT_STORE": store, "STAGE1_PROFILE": "local",
           "STAGE1_MODELS_DIR": str(embedded_dir.parent), "OMP_NUM_THREADS": "1"}  # fmt: skip
    procs = {
        key: subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                               "stage1_assets.definitions", "--select", "scale_shards", "--partition", key,
                               "--config-json", json.dumps(SHARD_CONFIG)],
                              cwd=REPO, env={**env, "STAGE1_DATA_DIR": str(tmp_path / host)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for key, host in (("shard-000", "host-b"), ("shard-001", "host-c"))
    }  # fmt: skip
    last = dg.materialize([assets["scale_shards"]], instance=instance, resources=resources("host-a"),
                          partition_key="shard-002", run_config=SHARD_CONFIG)  # fmt: skip
    assert last.success
    for proc in procs.values():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]

    # host D: nothing local; the merge and its QC read every shard from the store
    downstream = dg.materialize([assets["sft_dataset"], assets["qc_summary"]], instance=instance,
                                resources=resources("host-d"),
                                run_config={"ops": {"qc_summary": {"config": LENIENT_QC}}})  # fmt: skip
    assert downstream.success
    instance.dispose()

    # the instance: every run and materialization is in PostgreSQL
    with dg.DagsterInstance.from_config(str(home)) as fresh:
        runs = fresh.get_runs()
        assert len(runs) == 5 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert fresh.get_materialized_partitions(dg.AssetKey("scale_shards")) == set(SHARDS)
        for key in ("base_model", "test_instructions", "pilot_data", "sft_dataset", "qc_summary"):
            assert fresh.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    pg = postgres_server
    con = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=pg.db_name)
    with con, con.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
        assert cur.fetchall() == [("SUCCESS", 5)]
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cur.fetchone()[0] == 8
    con.close()

    # the bucket: exactly the finished artifacts (no shard checkpoints, no temporary files)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    keys = {k.removeprefix(f"{s3_bucket}/stage1/") for k in fs.find(s3_bucket)}
    spool = {k for k in keys if k.startswith("provenance/spool/")}
    # (every file another asset reads travels with its manifest, `<file>.manifest.json`)
    shard_names = ("spec.json", "instructions.json", "pairs.jsonl", "pairs.jsonl.manifest.json", "pairs.parquet")
    shard_files = {f"shards/{s}/{n}" for s in SHARDS for n in shard_names}
    pilot_names = ("pairs.jsonl", "pairs.parquet", "qc_summary.json", "run.json", "session_manifest.json",
                   "session_manifest.json.manifest.json")  # fmt: skip
    pilot_files = {f"pilot/001/{n}" for n in pilot_names}
    assert keys - spool == {"base_model.json", "test_instructions.jsonl", "test_instructions.jsonl.manifest.json",
                            *pilot_files, *shard_files, "stage1_sft_data.jsonl", "stage1_sft_data.jsonl.manifest.json",
                            "stage1_sft_data.parquet", "sft_removed.jsonl", "qc_summary.json",
                            "qc_summary.json.manifest.json", "qc_response_lengths.png"}  # fmt: skip

    # provenance: host D's DuckDB, fed by the shared log, holds every host's records ...
    prov = ProvenanceStore(tmp_path / "host-d" / "provenance.duckdb", store_url=store)
    records = prov.query("SELECT record_id, asset_key, partition_key, run_id FROM records")
    assert sorted((r["asset_key"], r["partition_key"]) for r in records) == sorted(
        [("base_model", None), ("test_instructions", None), ("pilot_data", None), ("sft_dataset", None),
         ("qc_summary", None)] + [("scale_shards", s) for s in SHARDS]
    )  # fmt: skip
    assert spool == {f"provenance/spool/{r['record_id']}.json" for r in records}
    assert len({r["run_id"] for r in records if r["asset_key"] == "scale_shards"}) == 3
    # ... and every output it names is in the bucket with exactly the recorded content hash
    outputs = prov.query("SELECT name, path, content_hash FROM artifacts WHERE role = 'output' AND path LIKE 's3://%'")
    assert len(outputs) == 7
    for out in outputs:
        assert hashlib.sha256(fs.cat_file(out["path"])).hexdigest() == out["content_hash"], out["name"]
    [sft] = [o for o in outputs if o["name"] == "sft_dataset"]
    lineage = prov.lineage(sft["content_hash"])
    assert sorted(r["partition_key"] for r in lineage if r["asset_key"] == "scale_shards") == list(SHARDS)
    assert {"base_model", "pilot_data", "test_instructions"} <= {r["asset_key"] for r in lineage}
    # host D's merge read the very bytes the shard hosts wrote
    for shard, host in (("shard-000", "host-b"), ("shard-001", "host-c"), ("shard-002", "host-a")):
        local = (tmp_path / host / "shards" / shard / "pairs.jsonl").read_bytes()
        assert (tmp_path / "host-d" / "shards" / shard / "pairs.jsonl").read_bytes() == local
