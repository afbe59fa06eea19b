"""Where each artifact lives in the data directory: the one module that names the files assets share.

Paths are relative to the data directory (`Stage1Paths` resolves them, locally or in the shared
store). A file another asset reads travels with its manifest, `<file>.manifest.json` (core/artifacts).

    base_model.json                       base_model: the loaded model's fingerprint and guard verdict
    test_instructions.jsonl               test_instructions: the held-out set every later stage excludes
    pilot/<iteration>/                    pilot_data: pairs, QC summary, session manifest, run record
    shards/<shard-key>/pairs.jsonl        scale_shards: one partition's pairs (core/shards owns the rest)
    stage1_sft_data.jsonl / .parquet      sft_dataset: the merged, deduplicated, decontaminated set
    sft_removed.jsonl                     sft_dataset: what the merge removed, and why
    qc_summary.json                       qc_summary: metrics, thresholds, flagged examples
    adapters/<spec hash>/                 adapter_checkpoint: the PEFT adapter, its metrics and loss curve
    adapters/latest.json                  adapter_checkpoint: which adapter is the latest (core/adapter.py)
    eval_report.json / .md                eval_report: the paired evaluation
"""

from __future__ import annotations

BASE_MODEL = "base_model.json"
TEST_SET = "test_instructions.jsonl"

PILOT = "pilot"
PILOT_PAIRS = "pairs.jsonl"
PILOT_PARQUET = "pairs.parquet"
PILOT_QC = "qc_summary.json"

SHARDS = "shards"
SHARD_PAIRS = "pairs.jsonl"

SFT_DATASET = "stage1_sft_data.jsonl"
SFT_PARQUET = "stage1_sft_data.parquet"
SFT_REMOVED = "sft_removed.jsonl"

QC_SUMMARY = "qc_summary.json"
QC_PLOT = "qc_response_lengths.png"

ADAPTERS = "adapters"
TRAINING_METRICS = "training_metrics.json"
LOSS_CURVE = "loss_curve.png"
LATEST_ADAPTER = (ADAPTERS, "latest.json")  # parts, for `Stage1Paths.fetch(*parts)`

EVAL_JSON = "eval_report.json"
EVAL_MARKDOWN = "eval_report.md"
EVAL_PLOT = "eval_lengths.png"


def shard_pairs(key: str) -> tuple[str, str, str]:
    """The parts of a shard's pairs file, for `Stage1Paths.fetch(*parts)`."""
    return (SHARDS, key, SHARD_PAIRS)
