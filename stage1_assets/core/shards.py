"""One scale shard, resumable: instructions, then responses + critic in checkpointed batches.

Layout of `data/shards/<shard-key>/` while a shard runs:
  instructions.json           the shard's instructions (written once, atomically)
  batches/batch-00000.jsonl   one file per completed batch of pairs (atomically)
  pairs.jsonl, pairs.parquet  the finished shard; written last, then the batches are removed
A process killed at any point loses at most the batch in flight: the next run reuses
`instructions.json` and every completed batch, and generates only what is missing. Batch b of a
shard is always generated from the same instructions with the same seed, so a resumed shard has
the same ids and count as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import prompts
from .generation import Generator
from .io import atomic_path, atomic_write_json, atomic_write_jsonl, sha256_file
from .model_loader import LoadedModel
from .pairs import GenerationParams, generate_instructions, respond_and_score

log = logging.getLogger(__name__)

SHARD_SEED_STRIDE = 1_000


def shard_keys(num_shards: int) -> list[str]:
    return [f"shard-{i:03d}" for i in range(num_shards)]


def shard_index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


def shard_sizes(total_pairs: int, num_shards: int) -> list[int]:
    """Split `total_pairs` over shards so the sizes add up exactly (earlier shards take the remainder)."""
    base, extra = divmod(total_pairs, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


def shard_seed(seed_base: int, key: str) -> int:
    return seed_base + SHARD_SEED_STRIDE * shard_index(key)


@dataclass
class ShardResult:
    rows: list[dict[str, Any]]
    pairs_path: Path
    content_hash: str
    resumed_batches: int
    generated_batches: int
    instructions_reused: bool
    reused: bool = False


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_shard(
    lm: LoadedModel,
    shard_dir: Path,
    key: str,
    count: int,
    seed: int,
    params: GenerationParams,
    exclude: Sequence[str] = (),
    on_change: Callable[[Path], object] = lambda path: None,
) -> ShardResult:
    """Generate (or finish generating) shard `key` with exactly `count` pairs.

    The shard's spec (count, seed, parameters, model, prompts) is kept in `spec.json`: the same
    spec resumes or reuses what is on disk; a different spec starts the shard afresh.
    `on_change(path)` is called after each file or folder is written or removed, so an artifact
    store can mirror the checkpoints and another host can resume from them.
    """
    pairs_path = shard_dir / "pairs.jsonl"
    spec = {"key": key, "count": count, "seed": seed, "generation": params.as_dict(),
            "model_fingerprint": lm.info.fingerprint, "prompt_version": prompts.prompt_version()}  # fmt: skip
    spec_path = shard_dir / "spec.json"
    if spec_path.exists() and json.loads(spec_path.read_text()) != json.loads(json.dumps(spec)):
        log.warning("%s: parameters changed since the last attempt; restarting the shard", key)
        shutil.rmtree(shard_dir)
        on_change(shard_dir)
    if pairs_path.exists() and spec_path.exists():
        rows = read_rows(pairs_path)
        return ShardResult(rows, pairs_path, sha256_file(pairs_path), 0, 0, True, reused=True)
    atomic_write_json(spec_path, spec)
    on_change(spec_path)
    generator = Generator(lm.model, lm.tokenizer)
    instructions_path = shard_dir / "instructions.json"
    reused = instructions_path.exists()
    if reused:
        instructions = json.loads(instructions_path.read_text())["instructions"]
    else:
        instructions, removed = generate_instructions(
            generator,
            count,
            seed,
            prompts.load_pool(prompts.TRAIN_POOL),
            params.instruction,
            params.batch_size,
            exclude,
        )
        atomic_write_json(instructions_path, {"instructions": instructions, "removed": removed, "seed": seed})
        on_change(instructions_path)
    if len(instructions) != count:
        raise RuntimeError(
            f"{instructions_path} holds {len(instructions)} instructions but the shard needs {count}; "
            "the shard size changed since it started: delete the shard folder to restart it"
        )
    batch_dir = shard_dir / "batches"
    resumed = generated = 0
    rows: list[dict[str, Any]] = []
    for b, start in enumerate(range(0, count, params.batch_size)):
        batch_path = batch_dir / f"batch-{b:05d}.jsonl"
        if batch_path.exists():
            rows += read_rows(batch_path)
            resumed += 1
            continue
        chunk = instructions[start : start + params.batch_size]
        ids = [f"{key}-{start + k:06d}" for k in range(len(chunk))]
        batch_rows = respond_and_score(lm, chunk, ids, params, seed=seed + 1 + b, generator=generator)
        for row in batch_rows:
            row["shard"] = key
        atomic_write_jsonl(batch_path, batch_rows)
        on_change(batch_path)
        rows += batch_rows
        generated += 1
        log.info("%s: batch %d done (%d/%d pairs)", key, b, len(rows), count)
    ids = [r["id"] for r in rows]
    if len(rows) != count or len(set(ids)) != count:
        raise RuntimeError(f"{key}: assembled {len(rows)} rows ({len(set(ids))} unique ids), expected {count}")
    atomic_write_jsonl(pairs_path, rows)
    import polars as pl

    with atomic_path(shard_dir / "pairs.parquet") as tmp:
        pl.DataFrame(rows).write_parquet(tmp)
    on_change(shard_dir / "pairs.parquet")
    on_change(pairs_path)  # after the parquet: pairs.jsonl marks a finished shard
    shutil.rmtree(batch_dir, ignore_errors=True)
    on_change(batch_dir)
    return ShardResult(rows, pairs_path, sha256_file(pairs_path), resumed, generated, reused)
