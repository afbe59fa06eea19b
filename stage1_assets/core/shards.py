"""One scale shard, resumable: instructions, then responses + critic in checkpointed batches.

Layout of `data/shards/<shard-key>/`:
  spec.json                   what the shard is: count, seed, parameters, model, prompt version
  instructions.json           the shard's instructions (written once, atomically)
  batches/batch-00000.jsonl   one file per completed batch of pairs (atomically)
  pairs.jsonl, pairs.parquet  the finished shard, with `pairs.jsonl.manifest.json` (sha256, rows);
                              the three are committed together (by the asset: with the provenance
                              record), then the batches are removed
  superseded/<spec hash>/     a shard of other parameters, set aside by `overwrite` (never deleted)
  damaged/<time>/             a finished shard found not whole (cut short, edited), set aside
A process killed at any point loses at most the batch in flight: the next run reuses
`instructions.json` and every completed batch, and generates only what is missing (and says so).
Batch b of a shard is always generated from the same instructions with the same seed, so a
resumed shard has the same ids and count as an uninterrupted one. A finished shard is reused only
when its spec is unchanged and it is whole (it matches its manifest, with the expected ids); a
changed spec is refused unless `overwrite` is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import layout, prompts
from .artifacts import MANIFEST_SUFFIX, Staging, manifest_path, verify
from .generation import Generator
from .io import (
    FieldType,
    InputFileError,
    atomic_write_json,
    atomic_write_jsonl,
    read_json,
    read_jsonl,
    sha256_file,
    stable_hash,
)
from .model_loader import LoadedModel
from .pairs import GenerationParams, generate_instructions, respond_and_score
from .progress import Progress

log = logging.getLogger(__name__)

SHARD_SEED_STRIDE = 1_000
PRODUCER = "scale_shards"
PAIRS, PARQUET, SPEC, INSTRUCTIONS = layout.SHARD_PAIRS, "pairs.parquet", "spec.json", "instructions.json"
BATCHES, SUPERSEDED, DAMAGED, LOCK = "batches", "superseded", "damaged", ".lock"
# what the merge reads from every row; the QC summary adds its own fields
SHARD_ROW_TYPES: dict[str, FieldType] = {"id": str, "response": str, "accepted": bool, "critic_score": (int, float)}


class ShardSpecChanged(RuntimeError):
    """A finished shard exists with other parameters, and the run did not ask to overwrite it."""


class ShardBusyError(RuntimeError):
    """Another process of this host is generating the same shard right now."""


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
    total_batches: int = 0
    resumed_pairs: int = 0
    generation_seconds: float = 0.0
    set_aside: str | None = None  # where an earlier shard of other parameters was kept
    repaired: str | None = None  # why a finished shard was found not whole and regenerated

    @property
    def resumed(self) -> bool:
        """Whether this attempt continued an interrupted one (reused its instructions or batches)."""
        return not self.reused and (self.instructions_reused or self.resumed_batches > 0)

    def summary(self) -> dict[str, Any]:
        """What provenance and the asset's metadata say about how the shard was made."""
        return {"reused": self.reused, "resumed": self.resumed, "instructions_reused": self.instructions_reused,
                "resumed_batches": self.resumed_batches, "resumed_pairs": self.resumed_pairs,
                "generated_batches": self.generated_batches, "total_batches": self.total_batches,
                "set_aside": self.set_aside, "repaired": self.repaired}  # fmt: skip


def read_rows(path: Path, types: Mapping[str, FieldType] = SHARD_ROW_TYPES) -> list[dict[str, Any]]:
    """Shard rows, refusing a malformed line or a missing/mistyped field with the file, line and field named."""
    return read_jsonl(path, required=("instruction",), types=types)


def read_shard(pairs_path: Path, types: Mapping[str, FieldType] = SHARD_ROW_TYPES) -> list[dict[str, Any]]:
    """A finished shard's rows, checked against its manifest first (hash, then row count)."""
    verify(pairs_path, PRODUCER)
    rows = read_rows(pairs_path, types)
    verify(pairs_path, PRODUCER, rows=len(rows))
    return rows


def shard_spec(key: str, count: int, seed: int, params: GenerationParams, fingerprint: str) -> dict[str, Any]:
    spec = {"key": key, "count": count, "seed": seed, "generation": params.as_dict(),
            "model_fingerprint": fingerprint, "prompt_version": prompts.prompt_version()}  # fmt: skip
    return json.loads(json.dumps(spec))


def spec_hash(spec: Mapping[str, Any]) -> str:
    return stable_hash(spec)[:16]


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The fields (dotted, one level into `generation`) whose values differ, with both values."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in spec_differences(a, b)]
        else:
            out.append(f"{key} {json.dumps(a)[:40]} -> {json.dumps(b)[:40]}")
    return out


