"""The README's main job on the real embedded model: the whole graph, local profile, one command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from stage1_assets.core.provenance import ProvenanceStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_main_job_materializes_the_whole_graph(tmp_path):
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "STAGE1_DATA_DIR": str(data), "STAGE1_PROFILE": "local"}
    proc = subprocess.run([sys.executable, "-m", "stage1_assets.run_all"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[stage1] whole graph materialized" in proc.stdout
    assert "FAIL" not in proc.stdout

    sft = [json.loads(line) for line in (data / "stage1_sft_data.jsonl").read_text().splitlines()]
    assert sft and all(r["instruction"] and r["response"] for r in sft)
    assert len({r["id"] for r in sft}) == len(sft)
    qc = json.loads((data / "qc_summary.json").read_text())
    assert set(qc["per_shard"]) == {"shard-000", "shard-001", "shard-002"}
    assert qc["test_overlap"]["count"] == 0 and qc["pairs"] == 48
    assert (data / "stage1_sft_data.parquet").exists() and (data / "qc_response_lengths.png").exists()

    report = json.loads((data / "eval_report.json").read_text())
    test_ids = [json.loads(line)["id"] for line in (data / "test_instructions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in report["pairs"]] == test_ids
    assert report["wins"] + report["ties"] + report["losses"] == len(test_ids)
    assert 0 <= report["win_rate_ci95"][0] <= report["win_rate"] <= report["win_rate_ci95"][1] <= 1
    assert report["judge_control_accuracy"] >= 0.75
    assert "# Paired evaluation" in (data / "eval_report.md").read_text()
    adapter_dir = Path(report["adapter_dir"])
    assert (adapter_dir / "adapter_config.json").exists() and (adapter_dir / "training_metrics.json").exists()

    store = ProvenanceStore(data / "provenance.duckdb")
    [dataset] = store.query("SELECT record_id FROM records WHERE asset_key = 'sft_dataset'")
    dataset_hash = store.query(
        "SELECT content_hash FROM artifacts WHERE record_id = $1 AND role = 'output'", [dataset["record_id"]]
    )[0]["content_hash"]
    lineage = store.lineage(dataset_hash)
    shards = [r for r in lineage if r["asset_key"] == "scale_shards"]
    assert sorted(r["partition_key"] for r in shards) == ["shard-000", "shard-001", "shard-002"]
    assert all(r["run_id"] and r["model_fingerprint"] and r["params_hash"] for r in shards)
    assert {"base_model", "pilot_data", "test_instructions"} <= {r["asset_key"] for r in lineage}

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("scale_shards")) == {
            "shard-000", "shard-001", "shard-002",
        }  # fmt: skip
        for key in ("base_model", "test_instructions", "pilot_data", "sft_dataset", "qc_summary",
                    "adapter_checkpoint", "eval_report"):  # fmt: skip
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None
