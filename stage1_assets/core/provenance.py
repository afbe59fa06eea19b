"""Provenance of every materialization and check, in DuckDB.

DuckDB allows one writing process per file, while shard runs write in parallel. So a record is
first written as its own JSON file in a spool directory beside the database (atomic rename:
durable the moment `record` returns), then ingested into DuckDB by whichever process gets the
file lock: the writer itself right away when it can, otherwise the next writer or reader.
Ingestion is idempotent (primary key on `record_id`), so a record is never lost or doubled even
if two processes ingest the same spool file.

Across hosts (an artifact store URL is configured), each record is also published as one object
`<store>/provenance/spool/<record_id>.json` before `record` returns. Those objects are the shared,
append-only log; every host's DuckDB is a local index of it: ingestion (every write, and every
query, such as the merge step's) also pulls the log's records that the local database lacks.
No host ever needs another host's DuckDB file, and one object PUT per record needs no lock.

Commit: `commit(record, staging)` makes a step's outputs and its record visible together. The
record goes first to `<spool>/.pending/<record_id>.json` with the list of staged files and their
targets (the journal: if it cannot be written, say on a full disk, nothing is published and the
step fails with every previous artifact intact); then each staged file is renamed onto its target
and the journal is renamed into the spool. Renames need no space, so once the journal is written
the commit completes; if the process dies in between, the next process on this host that touches
provenance finds the journal of a dead writer and finishes it.

Lineage: an artifact's content hash links the record that output it to the records that took it
as input; `LINEAGE_SQL` walks that graph back to the base model.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import liveness
from .io import atomic_write_json, stable_hash
from .storage import ArtifactStore

if TYPE_CHECKING:
    from .artifacts import Staging

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id            VARCHAR PRIMARY KEY,
    kind                 VARCHAR NOT NULL,   -- 'materialization' | 'check'
    status               VARCHAR NOT NULL,   -- 'success' | 'failed' | 'passed'
    run_id               VARCHAR,
    asset_key            VARCHAR NOT NULL,
    partition_key        VARCHAR,
    check_name           VARCHAR,
    code_version         VARCHAR,
    model_fingerprint    VARCHAR,
    params_json          JSON,
    params_hash          VARCHAR,
    prompt_version       VARCHAR,
    row_count            BIGINT,
    metrics_json         JSON,
    device               VARCHAR,
    wall_seconds         DOUBLE,
    accelerator_seconds  DOUBLE,
    recorded_at          TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    record_id     VARCHAR NOT NULL,
    role          VARCHAR NOT NULL,          -- 'input' | 'output'
    name          VARCHAR NOT NULL,
    path          VARCHAR,
    content_hash  VARCHAR NOT NULL,
    PRIMARY KEY (record_id, role, name)
);
"""

# Everything that produced the artifact with content hash $1, back to the base model: each row
# is one producing record, `depth` 0 being the artifact's own producer.
LINEAGE_SQL = """
WITH RECURSIVE lineage(record_id, depth, via_hash) AS (
    SELECT a.record_id, 0, a.content_hash
    FROM artifacts a WHERE a.role = 'output' AND a.content_hash = $1
    UNION
    SELECT producer.record_id, l.depth + 1, producer.content_hash
    FROM lineage l
    JOIN artifacts consumed ON consumed.record_id = l.record_id AND consumed.role = 'input'
    JOIN artifacts producer ON producer.role = 'output' AND producer.content_hash = consumed.content_hash
    WHERE l.depth < 64
)
SELECT l.depth, r.asset_key, r.partition_key, r.run_id, r.status, r.model_fingerprint,
       r.params_hash, r.prompt_version, r.code_version, l.via_hash AS output_hash, r.recorded_at
FROM (SELECT record_id, min(depth) AS depth, any_value(via_hash) AS via_hash
      FROM lineage GROUP BY record_id) l
JOIN records r USING (record_id)
ORDER BY l.depth, r.asset_key, r.partition_key
"""

REMOTE_SPOOL = "provenance/spool"
PENDING_DIR = ".pending"  # journals of commits under way (a hidden folder: never ingested, never published)
COMMIT_KEY = "_commit"  # in a journal: the staged files to rename, and the process doing it

RECORD_COLUMNS = (
    "record_id", "kind", "status", "run_id", "asset_key", "partition_key", "check_name",
    "code_version", "model_fingerprint", "params_json", "params_hash", "prompt_version",
    "row_count", "metrics_json", "device", "wall_seconds", "accelerator_seconds", "recorded_at",
)  # fmt: skip


