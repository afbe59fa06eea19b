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
REPO = Path(__file__).resolve().parents[2]


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
    iff, qa, judge = report["instruction_following"], report["reference_qa"], report["judge"]
    assert iff["n"] >= 40 and qa["n"] >= 20  # the local profile says something
    for section, rate in ((iff, "pass_rate"), (qa, "accuracy")):
        for system in ("sft", "base"):
            lo, hi = section[system]["ci95"]
            assert 0 <= lo <= section[system][rate] <= hi <= 1 and hi > lo
        assert 0 <= section["mcnemar_p"] <= 1
    assert len(iff["by_type"]) >= 12
    test_ids = [json.loads(line)["id"] for line in (data / "test_instructions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in judge["rows"]] == test_ids
    assert judge["wins"] + judge["ties"] + judge["losses"] == len(test_ids)
    assert judge["is_training_filter"]  # the default judge is the critic that filtered the data
    print("evaluation:", {k: (v["sft"], v["base"], v["mcnemar_p"]) for k, v in (("if", iff), ("qa", qa))})
    markdown = (data / "eval_report.md").read_text()
    assert "## Headline" in markdown and "critic that filtered the training data" in markdown
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

    # from the report all the way back: the adapter, its data, the shards, the pilot and the model
    [evaluated] = store.query(
        """SELECT a.content_hash FROM artifacts a JOIN records r USING (record_id)
           WHERE r.asset_key = 'eval_report' AND a.role = 'output'"""
    )
    from_report = {r["asset_key"] for r in store.lineage(evaluated["content_hash"])}
    assert {"eval_report", "adapter_checkpoint", "sft_dataset", "scale_shards", "pilot_data", "base_model",
            "test_instructions"} <= from_report  # fmt: skip

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("scale_shards")) == {
            "shard-000", "shard-001", "shard-002",
        }  # fmt: skip
        for key in ("base_model", "test_instructions", "pilot_data", "sft_dataset", "qc_summary",
                    "adapter_checkpoint", "eval_report"):  # fmt: skip
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None
