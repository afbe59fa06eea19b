"""What a step writes becomes visible all at once, and what a step reads is checked against its producer.

**Staging.** A step writes each output's new content to a temporary file beside its target
(`.<name>.<txid>.staged.tmp`, so nothing reads it and the artifact store never publishes it),
then `ProvenanceStore.commit` publishes all of them together with the step's provenance record:
a crash or an error before that leaves every previous artifact as it was and records nothing.

**Sidecar manifests.** Every file another asset reads gets `<file>.manifest.json`, written in the
same commit: its sha256, size and row count, and who produced it. Readers call `verify` before
using a byte of the file, so a file cut short, edited or replaced after its producer wrote it is a
named error, naming the file and both hashes, never silently used.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from .io import FieldType, InputFileError, field_problem, jsonable, jsonl_text, read_json, sha256_file

MANIFEST_SUFFIX = ".manifest.json"
STAGED_SUFFIX = ".staged.tmp"
MANIFEST_FIELDS = {"file": str, "sha256": str, "bytes": int}


class ArtifactIntegrityError(InputFileError):
    """A produced file does not match what its producer recorded (or its record is missing)."""


class ContractError(InputFileError):
    """A JSON document one asset wrote and another reads lacks a key, or holds one of the wrong type."""


def check_fields(
    data: Mapping[str, Any],
    source: str | Path,
    required: Mapping[str, FieldType],
    optional: Mapping[str, FieldType] | None = None,
    what: str = "",
) -> None:
    """Refuse `data` (read from `source`, a file or a description) unless every `required` key is there with its
    type and every `optional` key that is there has its type; the error names the source and the key."""
    if not isinstance(data, Mapping):
        raise ContractError(f"{source}: expected a JSON object, got {type(data).__name__}{what}")
    for field, expected in {**required, **(optional or {})}.items():
        if field in required or field in data:
            problem = field_problem(data, field, expected)
            if problem:
                raise ContractError(f"{source}: {problem}{what}")


class Document:
    """Base of the frozen dataclasses that type a JSON document one asset writes and another reads.

    `TYPES` names the document's keys, in the order they are written, with their types; the dataclass's
    fields are the same keys. `from_dict` refuses a missing or mistyped key naming the source and the key;
    `to_dict` gives the keys back in the same order. Subclasses with nested documents extend both.
    """

    TYPES: ClassVar[dict[str, FieldType]] = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path = "", what: str = "") -> Any:
        check_fields(data, source or cls.__name__, cls.TYPES, what=what)
        return cls(**{k: data[k] for k in cls.TYPES})

    @classmethod
    def read(cls, path: Path, what: str = "") -> Any:
        """The document in the JSON file `path` (a missing, malformed or incomplete file is a named error)."""
        return cls.from_dict(read_json(path, what=what), path, what)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.TYPES}


def manifest_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def jsonl_rows(path: Path) -> int:
    """Rows of a JSONL file as its writer counts them: non-blank lines."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def describe(path: Path, producer: str, rows: int | None = None, name: str | None = None, **meta: Any) -> dict:
    """The sidecar manifest of `path` (hash, size, rows, producer and anything else worth checking)."""
    path = Path(path)
    return jsonable({"file": name or path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                     "rows": rows, "producer": producer, **meta})  # fmt: skip


def read_manifest(path: Path, producer: str) -> dict[str, Any]:
    sidecar = manifest_path(path)
    if not sidecar.is_file():
        raise ArtifactIntegrityError(
            f"{path}: its manifest {sidecar.name} is missing, so the file cannot be checked against what "
            f"{producer} recorded (an interrupted write, a copy by hand, or data from before manifests): "
            f"re-materialize {producer}"
        )
    return read_json(sidecar, MANIFEST_FIELDS, what=f" (the manifest of {path.name}; re-materialize {producer})")


