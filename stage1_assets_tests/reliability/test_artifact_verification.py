"""Artifact verification: what an asset reads is what its producer wrote, checked on read and never silently merged.

Every artifact another asset consumes has a sidecar manifest (sha256, size, rows) committed with
it. A shard cut short at a line boundary still parses: only the check against its manifest notices,
so the merge refuses it naming the file and both hashes, and re-materializing the shard regenerates
it instead of "reusing" it. Lines that do not parse, or rows without a field the merge needs, are
named by file, line and field. Artifacts are as readable as the umask allows.
"""

import json
import os
import stat

import dagster as dg
import pytest

from stage1_assets.assets.scale_shards import SHARD_PARTITIONS
from stage1_assets.core.artifacts import describe, manifest_path
from stage1_assets.core.io import atomic_write_json, sha256_file
from stage1_assets.core.model_loader import fingerprint_dir
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import ProvenanceResource, Stage1Paths

from .support import (
    passing_pilot,
    seed_shard_instructions,
    step_failure_text,
    synthetic_shard_rows,
    tiny_resources,
    tree,
    write_merge_inputs,
    write_test_set,
)

KEYS = SHARD_PARTITIONS.get_partition_keys()


def merge(data, raise_on_error: bool = False) -> dg.ExecuteInProcessResult:
    resources = {"paths": Stage1Paths(data_dir=str(data)),
                 "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb"))}  # fmt: skip
    return dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources, raise_on_error=raise_on_error)


def outputs(data) -> dict[str, bytes]:
    return {k: v for k, v in tree(data).items() if not k.startswith("provenance.duckdb")}


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_shard_cut_short_is_refused_by_the_merge_and_regenerated_not_reused(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    fingerprint = fingerprint_dir(tiny_model_dir)
    write_test_set(data)
    passing_pilot(data, fingerprint)
    resources = tiny_resources(data, tiny_model_dir)
    config = {"ops": {"scale_shards": {"config": {"count": 4}}}}

    def shard(key: str) -> dict:
        result = dg.materialize([defs.get_assets_def("scale_shards")], partition_key=key, resources=resources,
                                run_config=config)  # fmt: skip
        [event] = result.get_asset_materialization_events()
        return {k: v.value for k, v in event.materialization.metadata.items()}

    for key in KEYS:
        seed_shard_instructions(data, key, 4, fingerprint)
        assert shard(key)["row_count"] == 4
    first = merge(data).get_asset_materialization_events()[0].materialization.metadata["content_hash"].value

    pairs = data / "shards" / "shard-002" / "pairs.jsonl"
    whole = pairs.read_text()
    whole_hash = sha256_file(pairs)
    pairs.write_text("".join(whole.splitlines(keepends=True)[:2]))  # cut at a line boundary: every line parses
    cut_hash = sha256_file(pairs)
    before = outputs(data)

    refused = merge(data)
    assert not refused.success
    message = step_failure_text(refused)
    assert f"{pairs} is not the file scale_shards produced" in message, message
    assert cut_hash in message and whole_hash in message and "4 rows" in message
    assert outputs(data) == before, "a refused merge writes nothing"

    again = shard("shard-002")
    assert not again["reused_existing_shard"] and "not the file scale_shards produced" in again["repaired"]
    assert again["row_count"] == 4 and again["content_hash"] == whole_hash == sha256_file(pairs)
    assert list((data / "shards" / "shard-002" / "damaged").glob("*/pairs.jsonl")), "the cut file is kept aside"
    assert shard("shard-002")["reused_existing_shard"], "a whole shard is reused"
    result = merge(data)
    assert result.get_asset_materialization_events()[0].materialization.metadata["content_hash"].value == first
    # the merge's input hashes are exactly what the shard runs recorded as their outputs
    rows = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT a.name, a.content_hash, r.run_id FROM artifacts a JOIN records r USING (record_id) "
        "WHERE r.asset_key = 'sft_dataset' AND a.role = 'input' AND a.name LIKE 'shard:%' AND r.run_id = $1",
        [result.run_id],
    )
    outputs_of_shards = {
        r["content_hash"]
        for r in ProvenanceStore(data / "provenance.duckdb").query(
            "SELECT a.content_hash FROM artifacts a JOIN records r USING (record_id) "
            "WHERE r.asset_key = 'scale_shards' AND a.role = 'output'"
        )
    }
    assert len(rows) == len(KEYS) and {r["content_hash"] for r in rows} <= outputs_of_shards


