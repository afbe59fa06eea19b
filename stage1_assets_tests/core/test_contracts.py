"""The typed models of the JSON documents that cross asset boundaries: the pilot's session manifest, the
QC summary and the adapter record. Each round-trips exactly (same keys, same order, same bytes once written)
and refuses a missing or mistyped key, naming the file and the key."""

import json

import pytest

from stage1_assets.core import pilot
from stage1_assets.core.adapter import AdapterRecord
from stage1_assets.core.artifacts import ContractError, Staging
from stage1_assets.core.config import CriticParams, InstructionSampling, QCThresholds, ResponseSampling
from stage1_assets.core.io import InputFileError, atomic_write_json
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.core.qc import DatasetQCSummary, PilotQCSummary, QCSummary, qc_summary

PARAMS = GenerationParams(InstructionSampling(), ResponseSampling(max_new_tokens=64), CriticParams(), batch_size=4)
# a session manifest exactly as pilot_data has always written it (keys in its order)
MANIFEST = {
    "iteration": "003", "run_id": "run-1", "model_fingerprint": "fp", "prompt_version": "pv",
    "generation": PARAMS.as_dict(), "critic_version": "cv", "qc_thresholds": QCThresholds().model_dump(),
    "seed": 2024, "count": 16, "test_set_sha256": "t" * 64, "pairs_sha256": "p" * 64, "checks_passed": True,
}  # fmt: skip


def rows(n=12):
    return [{"id": f"r-{i}", "instruction": f"instruction {i}", "response": f"answer number {i}.",
             "finish_reason": "length" if i == 0 else "stop", "response_tokens": 5 + i, "accepted": i % 4 != 0,
             "critic_score": 0.5 + i / 10} for i in range(n)]  # fmt: skip


def dataset_summary() -> dict:
    return qc_summary(rows(), QCThresholds()) | {
        "per_shard": {"shard-000": {"pairs": 12, "passed": True}},
        "test_overlap": {"count": 0, "method": "duckdb-sql-audit", "examples": [], "sft_rows": 9},
        "sft_dataset_sha256": "s" * 64, "test_set_sha256": "t" * 64,
    }  # fmt: skip


def written(tmp_path, obj) -> bytes:
    return atomic_write_json(tmp_path / "doc.json", obj).read_bytes()


def test_session_manifest_round_trips_exactly(tmp_path):
    manifest = pilot.SessionManifest.from_dict(MANIFEST, "session_manifest.json")
    assert manifest.generation == PARAMS and manifest.seed == 2024
    assert list(manifest.to_dict().items()) == list(MANIFEST.items())  # keys, order and values
    assert written(tmp_path, manifest.to_dict()) == written(tmp_path, MANIFEST)
    # an older manifest (only the fields shards rely on) round-trips too, without the others
    older = {k: MANIFEST[k] for k in pilot.MANIFEST_FIELDS}
    assert pilot.SessionManifest.from_dict(older).to_dict() == older


@pytest.mark.parametrize("field", ["model_fingerprint", "generation", "checks_passed"])
def test_session_manifest_names_the_file_and_a_missing_key(tmp_path, field):
    path = atomic_write_json(tmp_path / "pilot/001/session_manifest.json", {**MANIFEST})
    atomic_write_json(path, {k: v for k, v in json.loads(path.read_text()).items() if k != field})
    with pytest.raises(ContractError, match=rf"{path}: field '{field}' is missing"):
        pilot.read_manifest(path, check=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": "7"}, r"field 'seed' must be an integer"),
        ({"generation": {**PARAMS.as_dict(), "batch_size": "4"}}, r"field 'batch_size' must be an integer"),
        ({"generation": {**PARAMS.as_dict(), "critic": {"signal": "vibes"}}}, r"generation.critic: .*vibes"),
    ],
)
def test_session_manifest_names_a_mistyped_key(change, message):
    with pytest.raises(InputFileError, match=rf"pilot/007/session_manifest.json: .*{message}"):
        pilot.SessionManifest.from_dict(MANIFEST | change, "pilot/007/session_manifest.json")


def test_qc_summaries_round_trip_exactly(tmp_path):
    base = qc_summary(rows(), QCThresholds())
    assert QCSummary.from_dict(base).to_dict() == base
    data = dataset_summary()
    summary = DatasetQCSummary.from_dict(data, "qc_summary.json")
    assert list(summary.to_dict()) == list(data) and summary.to_dict() == data
    assert written(tmp_path, summary.to_dict()) == written(tmp_path, data)
    assert summary.metrics["token_limit_rate"].flagged_ids == ["r-0"] and summary.test_overlap.sft_rows == 9
    piloted = base | {"critic_discrimination": {"rank_agreement": 0.9, "passed": True}, "critic_quality": {}}
    assert list(PilotQCSummary.from_dict(piloted).to_dict().items()) == list(piloted.items())


@pytest.mark.parametrize("where", ["top", "metric", "test_overlap"])
def test_qc_summary_names_the_file_and_the_missing_key(tmp_path, where):
    data = dataset_summary()
    if where == "top":
        del data["sft_dataset_sha256"]
        message = r"qc_summary.json: field 'sft_dataset_sha256' is missing"
    elif where == "metric":
        del data["metrics"]["pair_acceptance"]["rule"]
        message = r"qc_summary.json: metrics.pair_acceptance: field 'rule' is missing"
    else:
        data["test_overlap"]["count"] = "none"
        message = r"qc_summary.json: test_overlap: field 'count' must be an integer"
    path = atomic_write_json(tmp_path / "qc_summary.json", data)
    with pytest.raises(ContractError, match=message):
        DatasetQCSummary.read(path)


def test_training_refusal_says_why_and_reads_the_test_set_last():
    summary = DatasetQCSummary.from_dict(dataset_summary())
    asked = []

    def test_hash():
        asked.append(1)
        return "t" * 64

    assert summary.training_refusal("qc.json", "sft.jsonl", "other", test_hash).startswith("qc.json describes another")
    assert not asked
    failed = dataset_summary()
    failed["metrics"]["pair_acceptance"]["passed"] = False
    refusal = DatasetQCSummary.from_dict(failed).training_refusal("qc.json", "sft.jsonl", "s" * 64, test_hash)
    assert "failed QC: pair_acceptance = " in refusal and not asked
    assert summary.training_refusal("qc.json", "sft.jsonl", "s" * 64, test_hash) == "" and asked
    assert "another test set" in summary.training_refusal("qc.json", "sft.jsonl", "s" * 64, lambda: "x")


def test_adapter_record_round_trips_and_refuses_a_changed_adapter(tmp_path):
    data = {"spec_hash": "0123abcd", "adapter_sha256": "a" * 64, "base_model": "fp", "sft_dataset_sha256": "s" * 64}
    record = AdapterRecord.from_dict(data)
    assert list(record.to_dict().items()) == list(data.items())
    with Staging() as staging:  # as adapter_checkpoint writes it
        staging.write_json(tmp_path / "latest.json", record.to_dict())
        staging.commit_locally()
    assert AdapterRecord.read(tmp_path / "latest.json") == record
    record.check(tmp_path, "a" * 64)
    with pytest.raises(ContractError, match="changed after training"):
        record.check(tmp_path, "b" * 64)
    path = atomic_write_json(tmp_path / "latest.json", {k: v for k, v in data.items() if k != "spec_hash"})
    with pytest.raises(
        ContractError, match=rf"{path}: field 'spec_hash' is missing .*re-materialize adapter_checkpoint"
    ):
        AdapterRecord.read(path)
