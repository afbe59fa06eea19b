"""The storage layer and cross-host provenance against a real S3-compatible server on loopback.

Two "hosts" are two local folders mirroring one bucket, as two pods or machines would.
"""

import json
import os
from pathlib import Path

import s3fs

from stage1_assets.core.io import atomic_write_text, sha256_file
from stage1_assets.core.provenance import Artifact, ProvenanceRecord, ProvenanceStore
from stage1_assets.core.storage import ArtifactStore


def objects(bucket: str) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return {key.removeprefix(f"{bucket}/"): fs.cat_file(key) for key in fs.find(bucket)}


def test_without_a_store_everything_stays_local(tmp_path):
    store = ArtifactStore(tmp_path)
    target = atomic_write_text(tmp_path / "a" / "b.txt", "x")
    store.sync(target)
    assert store.fetch(target) == target and store.fetch_dir(tmp_path / "a") == tmp_path / "a"
    assert store.location(target) == str(target)
    assert not (tmp_path / ".stage1-store").exists()


def test_files_written_on_one_host_are_read_on_another(tmp_path, s3_bucket):
    url = f"s3://{s3_bucket}/stage1"
    host_a, host_b = ArtifactStore(tmp_path / "a", url), ArtifactStore(tmp_path / "b", url)
    written = atomic_write_text(tmp_path / "a" / "test_instructions.jsonl", '{"id": "test-0001"}\n')
    host_a.sync(written)
    assert objects(s3_bucket) == {"stage1/test_instructions.jsonl": b'{"id": "test-0001"}\n'}
    assert host_a.location(written) == f"{url}/test_instructions.jsonl"

    fetched = host_b.fetch(tmp_path / "b" / "test_instructions.jsonl")
    assert fetched == tmp_path / "b" / "test_instructions.jsonl"
    assert sha256_file(fetched) == sha256_file(written)
    # unchanged in the store: the local copy is kept, not downloaded again
    os.utime(fetched, ns=(1, 1))
    host_b.fetch(fetched)
    assert fetched.stat().st_mtime_ns == 1
    # replaced by host A: host B's next fetch brings the new version, even at the same size
    host_a.sync(atomic_write_text(written, '{"id": "test-0002"}\n'))
    assert host_b.fetch(fetched).read_text() == '{"id": "test-0002"}\n'
    # absent from the store: the local path is left alone
    assert not host_b.fetch(tmp_path / "b" / "missing.json").exists()