def check_whole(shard_dir: Path, key: str, count: int) -> tuple[list[dict[str, Any]] | None, str]:
    """(rows, "") when the finished shard in `shard_dir` is whole, else (None, why not).

    Whole: it matches its manifest (hash and rows) and holds exactly the ids `<key>-000000` ... of
    its count. A shard from before manifests is checked by parsing alone.
    """
    pairs_path = shard_dir / PAIRS
    try:
        rows = read_shard(pairs_path) if manifest_path(pairs_path).exists() else read_rows(pairs_path)
    except InputFileError as exc:
        return None, str(exc)
    ids = [str(r["id"]) for r in rows]
    if ids != [f"{key}-{i:06d}" for i in range(count)]:
        return None, f"{pairs_path} holds {len(rows)} rows with ids {ids[:1]}…{ids[-1:]}, not the {count} of {key}"
    return rows, ""


@contextlib.contextmanager
def shard_lock(shard_dir: Path, key: str, label: str = "") -> Iterator[None]:
    """Hold `<shard_dir>/.lock` (flock: dropped by the kernel however the holder ends) while generating.

    A second process of this host that wants the same shard fails at once, naming the holder.
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    path = shard_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            holder = path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise ShardBusyError(
            f"{key} is being generated by another process on this host ({holder}); wait for that run to end "
            "(or stop it), then run this partition again"
        ) from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "label": label, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)


def _set_aside(shard_dir: Path, into: Path, names: Sequence[str] | None, on_change: Callable[[Path], object]) -> Path:
    """Move the shard's files (all but the lock, temporaries and earlier set-asides, or only `names`) into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    for entry in sorted(shard_dir.iterdir()):
        if entry.name.startswith(".") or entry.name in (SUPERSEDED, DAMAGED):
            continue
        if names is not None and entry.name not in names:
            continue
        os.replace(entry, into / entry.name)
        on_change(entry)
    on_change(into)
    return into


def _read_spec(spec_path: Path) -> dict[str, Any] | None:
    if not spec_path.exists():
        return None
    try:
        return read_json(spec_path)
    except InputFileError as exc:
        log.warning("%s", exc)
        return {"unreadable": str(exc)}  # a spec no run asks for: treated as other parameters


def _commit_locally(on_change: Callable[[Path], object]) -> Callable[[ShardResult, Staging], None]:
    def commit(result: ShardResult, staging: Staging) -> None:
        for target in staging.commit_locally():
            on_change(target)

    return commit


