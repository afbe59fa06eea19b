"""base_model -> test_instructions -> pilot_data and its checks, on the real embedded model."""

import json

import dagster as dg
import pytest

from stage1_assets.core import pilot
from stage1_assets.core.config import CriticParams
from stage1_assets.core.critic import critic_fingerprint
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.core.qc import PilotQCSummary
from stage1_assets.definitions import defs
from stage1_assets.resources import BaseModelResource, ProvenanceResource, Stage1Paths

pytestmark = pytest.mark.slow

CHECKS = {"runaway_rate", "token_limit_rate", "median_response_tokens", "delimiter_leakage", "pair_acceptance",
          "length_bias", "critic_quality", "critic_discrimination"}  # fmt: skip


@dg.asset(deps=["pilot_data"])
def downstream_of_pilot() -> None:
    """Stands in for scale generation: must not run when a blocking pilot check fails."""


def resources(tmp_path, embedded_dir):
    return {
        "model": BaseModelResource(models_dir=str(embedded_dir.parent)),
        "paths": Stage1Paths(data_dir=str(tmp_path)),
        "provenance": ProvenanceResource(db_path=str(tmp_path / "provenance.duckdb")),
    }


def assets():
    return [defs.get_assets_def(k) for k in ("base_model", "test_instructions", "pilot_data")] + [downstream_of_pilot]


def test_pilot_end_to_end_then_strict_thresholds_block_downstream(tmp_path, embedded_dir):
    instance = dg.DagsterInstance.ephemeral()
    # the pilot runs at the local profile's default size and seeds (the README main job's pilot)
    run_config = {"ops": {"test_instructions": {"config": {"count": 4}}}}
    result = dg.materialize(assets(), resources=resources(tmp_path, embedded_dir), run_config=run_config,
                            instance=instance, raise_on_error=False)  # fmt: skip
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == CHECKS
    failed = {name: e.metadata for name, e in checks.items() if not e.passed}
    assert result.success, f"pilot checks failed on the embedded model: {failed}"
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"base_model", "test_instructions", "pilot_data", "downstream_of_pilot"}

    test_rows = [json.loads(line) for line in (tmp_path / "test_instructions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in test_rows] == ["test-0001", "test-0002", "test-0003", "test-0004"]
    pairs = [json.loads(line) for line in (tmp_path / "pilot/001/pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 16 and all(p["response"] and p["finish_reason"] in ("stop", "eos", "length") for p in pairs)
    test_set = {r["instruction"] for r in test_rows}
    assert not test_set & {p["instruction"] for p in pairs}
    manifest = json.loads((tmp_path / "pilot/001/session_manifest.json").read_text())
    assert manifest["checks_passed"] and manifest["generation"]["response"]["temperature"] == 0.4
    assert (tmp_path / "pilot/001/pairs.parquet").exists()
    summary = json.loads((tmp_path / "pilot/001/qc_summary.json").read_text())
    assert checks["runaway_rate"].metadata["value"].value == summary["metrics"]["runaway_rate"]["value"]
    quality = checks["critic_quality"].metadata
    assert quality["pairwise_accuracy"].value == summary["critic_quality"]["pairwise_accuracy"] >= 0.85
    assert "| bad kind |" in quality["per_kind"].value
    assert manifest["generation"]["critic"] == CriticParams().model_dump()
    assert manifest["critic_version"] == critic_fingerprint()
    # what the pilot wrote is exactly what its typed models give back (shards and training read them)
    assert pilot.read_manifest(tmp_path / "pilot/001/session_manifest.json").to_dict() == manifest
    assert PilotQCSummary.read(tmp_path / "pilot/001/qc_summary.json").to_dict() == summary

    store = ProvenanceStore(tmp_path / "provenance.duckdb")
    rows = store.query(
        "SELECT asset_key, model_fingerprint, prompt_version, row_count FROM records ORDER BY recorded_at"
    )
    assert [r["asset_key"] for r in rows] == ["base_model", "test_instructions", "pilot_data"]
    assert len({r["model_fingerprint"] for r in rows}) == 1
    lineage = store.lineage(manifest["pairs_sha256"])
    assert [r["asset_key"] for r in lineage] == ["pilot_data", "base_model", "test_instructions"]

    strict = {"ops": {"pilot_data": {"config": {"count": 6, "qc": {"max_median_response_tokens": 1}}}}}
    blocked = dg.materialize(assets(), selection=["pilot_data", "downstream_of_pilot"], instance=instance,
                             resources=resources(tmp_path, embedded_dir), run_config=strict,
                             raise_on_error=False)  # fmt: skip
    assert not blocked.success
    failed = {e.check_name: e for e in blocked.get_asset_check_evaluations() if not e.passed}
    assert "median_response_tokens" in failed
    strict_check = failed["median_response_tokens"].metadata
    assert strict_check["threshold"].value == 1 and strict_check["flagged_count"].value > 0
    assert "| id | instruction |" in strict_check["flagged_examples"].value
    assert "downstream_of_pilot" not in {
        e.asset_key.to_user_string() for e in blocked.get_asset_materialization_events()
    }
    assert json.loads((tmp_path / "pilot/002/session_manifest.json").read_text())["checks_passed"] is False
    assert pilot.latest_passing_manifest(tmp_path / "pilot").iteration == "001"
    pilot_records = store.query("SELECT metrics_json FROM records WHERE asset_key = 'pilot_data'")
    assert len(pilot_records) == 2