def test_a_relative_data_dir_maps_to_the_same_keys(tmp_path, s3_bucket, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"s3://{s3_bucket}/stage1"
    host = ArtifactStore("data", url)
    host.sync(atomic_write_text(Path("data") / "qc_summary.json", "{}"))
    assert list(objects(s3_bucket)) == ["stage1/qc_summary.json"]
    assert host.location(Path("data") / "qc_summary.json") == f"{url}/qc_summary.json"


def test_a_folder_mirrors_the_store_and_removals_propagate(tmp_path, s3_bucket):
    url = f"s3://{s3_bucket}/stage1"
    host_a, host_b = ArtifactStore(tmp_path / "a", url), ArtifactStore(tmp_path / "b", url)
    shard_a = tmp_path / "a" / "shards" / "shard-000"
    for name in ("spec.json", "batches/batch-00000.jsonl", "batches/batch-00001.jsonl"):
        atomic_write_text(shard_a / name, name)
    atomic_write_text(shard_a / ".pairs.jsonl.123.tmp", "in flight")  # an atomic write's temporary file
    host_a.sync(shard_a)
    names = ("batches/batch-00000.jsonl", "batches/batch-00001.jsonl", "spec.json")
    assert sorted(objects(s3_bucket)) == [f"stage1/shards/shard-000/{n}" for n in names]

    # host B holds a batch from an abandoned attempt that the store does not have: mirroring drops it
    shard_b = tmp_path / "b" / "shards" / "shard-000"
    atomic_write_text(shard_b / "batches" / "batch-00007.jsonl", "old attempt")
    atomic_write_text(shard_b / ".keep.tmp", "hidden files are left alone")
    host_b.fetch_dir(shard_b)
    assert sorted(p.relative_to(shard_b).as_posix() for p in shard_b.rglob("*") if p.is_file()) == [
        ".keep.tmp", "batches/batch-00000.jsonl", "batches/batch-00001.jsonl", "spec.json",
    ]  # fmt: skip
    # a pattern limits what is mirrored
    pilot_a = tmp_path / "a" / "pilot"
    for iteration in ("001", "002"):
        atomic_write_text(pilot_a / iteration / "session_manifest.json", iteration)
        atomic_write_text(pilot_a / iteration / "pairs.jsonl", iteration)
    host_a.sync(pilot_a)
    pilot_b = host_b.fetch_dir(tmp_path / "b" / "pilot", pattern="*/session_manifest.json")
    assert sorted(p.relative_to(pilot_b).as_posix() for p in pilot_b.rglob("*.*")) == [
        "001/session_manifest.json", "002/session_manifest.json",
    ]  # fmt: skip

    # a folder removed locally is removed from the store
    for path in sorted(shard_a.joinpath("batches").iterdir()):
        path.unlink()
    shard_a.joinpath("batches").rmdir()
    host_a.sync(shard_a / "batches")
    assert sorted(k for k in objects(s3_bucket) if "shards" in k) == ["stage1/shards/shard-000/spec.json"]
    # an empty store prefix leaves a host's local folder as it is
    host_b.fetch_dir(tmp_path / "b" / "adapters")
    atomic_write_text(tmp_path / "b" / "adapters" / "x" / "checkpoints" / "state.pt", "resume me")
    host_b.fetch_dir(tmp_path / "b" / "adapters" / "x")
    assert (tmp_path / "b" / "adapters" / "x" / "checkpoints" / "state.pt").exists()


def test_provenance_records_of_every_host_reach_every_duckdb(tmp_path, s3_bucket):
    url = f"s3://{s3_bucket}/stage1"
    host_a = ProvenanceStore(tmp_path / "a" / "provenance.duckdb", store_url=url)
    host_b = ProvenanceStore(tmp_path / "b" / "provenance.duckdb", store_url=url)
    pairs_url = f"{url}/shards/shard-000/pairs.jsonl"
    shard = ProvenanceRecord(asset_key="scale_shards", partition_key="shard-000", run_id="run-a",
                             outputs=[Artifact("shard_pairs", "h-shard", pairs_url)])  # fmt: skip
    host_a.record(shard)
    spool = {k: v for k, v in objects(s3_bucket).items() if k.startswith("stage1/provenance/spool/")}
    assert list(spool) == [f"stage1/provenance/spool/{shard.record_id}.json"]
    assert json.loads(spool[f"stage1/provenance/spool/{shard.record_id}.json"])["run_id"] == "run-a"

    merged = ProvenanceRecord(asset_key="sft_dataset", run_id="run-b", inputs=[Artifact("shard:shard-000", "h-shard")],
                              outputs=[Artifact("sft_dataset", "h-sft")])  # fmt: skip
    host_b.record(merged)
    lineage = host_b.lineage("h-sft")
    assert [(r["asset_key"], r["run_id"]) for r in lineage] == [("sft_dataset", "run-b"), ("scale_shards", "run-a")]
    # host A pulls host B's record; ingesting again adds nothing
    rows = host_a.query("SELECT record_id, asset_key FROM records ORDER BY asset_key")
    assert [r["asset_key"] for r in rows] == ["scale_shards", "sft_dataset"]
    assert host_a.ingest() == 0 and host_b.ingest() == 0
    assert not list(host_a.spool_dir.glob("*.json")) and not list(host_b.spool_dir.glob("*.json"))
    # a reader with an empty database (a laptop, a new pod) sees everything
    reader = ProvenanceStore(tmp_path / "c" / "provenance.duckdb", store_url=url)
    assert len(reader.query("SELECT * FROM records")) == 2
    [output] = reader.query("SELECT path FROM artifacts WHERE role = 'output' AND name = 'shard_pairs'")
    assert output["path"] == pairs_url