def run_shard(
    lm: LoadedModel,
    shard_dir: Path,
    key: str,
    count: int,
    seed: int,
    params: GenerationParams,
    exclude: Sequence[str] = (),
    on_change: Callable[[Path], object] = lambda path: None,
    log: Any = log,
    overwrite: bool = False,
    commit: Callable[[ShardResult, Staging], None] | None = None,
) -> ShardResult:
    """Generate (or finish generating) shard `key` with exactly `count` pairs.

    The shard's spec (count, seed, parameters, model, prompts) is kept in `spec.json`: the same
    spec resumes, or reuses a whole finished shard; another spec is refused for a finished shard
    unless `overwrite` (the old shard is then set aside under `superseded/<spec hash>/`, as are
    the checkpoints of an unfinished one). `on_change(path)` is called after each file or folder is
    written or removed, so an artifact store can mirror the checkpoints and another host can resume
    from them. `commit(result, staging)` publishes the finished shard's staged files (the asset
    records provenance in the same step); by default they are renamed into place here. `log` is
    any logger with `info` and `warning` (Dagster's `context.log`, say).
    """
    pairs_path = shard_dir / PAIRS
    spec = shard_spec(key, count, seed, params, lm.info.fingerprint)
    spec_path = shard_dir / SPEC
    old_spec = _read_spec(spec_path)
    if old_spec is None and pairs_path.exists():  # a finished shard whose spec is gone: of unknown parameters
        old_spec = {"spec.json": "missing"}
    finish = commit or _commit_locally(on_change)
    set_aside = repaired = None
    if pairs_path.exists() and old_spec == spec:
        whole_rows, why = check_whole(shard_dir, key, count)
        if whole_rows is not None:
            with Staging() as staging:
                if not manifest_path(pairs_path).exists():  # finished before manifests: adopt it
                    staging.manifest(pairs_path, PRODUCER, rows=count, spec_hash=spec_hash(spec))
                result = ShardResult(whole_rows, pairs_path, sha256_file(pairs_path), 0, 0, True, reused=True,
                                     total_batches=math.ceil(count / params.batch_size))  # fmt: skip
                log.info(f"{key}: the finished shard is whole and its parameters are unchanged: reusing it "
                         f"({count} pairs, sha256 {result.content_hash[:12]}…)")  # fmt: skip
                finish(result, staging)
            return result
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        aside = _set_aside(shard_dir, shard_dir / DAMAGED / stamp, (PAIRS, PARQUET, PAIRS + MANIFEST_SUFFIX), on_change)
        repaired = why
        log.warning(f"{key}: the finished shard is not whole: {why}. Set aside in {aside}; regenerating it")
    elif old_spec is not None and old_spec != spec:
        finished = pairs_path.exists()
        changed = spec_differences(old_spec, spec)
        if finished and not overwrite:
            raise ShardSpecChanged(
                f"{key} is already finished with other parameters ({'; '.join(changed)}: spec {spec_hash(old_spec)}, "
                f"this run's {spec_hash(spec)}); nothing was changed. To replace it, run again with `overwrite: true` "
                f"in the run config (the finished shard is then kept in {shard_dir / SUPERSEDED}/"
                f"{spec_hash(old_spec)}/); to keep it, run with the parameters it was made with"
            )
        aside = _set_aside(shard_dir, shard_dir / SUPERSEDED / spec_hash(old_spec), None, on_change)
        set_aside = str(aside)
        what = "finished shard" if finished else "checkpoints of an unfinished attempt"
        log.warning(f"{key}: parameters changed ({'; '.join(changed)}); the {what} with the old parameters "
                    f"{'is' if finished else 'are'} kept in {aside}; starting afresh")  # fmt: skip
    if old_spec != spec or not spec_path.exists():
        atomic_write_json(spec_path, spec)
        on_change(spec_path)
    started = time.perf_counter()
    generator = Generator(lm.model, lm.tokenizer)
    instructions_path = shard_dir / INSTRUCTIONS
    reused = instructions_path.exists()
    if reused:
        instructions = read_json(instructions_path, {"instructions": list}, what="; delete it to generate the "
                                 "shard's instructions again")["instructions"]  # fmt: skip
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
    batch_dir = shard_dir / BATCHES
    starts = list(range(0, count, params.batch_size))
    done = {b: rows for b in range(len(starts)) if (rows := _checkpoint(batch_dir, b, key, starts, count, log))}
    resumed_pairs = sum(len(r) for r in done.values())
    if reused or done:
        log.info(f"{key}: resuming an interrupted attempt: reusing its {len(instructions)} instructions and "
                 f"{len(done)} of {len(starts)} completed batches ({resumed_pairs} of {count} pairs); "
                 f"generating {len(starts) - len(done)} more")  # fmt: skip
    else:
        log.info(f"{key}: generating {count} pairs in {len(starts)} batches of up to {params.batch_size}")
    resumed, generated = len(done), 0
    progress = Progress(count, "pairs", already_done=resumed_pairs)
    rows: list[dict[str, Any]] = []
    for b, start in enumerate(starts):
        if b in done:
            rows += done[b]
            continue
        batch_path = batch_dir / f"batch-{b:05d}.jsonl"
        chunk = instructions[start : start + params.batch_size]
        ids = [f"{key}-{start + k:06d}" for k in range(len(chunk))]
        batch_rows = respond_and_score(lm, chunk, ids, params, seed=seed + 1 + b, generator=generator)
        for row in batch_rows:
            row["shard"] = key
        atomic_write_jsonl(batch_path, batch_rows)
        on_change(batch_path)
        rows += batch_rows
        generated += 1
        line = progress.advance(len(batch_rows), sum(r.get("completion_tokens", 0) for r in batch_rows))
        log.info(f"{key}: batch {b + 1}/{len(starts)} done: {line}")
    ids = [r["id"] for r in rows]
    if len(rows) != count or len(set(ids)) != count:
        raise RuntimeError(f"{key}: assembled {len(rows)} rows ({len(set(ids))} unique ids), expected {count}")
    seconds = time.perf_counter() - started
    import polars as pl

    with Staging() as staging:
        with staging.writing(shard_dir / PARQUET) as tmp:
            pl.DataFrame(rows).write_parquet(tmp)
        staging.write_jsonl(pairs_path, rows)
        staging.manifest(pairs_path, PRODUCER, rows=count, spec_hash=spec_hash(spec), generation_seconds=seconds,
                         device=lm.info.device)  # fmt: skip
        result = ShardResult(rows, pairs_path, staging.hash(pairs_path), resumed, generated, reused, reused=False,
                             total_batches=len(starts), resumed_pairs=resumed_pairs, generation_seconds=seconds,
                             set_aside=set_aside, repaired=repaired)  # fmt: skip
        finish(result, staging)
    shutil.rmtree(batch_dir, ignore_errors=True)
    on_change(batch_dir)
    return result


def _checkpoint(
    batch_dir: Path, b: int, key: str, starts: list[int], count: int, log: Any
) -> list[dict[str, Any]] | None:
    """The rows of completed batch `b`, or None when it is not there (or not usable: then it is regenerated)."""
    path = batch_dir / f"batch-{b:05d}.jsonl"
    if not path.exists():
        return None
    end = starts[b + 1] if b + 1 < len(starts) else count
    expected = [f"{key}-{i:06d}" for i in range(starts[b], end)]
    try:
        rows = read_rows(path)
    except InputFileError as exc:
        log.warning(f"{key}: checkpoint {path} is unusable ({exc}); generating batch {b} again")
        return None
    if [str(r["id"]) for r in rows] != expected:
        log.warning(f"{key}: checkpoint {path} does not hold ids {expected[0]}…{expected[-1]}; generating it again")
        return None
    return rows
