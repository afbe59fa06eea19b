"""Concurrency: four shard runs at once in separate processes, plus a reader querying provenance.

The runs are `dagster asset materialize` CLI processes, as the run queue starts them (the instance
admits four shard steps to the `gpu` pool), on the real embedded model with two pairs each.
"""

import json
from datetime import timedelta

import duckdb
import pytest

from .conftest import CONCURRENT_SHARDS, PAIRS_PER_SHARD

pytestmark = pytest.mark.slow
LOCK_ERRORS = ("database is locked", "Could not set lock", "stayed locked")


def test_four_shard_runs_and_a_reader_lose_no_provenance_and_see_no_lock_error(concurrent_shards):
    shards = concurrent_shards
    for key, output in shards.outputs.items():
        assert not any(err in output for err in LOCK_ERRORS), f"{key}: {output[-3000:]}"
    assert shards.reader["errors"] == [], "the provenance reader must never fail"
    counts = shards.reader["counts"]
    assert counts and counts == sorted(counts) and counts[-1] <= len(CONCURRENT_SHARDS), counts

    # the four steps really ran at the same time: every step started before any step finished
    starts = [r["recorded_at"] - timedelta(seconds=r["wall_seconds"]) for r in shards.records]
    assert max(starts) < min(r["recorded_at"] for r in shards.records)

    # every run's record is there, once, with its own seed and the model the pilot used
    assert [r["partition_key"] for r in shards.records] == list(CONCURRENT_SHARDS)
    assert len({r["run_id"] for r in shards.records}) == len(CONCURRENT_SHARDS)
    assert [json.loads(r["params_json"])["seed"] for r in shards.records] == [100_000, 101_000, 102_000, 103_000]
    assert {r["model_fingerprint"] for r in shards.records} == {shards.fingerprint}
    assert shards.materialized == set(CONCURRENT_SHARDS)
    for record in shards.records:
        rows = (shards.data / "shards" / record["partition_key"] / "pairs.jsonl").read_text().splitlines()
        assert len(rows) == PAIRS_PER_SHARD and json.loads(rows[0])["id"] == f"{record['partition_key']}-000000"

    # nothing waits in the spool, and the file opens read-only: no writer left it locked or damaged
    assert not list((shards.data / "provenance.duckdb.spool").glob("*.json"))
    with duckdb.connect(str(shards.data / "provenance.duckdb"), read_only=True) as con:
        query = "SELECT count(*) FROM records r JOIN artifacts a USING (record_id) WHERE r.asset_key = 'scale_shards'"
        assert con.execute(query).fetchone() == (len(CONCURRENT_SHARDS) * 4,)  # 3 inputs + 1 output each