def verify(path: Path, producer: str, rows: int | None = None) -> dict[str, Any]:
    """Check `path` against its sidecar manifest; returns the manifest. `rows`: the rows the reader parsed.

    One re-check after a short pause absorbs a concurrent commit that replaced the file and its
    manifest between our two reads.
    """
    path = Path(path)
    for attempt in range(2):
        if not path.is_file():
            raise ArtifactIntegrityError(f"{path}: file does not exist; materialize {producer} first")
        recorded = read_manifest(path, producer)
        actual, size = sha256_file(path), path.stat().st_size
        if actual == recorded["sha256"] and size == recorded["bytes"]:
            break
        if attempt == 0:
            time.sleep(0.2)
            continue
        raise ArtifactIntegrityError(
            f"{path} is not the file {producer} produced: its sha256 is {actual} ({size} bytes) but "
            f"{manifest_path(path).name} records {recorded['sha256']} ({recorded['bytes']} bytes"
            + (f", {recorded['rows']} rows" if recorded.get("rows") is not None else "")
            + f"); it was cut short or changed after it was written: re-materialize {producer}"
        )
    if rows is not None and recorded.get("rows") is not None and rows != recorded["rows"]:
        raise ArtifactIntegrityError(
            f"{path} holds {rows} rows but {manifest_path(path).name} records {recorded['rows']} "
            f"(sha256 {recorded['sha256']}): re-materialize {producer}"
        )
    return recorded


class Staging:
    """New content for a step's outputs, staged beside each target until it is committed.

    `writing(target)` yields the staged path to write; `manifest(target, ...)` stages its sidecar.
    Nothing is visible under a target's name until `commit_locally()` (or `ProvenanceStore.commit`,
    which also records provenance); `discard()` removes what was staged.
    """

    def __init__(self) -> None:
        self.txid = uuid.uuid4().hex[:12]
        self._staged: dict[Path, Path] = {}  # target -> staged file, in the order written

    def staged_path(self, target: Path) -> Path:
        target = Path(target)
        return target.with_name(f".{target.name}.{self.txid}{STAGED_SUFFIX}")

    def __contains__(self, target: object) -> bool:
        return isinstance(target, str | Path) and Path(target) in self._staged

    def __bool__(self) -> bool:
        return bool(self._staged)

    @contextlib.contextmanager
    def writing(self, target: Path) -> Iterator[Path]:
        """Yield the staged path for `target`; a failed write removes it and names `target`."""
        target = Path(target)
        staged = self.staged_path(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            yield staged
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())
        except BaseException as exc:
            staged.unlink(missing_ok=True)
            self._staged.pop(target, None)
            if isinstance(exc, OSError) and not str(exc).startswith("could not write"):
                raise OSError(exc.errno, f"could not write {target}: {exc.strerror or exc}") from exc
            raise
        self._staged[target] = staged

    def write_bytes(self, target: Path, data: bytes) -> Path:
        with self.writing(target) as staged:
            staged.write_bytes(data)
        return Path(target)

    def write_text(self, target: Path, text: str) -> Path:
        return self.write_bytes(target, text.encode("utf-8"))

    def write_json(self, target: Path, obj: Any) -> Path:
        text = json.dumps(jsonable(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
        return self.write_text(target, text + "\n")

    def write_jsonl(self, target: Path, rows: Iterable[dict[str, Any]]) -> Path:
        return self.write_text(target, jsonl_text(rows))

    def manifest(self, target: Path, producer: str, rows: int | None = None, **meta: Any) -> dict[str, Any]:
        """Stage `target`'s sidecar manifest, describing its staged (or, if not staged, current) content."""
        target = Path(target)
        source = self._staged.get(target, target)
        description = describe(source, producer, rows, name=target.name, **meta)
        self.write_json(manifest_path(target), description)
        return description

    def hash(self, target: Path) -> str:
        """sha256 of what `target` will hold once committed."""
        return sha256_file(self._staged[Path(target)])

    def targets(self) -> list[Path]:
        """Targets in publishing order: files first, their manifests last."""
        files = [t for t in self._staged if not t.name.endswith(MANIFEST_SUFFIX)]
        return files + [t for t in self._staged if t.name.endswith(MANIFEST_SUFFIX)]

    def moves(self) -> list[tuple[Path, Path]]:
        return [(self._staged[t], t) for t in self.targets()]

    def commit_locally(self) -> list[Path]:
        """Rename every staged file onto its target (no provenance: for callers outside an asset)."""
        for staged, target in self.moves():
            os.replace(staged, target)
        done = self.targets()
        self.committed()
        return done

    def committed(self) -> None:
        """Forget the staged files: a commit renamed them onto their targets."""
        self._staged.clear()

    def discard(self) -> None:
        for staged in self._staged.values():
            staged.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()  # whatever was not committed is dropped