@dataclass
class Artifact:
    name: str
    content_hash: str
    path: str | None = None


@dataclass
class ProvenanceRecord:
    asset_key: str
    kind: str = "materialization"
    status: str = "success"
    run_id: str | None = None
    partition_key: str | None = None
    check_name: str | None = None
    code_version: str | None = None
    model_fingerprint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    prompt_version: str | None = None
    row_count: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    wall_seconds: float | None = None
    accelerator_seconds: float | None = None
    inputs: list[Artifact] = field(default_factory=list)
    outputs: list[Artifact] = field(default_factory=list)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def row(self) -> tuple[Any, ...]:
        values = {
            **asdict(self),
            "params_json": json.dumps(self.params, sort_keys=True, default=str),
            "params_hash": stable_hash(self.params),
            "metrics_json": json.dumps(self.metrics, sort_keys=True, default=str),
        }
        return tuple(values[c] for c in RECORD_COLUMNS)


class ProvenanceStore:
    """DuckDB provenance with a crash-safe spool for concurrent writers."""

    def __init__(
        self,
        db_path: Path,
        lock_timeout_s: float = 60.0,
        store_url: str = "",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.spool_dir = self.db_path.with_name(self.db_path.name + ".spool")
        self.lock_timeout_s = lock_timeout_s
        # the shared log of every host's records (none: this host's DuckDB is the only index)
        self.remote = ArtifactStore(self.spool_dir, f"{store_url.rstrip('/')}/{REMOTE_SPOOL}" if store_url else "",
                                    storage_options)  # fmt: skip

    def record(self, rec: ProvenanceRecord) -> str:
        """Durably store `rec`; it is queryable once any process has ingested the spool."""
        return self.commit(rec)

    def commit(
        self, rec: ProvenanceRecord, staging: Staging | None = None, publish: Callable[..., object] | None = None
    ) -> str:
        """Publish `staging`'s files and record `rec`, together (see the module's docstring).

        `publish(*targets)` is called after the local commit and before the record goes to the shared
        log, so that another host never sees a record whose outputs are not in the store yet.
        """
        self.recover()
        moves = staging.moves() if staging is not None else []
        journal = self.spool_dir / PENDING_DIR / f"{rec.record_id}.json"
        commit = {"moves": [[str(src), str(dst)] for src, dst in moves], "writer": liveness.identity()}
        try:
            atomic_write_json(journal, asdict(rec) | {COMMIT_KEY: commit})
        except BaseException as exc:
            if staging is not None:
                staging.discard()
            if isinstance(exc, OSError):
                raise OSError(
                    exc.errno,
                    f"{exc.strerror or exc}; provenance could not be recorded, so none of "
                    "the step's outputs was published (the previous ones are as they were)",
                ) from exc
            raise
        spooled = self._finish(journal, commit)
        if staging is not None:
            staging.committed()
        if publish is not None and moves:
            publish(*(dst for _, dst in moves))
        self.remote.put(spooled)  # before ingestion removes the local file: other hosts must see it
        # if another process holds the lock, it or the next reader ingests our file
        with contextlib.suppress(TimeoutError):
            self.ingest(timeout_s=min(5.0, self.lock_timeout_s))
        return rec.record_id

    def _finish(self, journal: Path, commit: dict[str, Any]) -> Path:
        """Rename the staged files of a written journal onto their targets, then the journal into the spool."""
        for src, dst in commit.get("moves", []):
            if Path(src).exists():  # a recovery may find some already renamed
                os.replace(src, dst)
        spooled = self.spool_dir / journal.name
        os.replace(journal, spooled)
        return spooled

    def recover(self) -> int:
        """Finish the commits of processes that died after writing their journal; returns how many."""
        pending = self.spool_dir / PENDING_DIR
        finished = 0
        for journal in sorted(pending.glob("*.json")) if pending.is_dir() else []:
            try:
                commit = json.loads(journal.read_text()).get(COMMIT_KEY, {})
            except (OSError, ValueError):
                continue  # finished meanwhile by its writer, or unreadable: left for a person to look at
            if liveness.state(commit.get("writer")) != "dead":
                continue  # under way in a live process (or on another host)
            with contextlib.suppress(FileNotFoundError):
                self.remote.put(self._finish(journal, commit))
                finished += 1
        return finished

    def ingest(self, timeout_s: float | None = None) -> int:
        """Move spooled records (this host's, and the shared log's) into DuckDB; returns how many were ingested."""
        self.recover()
        pending = sorted(self.spool_dir.glob("*.json")) if self.spool_dir.exists() else []
        logged = self._remote_record_keys()
        if not pending and not logged:
            return 0
        recs: list[tuple[Path | None, ProvenanceRecord]] = []
        for path in pending:
            try:
                recs.append((path, ProvenanceRecord(**_artifacts(json.loads(path.read_text())))))
            except FileNotFoundError:
                continue  # ingested and removed by a concurrent process
        with self._connect(timeout_s=timeout_s) as con:
            if logged:
                known = {row[0] for row in con.execute("SELECT record_id FROM records").fetchall()}
                known |= {rec.record_id for _, rec in recs}
                missing = [sub for record_id, sub in logged.items() if record_id not in known]
                for raw in self.remote.read(self.spool_dir, missing):
                    recs.append((None, ProvenanceRecord(**_artifacts(json.loads(raw)))))
            if not recs:
                return 0
            con.execute("BEGIN TRANSACTION")
            for _, rec in recs:
                con.execute(
                    f"INSERT OR IGNORE INTO records VALUES ({', '.join('?' * len(RECORD_COLUMNS))})",
                    rec.row(),
                )
                for role, items in (("input", rec.inputs), ("output", rec.outputs)):
                    for art in items:
                        con.execute(
                            "INSERT OR IGNORE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                            (rec.record_id, role, art.name, art.path, art.content_hash),
                        )
            con.execute("COMMIT")
        for path, _ in recs:
            if path is not None:
                path.unlink(missing_ok=True)
        return len(recs)

    def _remote_record_keys(self) -> dict[str, str]:
        """record_id -> file name of every record in the shared log (empty without a store)."""
        return {PurePosixPath(sub).stem: sub for sub in self.remote.list_files(self.spool_dir) if sub.endswith(".json")}

    def query(self, sql: str, params: list[Any] | None = None, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Run a read query after ingesting the spool; rows come back as dicts.

        Raises TimeoutError when another process (a user's DuckDB session, say) holds the database
        for `timeout_s` (default: `lock_timeout_s`).
        """
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        self.ingest(timeout_s=timeout_s)
        with self._connect(timeout_s=timeout_s) as con:
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def lineage(self, content_hash: str) -> list[dict[str, Any]]:
        return self.query(LINEAGE_SQL, [content_hash])

    def recent_materializations(
        self, asset_key: str, limit: int, timeout_s: float | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(params, metrics) of the last `limit` materializations of `asset_key`, newest first.

        Raises TimeoutError like `query` when another process holds the database.
        """
        rows = self.query(
            """SELECT params_json, metrics_json FROM records
               WHERE asset_key = $1 AND kind = 'materialization' ORDER BY recorded_at DESC LIMIT $2""",
            [asset_key, limit],
            timeout_s=timeout_s,
        )
        return [(json.loads(r["params_json"]), json.loads(r["metrics_json"])) for r in rows]

    @contextmanager
    def _connect(self, timeout_s: float | None) -> Iterator[Any]:
        """Open the database, retrying while another process holds DuckDB's file lock."""
        import duckdb

        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + (self.lock_timeout_s if timeout_s is None else timeout_s)
        delay = 0.01
        while True:
            try:
                con = duckdb.connect(str(self.db_path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.db_path} stayed locked by another process: {exc}") from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
        try:
            con.execute(SCHEMA)
            yield con
        finally:
            con.close()


def _artifacts(raw: dict[str, Any]) -> dict[str, Any]:
    raw.pop(COMMIT_KEY, None)
    raw["inputs"] = [Artifact(**a) for a in raw.get("inputs", [])]
    raw["outputs"] = [Artifact(**a) for a in raw.get("outputs", [])]
    return raw


def code_version() -> str:
    """Git commit of the working tree when available, else the package version."""
    env = os.environ.get("STAGE1_CODE_VERSION")
    if env:
        return env
    head = Path(__file__).resolve().parents[2] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = head.parent / ref[5:]
            if ref_file.exists():
                return ref_file.read_text().strip()[:12]
            packed = (head.parent / "packed-refs").read_text()
            return next(line.split()[0][:12] for line in packed.splitlines() if line.endswith(ref[5:]))
        return ref[:12]
    except (OSError, StopIteration):
        from importlib.metadata import version

        return "stage1_assets-" + version("stage1_assets")
