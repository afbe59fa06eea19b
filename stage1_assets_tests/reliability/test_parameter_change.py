"""Parameter change: a run config that changes a finished shard's parameters never destroys it silently.

Without `overwrite` the run is refused, naming what differs, and nothing changes: the shard's
files, its provenance, and what Dagster shows as materialized all still agree. With `overwrite:
true` the new shard replaces it and the old one is kept under `superseded/<spec hash>/`.
On the tiny model, which writes its own instructions when a rare stop sequence ends them.
"""

import dagster as dg
import pytest

from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.io import sha256_file
from stage1_assets.core.model_loader import fingerprint_dir
from stage1_assets.core.pairs import GenerationParams
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs

from .support import passing_pilot, step_failure_text, tiny_resources, tree, write_test_set

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
KEY = "shard-001"
PARAMS = GenerationParams(InstructionSampling(stop_sequences=["q"], max_new_tokens=40),
                          ResponseSampling(max_new_tokens=16), CriticParams(), batch_size=2)  # fmt: skip


def test_a_changed_seed_is_refused_for_a_finished_shard_unless_overwrite_keeps_the_old_one(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    write_test_set(data)
    passing_pilot(data, fingerprint_dir(tiny_model_dir), PARAMS)
    resources = tiny_resources(data, tiny_model_dir)

    def shard(instance: dg.DagsterInstance | None = None, **config) -> dg.ExecuteInProcessResult:
        return dg.materialize([defs.get_assets_def("scale_shards")], partition_key=KEY, resources=resources,
                              run_config={"ops": {"scale_shards": {"config": {"count": 4, **config}}}},
                              instance=instance, raise_on_error=False)  # fmt: skip

    def shard_records() -> int:
        return ProvenanceStore(data / "provenance.duckdb").query(
            "SELECT count(*) AS n FROM records WHERE asset_key = 'scale_shards'"
        )[0]["n"]

    def files(folder) -> dict[str, bytes]:  # the lock file (`.lock`) names its last holder: not content
        return {name: content for name, content in tree(folder).items() if not name.startswith(".")}

    def latest_version(instance: dg.DagsterInstance) -> str:
        event = instance.get_latest_materialization_event(dg.AssetKey("scale_shards"))
        return event.asset_materialization.metadata["content_hash"].value

    instance = dg.DagsterInstance.ephemeral()  # (not `instance_for_test`: see support.open_instance)
    first = shard(instance)
    assert first.success, step_failure_text(first)
    shard_dir = data / "shards" / KEY
    old_hash, before = sha256_file(shard_dir / "pairs.jsonl"), files(shard_dir)

    refused = shard(instance, seed_base=200_000)
    assert not refused.success
    message = step_failure_text(refused)
    assert f"{KEY} is already finished with other parameters" in message, message
    assert "seed 101000 -> 201000" in message and "overwrite: true" in message and "nothing was changed" in message
    assert files(shard_dir) == before, "the finished shard is untouched"
    assert shard_records() == 1
    assert latest_version(instance) == old_hash, "what Dagster shows is still what is on disk"

    replaced = shard(seed_base=200_000, overwrite=True)
    assert replaced.success, step_failure_text(replaced)
    [event] = replaced.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["seed"] == 201_000 and meta["content_hash"] != old_hash == sha256_file(
        shard_dir / "superseded" / meta["set_aside"].rsplit("/", 1)[1] / "pairs.jsonl"
    )
    kept = {name.split("/", 2)[2]: data for name, data in files(shard_dir).items() if name.startswith("superseded")}
    assert kept == before, "the old shard is kept whole"
    [again] = shard(seed_base=200_000).get_asset_materialization_events()
    assert again.materialization.metadata["reused_existing_shard"].value, "the replacement is reused like any other"
    assert shard_records() == 3
