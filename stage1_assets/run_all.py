"""The README's main job: materialize the whole asset graph, in dependency order, in this process.

Unpartitioned assets upstream of the shards run first (one run, blocking checks included), then
one run per shard partition, then everything downstream — the same runs a person would launch
from the UI, recorded in the instance at $DAGSTER_HOME so they show up there afterwards.
"""

import argparse
import sys
import time

import dagster as dg

from .definitions import defs

# the terminal gets the assets' own lines (progress, decisions) and failures; every event, DEBUG
# included, stays in the run's log in the UI
CONSOLE_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _assets_by_stage() -> tuple[list[dg.AssetsDefinition], list[dg.AssetsDefinition], list[dg.AssetsDefinition]]:
    assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    partitioned = [a for a in assets if a.partitions_def is not None]
    partitioned_keys = {k for a in partitioned for k in a.keys}
    graph = defs.resolve_asset_graph()
    downstream = set()
    for key in partitioned_keys:
        downstream |= graph.get(key).child_keys
        downstream |= {k for k in graph.get_all_asset_keys() if key in graph.get(k).parent_keys}
    frontier = list(downstream)
    while frontier:
        for child in graph.get(frontier.pop()).child_keys:
            if child not in downstream:
                downstream.add(child)
                frontier.append(child)
    before = [a for a in assets if a not in partitioned and not (set(a.keys) & downstream)]
    after = [a for a in assets if a not in partitioned and set(a.keys) & downstream]
    return before, partitioned, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # weight-loading bars would bury the progress lines
    instance = dg.DagsterInstance.get()
    resources = defs.resources or {}
    checks = list(defs.asset_checks or [])
    before, partitioned, after = _assets_by_stage()
    started = time.perf_counter()
    plan: list[tuple[str, list[dg.AssetsDefinition], str | None]] = []
    if before:
        plan.append(("upstream", before, None))
    for key in partitioned[0].partitions_def.get_partition_keys() if partitioned else []:
        plan.append((f"partition {key}", partitioned, key))
    if after:
        plan.append(("downstream", after, None))
    all_assets = before + partitioned + after
    for label, selected, partition_key in plan:
        result = dg.materialize(
            [*all_assets, *checks],
            selection=[k for a in selected for k in a.keys],
            instance=instance,
            resources=resources,
            partition_key=partition_key,
            run_config=CONSOLE_INFO,
            raise_on_error=False,
        )
        status = "ok" if result.success else "FAILED"
        print(f"[stage1] {label}: {status} (run {result.run_id})", flush=True)
        for evaluation in result.get_asset_check_evaluations():
            # a failed WARN check (e.g. length_bias) blocks nothing: it is a warning to read, not a failure
            warn = evaluation.severity == dg.AssetCheckSeverity.WARN
            mark = "pass" if evaluation.passed else "warn" if warn else "FAIL"
            print(f"[stage1]   check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {mark}")
        if not result.success:
            print("[stage1] stopping: open the run in the UI (see README) for the failed step/check")
            return 1
    print(f"[stage1] whole graph materialized in {time.perf_counter() - started:.1f}s; "
          f"artifacts under data/, provenance in data/provenance.duckdb")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
