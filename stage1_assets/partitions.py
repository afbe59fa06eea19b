"""The shard partitions of `scale_shards`, and the guard that keeps one Dagster instance on one set of keys.

The keys are `shard-000` … `shard-<N-1>`, N being the active profile's `num_shards` (STAGE1_PROFILE,
read when the code location loads); keys hold no commas. Switching the profile therefore changes the
keys of the same asset. They are kept profile-dependent on purpose: keys independent of the profile
would need either a fixed maximum number of shards (the local profile would then show dozens of
partitions it never fills, and every backfill would launch them) or dynamic partitions (keys added at
run time, so a backfill of "all shards" would no longer be declared by the code).

Instead an instance is tied to the shard keys it first materialized: `check_shard_keys` refuses, with
a clear error, to work in an instance that already holds `scale_shards` materializations under
another profile's keys — keys the current profile does not have, or (recorded in each shard's
metadata, `profile` and `num_shards`) another number of shards. `scale_shards`, `sft_dataset`,
`qc_summary` and `missing_shards_schedule` call it before anything else. Use one `DAGSTER_HOME` per
profile (or wipe `scale_shards`' materializations in the UI) to switch.
"""

from pathlib import Path

import dagster as dg

from .config import PROFILE
from .core import layout
from .core.artifacts import manifest_path
from .core.shards import shard_keys
from .resources import Stage1Paths

SHARD_ASSET = dg.AssetKey("scale_shards")
SHARD_KEYS = shard_keys(PROFILE.num_shards)
SHARD_PARTITIONS = dg.StaticPartitionsDefinition(SHARD_KEYS)


class ShardKeysChanged(dg.Failure):
    """The instance holds shard materializations under another profile's partition keys."""


def shard_layout_metadata() -> dict[str, str | int]:
    """What each shard's materialization records about the keys it belongs to (read by `check_shard_keys`)."""
    return {"profile": PROFILE.name, "num_shards": PROFILE.num_shards}


def check_shard_keys(instance: dg.DagsterInstance) -> None:
    """Refuse an instance whose `scale_shards` materializations were made under another profile's keys."""
    foreign = sorted(set(instance.get_materialized_partitions(SHARD_ASSET)) - set(SHARD_KEYS))
    recorded = ""
    event = instance.get_latest_materialization_event(SHARD_ASSET)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    if "num_shards" in metadata and metadata["num_shards"].value != PROFILE.num_shards:
        recorded = f"{metadata['num_shards'].value} shards (profile {metadata['profile'].value!r})"
    if foreign or recorded:
        held = recorded or f"partitions {foreign[:3]}{'…' if len(foreign) > 3 else ''}"
        raise ShardKeysChanged(
            f"this Dagster instance holds scale_shards materializations made under another profile: {held}, "
            f"but profile {PROFILE.name!r} (STAGE1_PROFILE) has {PROFILE.num_shards} shards, "
            f"{SHARD_KEYS[0]}…{SHARD_KEYS[-1]}. Partition keys must not change within one instance: use another "
            "DAGSTER_HOME for this profile, switch STAGE1_PROFILE back, or wipe scale_shards' materializations"
        )


def finished_shards(paths: Stage1Paths, instance: dg.DagsterInstance) -> dict[str, Path]:
    """Every shard's pairs file, by partition key, with its sidecar manifest (from the store when there is
    one); refuses an instance of another profile's keys and a shard not materialized yet."""
    check_shard_keys(instance)
    shard_paths = {k: paths.fetch(*layout.shard_pairs(k)) for k in SHARD_KEYS}
    missing = [k for k, p in shard_paths.items() if not p.exists()]
    if missing:
        raise dg.Failure(f"shards not materialized yet: {missing}; backfill scale_shards first")
    for path in shard_paths.values():
        paths.store().fetch(manifest_path(path))
    return shard_paths
