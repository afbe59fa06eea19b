"""Atomic file output, content hashing and validated JSONL input.

Every artifact goes through `atomic_write*`: the bytes land in a temporary file in the same
directory, are fsynced, then renamed over the target, so a crash never leaves a half-written file
that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class InputFileError(ValueError):
    """A user-supplied file is unusable; the message names the file, the line and the problem."""


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where the kernel says it (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore it (briefly process-wide, hence the lock)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def readable_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    The temporary file (mkstemp: mode 0600) gets the mode any new file of this process would get
    (0666 less the umask) before the rename, so artifacts are as readable as the umask allows.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, readable_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {target}: {exc.strerror or exc}") from exc
    return Path(target)


def atomic_write_text(target: Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) with null, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def atomic_write_json(target: Path, obj: Any) -> Path:
    text = json.dumps(jsonable(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return atomic_write_text(target, text + "\n")


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def atomic_write_jsonl(target: Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write_text(target, jsonl_text(rows))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(path: Path, names: Iterable[str] | None = None) -> str:
    """The one content hash of an artifact. A file: the sha256 of its bytes. A directory: the sha256
    of its files' relative paths and sha256s, in path order (only `names` when given; temporary
    `.*.tmp` files left by a killed write are not content)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory to hash")
    files = [path / n for n in names] if names is not None else sorted(p for p in path.rglob("*") if p.is_file())
    content = [f for f in files if not (f.name.startswith(".") and f.suffix == ".tmp")]
    return stable_hash({f.relative_to(path).as_posix(): sha256_file(f) for f in content})


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-serialisable object that does not depend on key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


FieldType = type | tuple[type, ...]


def type_name(expected: FieldType) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "an object",
             list: "a list"}  # fmt: skip
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def field_problem(row: Mapping[str, Any], field: str, expected: FieldType) -> str | None:
    """Why `row[field]` is not of type `expected` (None if it is); booleans are not numbers."""
    if field not in row:
        return f"field {field!r} is missing (expected {type_name(expected)})"
    value = row[field]
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    return None if ok else f"field {field!r} must be {type_name(expected)}, got {json.dumps(value)[:60]}"


def read_json(path: Path, fields: Mapping[str, FieldType] | None = None, what: str = "") -> dict[str, Any]:
    """Read one JSON object, refusing anything unusable with the file (line, column, field) named."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file does not exist{what}")
    raw = path.read_bytes()
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise InputFileError(f"{path}:{line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start}){what}") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg}){what}") from None
    if not isinstance(obj, dict):
        raise InputFileError(f"{path}: expected a JSON object, got {type(obj).__name__}{what}")
    for field, expected in (fields or {}).items():
        problem = field_problem(obj, field, expected)
        if problem:
            raise InputFileError(f"{path}: {problem}{what}")
    return obj


def read_jsonl(
    path: Path,
    required: tuple[str, ...] = (),
    default_id: Callable[[int], str] | None = None,
    types: Mapping[str, FieldType] | None = None,
) -> list[dict[str, Any]]:
    """Read a JSONL file, refusing anything ambiguous with the file and line named.

    Refuses: a missing or empty file, non-UTF-8 bytes, a malformed or non-object line, a
    missing/empty required string field, a field of `types` that is missing or of another type
    (`{"accepted": bool}`; booleans are not numbers), an `id` that is not a string or integer,
    duplicate `id`s. Blank lines are skipped. With `default_id`, a row without an `id` gets
    `default_id(n)` (n: its 1-based row number), and those ids are checked for duplicates like the
    given ones.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise InputFileError(f"{path}:{line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    rows: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputFileError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        for field in required:
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise InputFileError(f"{path}:{line_no}: field {field!r} is missing or empty")
        for field, expected in (types or {}).items():
            problem = field_problem(row, field, expected)
            if problem:
                raise InputFileError(f"{path}:{line_no}: {problem}")
        if row.get("id") in (None, "") and default_id is not None:
            row["id"] = default_id(len(rows) + 1)
        if "id" in row:
            if isinstance(row["id"], bool) or not isinstance(row["id"], str | int):
                raise InputFileError(f"{path}:{line_no}: field 'id' must be a string or an integer")
            row_id = str(row["id"])
            if row_id in seen_ids:
                raise InputFileError(
                    f"{path}:{line_no}: duplicate id {row_id!r} (first seen on line {seen_ids[row_id]})"
                )
            seen_ids[row_id] = line_no
        rows.append(row)
    if not rows:
        raise InputFileError(f"{path}: file is empty; expected one JSON object per line")
    return rows
