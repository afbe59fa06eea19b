"""Idempotence: unchanged inputs and parameters give the same content hash; a changed one, a new artifact.

Which of the two: a shard whose spec (count, seed, parameters, model, prompts) is unchanged is
*reused* (`reused_existing_shard`, no generation); the merge is *reproduced* (recomputed, and
deterministic, so byte-identical). A finished shard is replaced by one of another seed only with
`overwrite`, and kept aside. Runs on the shards the concurrency test generated.
"""

import dagster as dg
import pytest

from stage1_assets.core.io import sha256_file
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import BaseModelResource, ProvenanceResource, Stage1Paths

from .conftest import PAIRS_PER_SHARD

pytestmark = pytest.mark.slow
SHARD = "shard-000"


def test_unchanged_shard_is_reused_merge_reproduced_and_a_new_seed_leaves_the_old_artifact_traceable(
    concurrent_shards, embedded_dir
):
    data = concurrent_shards.data
    resources = {
        "model": BaseModelResource(models_dir=str(embedded_dir.parent)),
        "paths": Stage1Paths(data_dir=str(data)),
        "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb")),
    }
    store = ProvenanceStore(data / "provenance.duckdb")

    def shard(seed_base: int, **options) -> dict:
        config = {"count": PAIRS_PER_SHARD, "seed_base": seed_base, **options}
        result = dg.materialize([defs.get_assets_def("scale_shards")], partition_key=SHARD, resources=resources,
                                run_config={"ops": {"scale_shards": {"config": config}}})  # fmt: skip
        [event] = result.get_asset_materialization_events()
        return {k: v.value for k, v in event.materialization.metadata.items()}

    def merge() -> str:
        result = dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources)
        [event] = result.get_asset_materialization_events()
        return event.materialization.metadata["content_hash"].value

    old_shard = sha256_file(data / "shards" / SHARD / "pairs.jsonl")
    again = shard(seed_base=100_000)  # the seed_base the concurrent run used
    assert again["reused_existing_shard"] and again["content_hash"] == old_shard
    old_merge = merge()
    assert merge() == old_merge, "an unchanged merge reproduces its bytes"

    changed = shard(seed_base=200_000, overwrite=True)  # without overwrite: refused (test_parameter_change)
    assert not changed["reused_existing_shard"] and changed["seed"] == 200_000
    kept = data / "shards" / SHARD / "superseded" / changed["set_aside"].rsplit("/", 1)[1] / "pairs.jsonl"
    assert sha256_file(kept) == old_shard, "the replaced shard is kept under its spec hash"
    assert changed["content_hash"] != old_shard
    assert sha256_file(data / "shards" / SHARD / "pairs.jsonl") == changed["content_hash"]
    new_merge = merge()
    assert new_merge != old_merge

    history = store.query(
        "SELECT r.run_id, json_extract(r.params_json, '$.seed')::INT AS seed, "
        "json_extract(r.metrics_json, '$.reused')::BOOLEAN AS reused, a.content_hash FROM records r "
        "JOIN artifacts a USING (record_id) WHERE r.partition_key = $1 AND a.role = 'output' ORDER BY r.recorded_at",
        [SHARD],
    )
    assert [(h["seed"], h["reused"], h["content_hash"]) for h in history] == [
        (100_000, False, old_shard), (100_000, True, old_shard), (200_000, False, changed["content_hash"]),
    ]  # fmt: skip
    merges = store.query(
        "SELECT a.content_hash FROM records r JOIN artifacts a USING (record_id) "
        "WHERE r.asset_key = 'sft_dataset' AND a.role = 'output' ORDER BY r.recorded_at"
    )
    assert [m["content_hash"] for m in merges] == [old_merge, old_merge, new_merge]
    # the replaced merge still leads back to the shard run that made its input, with that run's seed
    lineage = store.lineage(old_merge)
    old_shard_runs = {h["run_id"] for h in history if h["content_hash"] == old_shard}
    assert {r["run_id"] for r in lineage if r["asset_key"] == "scale_shards" and r["partition_key"] == SHARD} <= (
        old_shard_runs
    )
    assert any(r["partition_key"] == SHARD and r["output_hash"] == old_shard for r in lineage)
    assert all(r["output_hash"] != changed["content_hash"] for r in lineage)