def write_raw_shard(data, key: str, text: str) -> None:
    """A shard file as a faulty producer would have committed it: its manifest describes these very bytes."""
    path = data / "shards" / key / "pairs.jsonl"
    path.write_text(text)
    atomic_write_json(manifest_path(path), describe(path, "scale_shards", rows=len(text.splitlines())))


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (
            lambda rows: lines(rows[:1]) + '{"id": "shard-001-000001", "instruction": "Wh\n' + lines(rows[2:]),
            ":2: malformed JSON",
        ),
        (
            lambda rows: lines(rows[:2] + [{k: v for k, v in rows[2].items() if k != "accepted"}] + rows[3:]),
            ":3: field 'accepted' is missing (expected true/false)",
        ),
        (
            lambda rows: lines(rows[:1] + [rows[1] | {"critic_score": "high"}] + rows[2:]),
            ":2: field 'critic_score' must be a number, got \"high\"",
        ),
        (
            lambda rows: lines(rows[:3] + [rows[3] | {"accepted": "yes"}] + rows[4:]),
            ":4: field 'accepted' must be true/false, got \"yes\"",
        ),
    ],
    ids=["malformed-line", "missing-accepted", "score-not-a-number", "accepted-not-a-boolean"],
)
def test_a_corrupt_shard_line_is_named_by_file_line_and_field(tmp_path, corrupt, problem):
    data = tmp_path / "data"
    write_merge_inputs(data, KEYS, per_shard=6)
    write_raw_shard(data, "shard-001", corrupt(synthetic_shard_rows("shard-001", 6, seed=1)))
    before = outputs(data)
    result = merge(data)
    assert not result.success
    message = step_failure_text(result)
    assert f"{data / 'shards' / 'shard-001' / 'pairs.jsonl'}{problem}" in message, message
    assert outputs(data) == before


def test_a_test_set_changed_after_it_was_made_is_refused_with_both_hashes(tmp_path):
    data = tmp_path / "data"
    write_merge_inputs(data, KEYS, per_shard=6)
    tests = data / "test_instructions.jsonl"
    recorded = sha256_file(tests)
    with open(tests, "a") as fh:
        fh.write('{"id": "test-0002", "instruction": "Added by hand?"}\n')
    result = merge(data)
    assert not result.success
    message = step_failure_text(result)
    assert f"{tests} is not the file test_instructions produced" in message, message
    assert recorded in message and sha256_file(tests) in message


def test_a_shard_without_its_manifest_is_refused_not_trusted(tmp_path):
    data = tmp_path / "data"
    write_merge_inputs(data, KEYS, per_shard=6)
    manifest_path(data / "shards" / "shard-000" / "pairs.jsonl").unlink()
    result = merge(data)
    assert not result.success
    assert "pairs.jsonl.manifest.json is missing" in step_failure_text(result)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifacts_are_as_readable_as_the_umask_allows(tmp_path, umask):
    data = tmp_path / "data"
    write_merge_inputs(data, KEYS, per_shard=6)
    old = os.umask(umask)
    try:
        assert merge(data).success
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    written = ["stage1_sft_data.jsonl", "stage1_sft_data.parquet", "sft_removed.jsonl"]
    modes = {name: stat.S_IMODE((data / name).stat().st_mode) for name in written}
    assert modes == dict.fromkeys(written, expected), {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE((data / "stage1_sft_data.jsonl.manifest.json").stat().st_mode) == expected
