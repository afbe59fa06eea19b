import json
import multiprocessing as mp
from pathlib import Path

from stage1_assets.core.provenance import Artifact, ProvenanceRecord, ProvenanceStore


def test_round_trip_keeps_every_field(tmp_path):
    store = ProvenanceStore(tmp_path / "prov.duckdb")
    rec = ProvenanceRecord(
        asset_key="pilot_data", run_id="run-1", partition_key=None, model_fingerprint="fp",
        params={"temperature": 0.4, "nested": {"a": 1}}, prompt_version="p1", row_count=16,
        metrics={"runaway_rate": 0.0}, device="cpu", wall_seconds=1.5, accelerator_seconds=0.0,
        inputs=[Artifact("base_model", "fp")], outputs=[Artifact("pairs", "h1", "/x/pairs.jsonl")],
    )  # fmt: skip
    store.record(rec)
    [row] = store.query("SELECT * FROM records")
    assert row["asset_key"] == "pilot_data" and row["row_count"] == 16
    assert json.loads(row["params_json"]) == {"temperature": 0.4, "nested": {"a": 1}}
    assert json.loads(row["metrics_json"]) == {"runaway_rate": 0.0}
    arts = store.query("SELECT role, name, path, content_hash FROM artifacts ORDER BY role")
    assert arts == [
        {"role": "input", "name": "base_model", "path": None, "content_hash": "fp"},
        {"role": "output", "name": "pairs", "path": "/x/pairs.jsonl", "content_hash": "h1"},
    ]
    assert not list(store.spool_dir.glob("*.json")), "spool must be empty after ingestion"


def test_lineage_walks_back_to_the_base_model(tmp_path):
    store = ProvenanceStore(tmp_path / "prov.duckdb")
    store.record(ProvenanceRecord("base_model", outputs=[Artifact("base_model", "fp")]))
    store.record(ProvenanceRecord("test_instructions", inputs=[Artifact("base_model", "fp")],
                                  outputs=[Artifact("test_instructions", "t1")]))  # fmt: skip
    store.record(ProvenanceRecord("pilot_data", inputs=[Artifact("base_model", "fp"), Artifact("test", "t1")],
                                  outputs=[Artifact("pairs", "p1")]))  # fmt: skip
    store.record(ProvenanceRecord("unrelated", outputs=[Artifact("x", "zzz")]))
    rows = store.lineage("p1")
    assert [(r["depth"], r["asset_key"]) for r in rows] == [
        (0, "pilot_data"), (1, "base_model"), (1, "test_instructions"),
    ]  # fmt: skip
    assert store.lineage("nothing") == []


def _writer(db_path: str, worker: int, count: int) -> None:
    store = ProvenanceStore(Path(db_path))
    for i in range(count):
        store.record(ProvenanceRecord("scale_shards", partition_key=f"shard-{worker:03d}", row_count=i,
                                      outputs=[Artifact("pairs", f"{worker}-{i}")]))  # fmt: skip


def test_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "prov.duckdb"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    reader = ProvenanceStore(db)
    seen_while_writing = [reader.query("SELECT count(*) AS n FROM records")[0]["n"] for _ in range(5)]
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert seen_while_writing == sorted(seen_while_writing)
    rows = reader.query("SELECT partition_key, count(*) AS n FROM records GROUP BY 1 ORDER BY 1")
    assert rows == [{"partition_key": f"shard-{w:03d}", "n": 50} for w in range(4)]
    assert reader.query("SELECT count(*) AS n FROM artifacts")[0]["n"] == 200
    assert not list(reader.spool_dir.glob("*.json"))


def test_record_survives_a_locked_database(tmp_path):
    """A record written while another process holds the lock stays spooled, then lands."""
    db = tmp_path / "prov.duckdb"
    ctx = mp.get_context("spawn")
    store = ProvenanceStore(db, lock_timeout_s=0.2)
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(db), ready, release))
    holder.start()
    assert ready.wait(60)
    store.record(ProvenanceRecord("pilot_data", row_count=3))
    assert len(list(store.spool_dir.glob("*.json"))) == 1
    release.set()
    holder.join(60)
    assert store.query("SELECT row_count FROM records") == [{"row_count": 3}]


def _hold_lock(db_path: str, ready, release) -> None:
    import duckdb

    con = duckdb.connect(db_path)
    ready.set()
    release.wait(60)
    con.close()


def test_recent_materializations_are_the_assets_own_newest_first(tmp_path):
    store = ProvenanceStore(tmp_path / "prov.duckdb")
    for n in range(4):
        store.record(ProvenanceRecord(asset_key="pilot_data", params={"n": n}, metrics={"iteration": f"{n:03d}"},
                                      recorded_at=f"2026-01-0{n + 1}T00:00:00+00:00"))  # fmt: skip
    store.record(ProvenanceRecord(asset_key="pilot_data", kind="check", check_name="runaway_rate"))
    store.record(ProvenanceRecord(asset_key="scale_shards", params={"n": 9}))
    recent = store.recent_materializations("pilot_data", limit=3)
    assert recent == [({"n": n}, {"iteration": f"{n:03d}"}) for n in (3, 2, 1)]
    assert store.recent_materializations("eval_report", limit=3) == []
