#!/usr/bin/env python3
"""Gather a finished run's small result files into one folder, with the time each asset took.

Reads the run's data folder (`STAGE1_DATA_DIR`) and its provenance database, and writes:
  qc_summary.json, eval_report.json, eval_report.md, training_metrics.json, loss_curve.png,
  stage1_sft_data.parquet (when under 5 MB), and timings.json: the wall seconds and GPU minutes of
  every materialization in provenance (the latest of each asset and partition), per asset and in
  total (`gpu_minutes_total`).

    python3 scripts/collect_results.py --data-dir data --out results/full-h200
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

MAX_PARQUET_BYTES = 5_000_000
SMALL_FILES = ("qc_summary.json", "eval_report.json", "eval_report.md", "stage1_sft_data.parquet")

TIMINGS_SQL = """
SELECT asset_key, partition_key, wall_seconds, accelerator_seconds, device, recorded_at
FROM (
    SELECT *, row_number() OVER (PARTITION BY asset_key, partition_key ORDER BY recorded_at DESC) AS latest
    FROM records WHERE kind = 'materialization' AND status = 'success'
) WHERE latest = 1
ORDER BY recorded_at
"""


def timings(db: Path) -> dict:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        columns = ["asset_key", "partition_key", "wall_seconds", "accelerator_seconds", "device", "recorded_at"]
        rows = [dict(zip(columns, r, strict=True)) for r in con.execute(TIMINGS_SQL).fetchall()]
    per_asset: dict[str, dict] = {}
    for r in rows:
        entry = per_asset.setdefault(r["asset_key"], {"runs": 0, "wall_seconds": 0.0, "gpu_minutes": 0.0})
        entry["runs"] += 1
        entry["wall_seconds"] = round(entry["wall_seconds"] + (r["wall_seconds"] or 0.0), 1)
        entry["gpu_minutes"] = round(entry["gpu_minutes"] + (r["accelerator_seconds"] or 0.0) / 60, 2)
    return {
        "per_asset": per_asset,
        "materializations": [{**r, "recorded_at": str(r["recorded_at"])} for r in rows],
        "wall_seconds_total": round(sum(e["wall_seconds"] for e in per_asset.values()), 1),
        "gpu_minutes_total": round(sum(e["gpu_minutes"] for e in per_asset.values()), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        source = args.data_dir / name
        if source.exists() and not (name.endswith(".parquet") and source.stat().st_size > MAX_PARQUET_BYTES):
            shutil.copy2(source, args.out / name)
    adapters = sorted((args.data_dir / "adapters").glob("*/training_metrics.json"), key=lambda p: p.stat().st_mtime)
    if adapters:
        shutil.copy2(adapters[-1], args.out / "training_metrics.json")
        shutil.copy2(adapters[-1].parent / "loss_curve.png", args.out / "loss_curve.png")
    (args.out / "timings.json").write_text(json.dumps(timings(args.data_dir / "provenance.duckdb"), indent=2) + "\n")
    print("\n".join(sorted(p.name for p in args.out.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
