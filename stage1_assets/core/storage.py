"""Where artifacts live: a local working directory, optionally mirrored to an object store.

Every step computes against local files under `root` (the `data/` folder). With no store URL
that folder is the only copy and every method here is a no-op, so a single host behaves exactly
as before. With a store URL (`s3://bucket/prefix`, or any fsspec URL), the folder is a cache of
the store:

* `fetch` / `fetch_dir` bring the store's current version of an input into the local folder
  before a step reads it (downloaded into a temporary file and renamed, so a reader never sees a
  partial file; skipped when the local copy already is that version);
* `sync` publishes a local file or folder after the step has written it (atomically, locally
  first), or removes the store's copy of something deleted locally. One object PUT is atomic in
  S3, so a reader on another host sees the old object or the new one, never a partial one.

The version of each local copy (the store's ETag and size, or mtime and size where a backend has
no ETag) is kept under `<root>/.stage1-store/`, so a host re-downloads only what changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from .io import atomic_path, atomic_write_text

VERSIONS_DIR = ".stage1-store"


def parse_storage_options(text: str) -> dict[str, Any]:
    """fsspec storage options from a JSON object (empty text: none; credentials come from the environment)."""
    if not text.strip():
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"artifact store options must be a JSON object: {exc.msg} in {text!r}") from None
    if not isinstance(options, dict):
        raise ValueError(f"artifact store options must be a JSON object, got {type(options).__name__}")
    return options


class ArtifactStore:
    """A local folder (`root`), mirrored to the fsspec URL `url` when one is given."""

    def __init__(self, root: Path | str, url: str = "", storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root).absolute()
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})

    @property
    def remote(self) -> bool:
        return bool(self.url)

    @cached_property
    def _fs_and_base(self) -> tuple[Any, str]:
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    @property
    def fs(self) -> Any:
        return self._fs_and_base[0]

    def rel(self, path: Path | str) -> str:
        """`path` (absolute, or relative to the working directory) relative to the root, as a POSIX key ("" for
        the root); refuses paths outside the root."""
        try:
            rel = Path(path).absolute().relative_to(self.root)
        except ValueError:
            raise ValueError(f"{path} is not inside the artifact folder {self.root}") from None
        return rel.as_posix() if rel.parts else ""

    def location(self, path: Path | str) -> str:
        """Where `path` lives for every host: its store URL, or the local path without a store."""
        return f"{self.url}/{self.rel(path)}" if self.remote else str(path)

    def _key(self, rel: str) -> str:
        base = self._fs_and_base[1].rstrip("/")
        return f"{base}/{rel}" if rel else base

    def fetch(self, path: Path | str) -> Path:
        """Make the local copy of file `path` the store's current version; returns the local path.

        Where the store has no such object the local path is left as it is (it may not exist).
        """
        if not self.remote:
            return Path(path)
        rel = self.rel(path)
        local = self.root / rel
        key = self._key(rel)
        self.fs.invalidate_cache(key)  # another host may have replaced it since we last looked
        try:
            info = self.fs.info(key)
        except FileNotFoundError:
            return local
        if info.get("type") == "file":
            self._download(key, local, info)
        return local

    def fetch_dir(self, path: Path | str, pattern: str | None = None) -> Path:
        """Mirror the store's files under folder `path` (all, or those matching the glob `pattern`) locally.

        When the store holds any, local files (matching `pattern`) that the store lacks are
        removed, so the folder never mixes two versions (say, checkpoints of an abandoned attempt).
        When the store holds none, the local folder is left as it is.
        """
        if not self.remote:
            return Path(path)
        rel = self.rel(path)
        local = self.root / rel
        prefix = self._key(rel)
        remote = {
            sub: info
            for sub, info in self.list_files(local).items()
            if pattern is None or PurePosixPath(sub).match(pattern)
        }
        if not remote:
            return local
        for sub, info in remote.items():
            self._download(f"{prefix}/{sub}", local / sub, info)
        for existing in local.rglob("*") if pattern is None else local.glob(pattern):
            sub = existing.relative_to(local)
            if existing.is_file() and not _hidden(sub) and sub.as_posix() not in remote:
                existing.unlink()
                self._version_file(existing).unlink(missing_ok=True)
        return local

    def list_files(self, path: Path | str) -> dict[str, dict[str, Any]]:
        """The store's files under folder `path`: relative POSIX path -> object info (empty without a store)."""
        if not self.remote:
            return {}
        prefix = self._key(self.rel(path))
        self.fs.invalidate_cache(prefix)
        found = self.fs.find(prefix, detail=True)
        return {
            PurePosixPath(key).relative_to(prefix).as_posix(): info
            for key, info in found.items()
            if info.get("type") == "file"
        }

    def read(self, path: Path | str, subs: list[str]) -> list[bytes]:
        """Contents of the store's files `subs` under folder `path`, fetched concurrently where the backend can."""
        prefix = self._key(self.rel(path))
        keys = [f"{prefix}/{sub}" for sub in subs]
        found = self.fs.cat(keys) if keys else {}
        return [found[key] for key in keys]

    def put(self, path: Path | str) -> None:
        """Upload one write-once file (no local version kept: it is never fetched back)."""
        if self.remote:
            rel = self.rel(path)
            self.fs.put_file(str(self.root / rel), self._key(rel))

    def sync(self, *paths: Path | str) -> None:
        """Publish each local file or folder to the store; where one no longer exists locally, remove it there.

        Files are uploaded in sorted order, each after its local atomic write, so a folder's
        marker file (written last) should be passed last when order matters.
        """
        if not self.remote:
            return
        for given in paths:
            rel = self.rel(given)
            path, key = self.root / rel, self._key(rel)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
                for local in files:
                    self._upload(local, f"{key}/{local.relative_to(path).as_posix()}")
            elif path.is_file():
                self._upload(path, key)
            else:
                self.fs.invalidate_cache(key)
                if self.fs.exists(key):
                    self.fs.rm(key, recursive=True)
                version = self._version_file(path)
                if version.is_dir():
                    shutil.rmtree(version)
                else:
                    version.unlink(missing_ok=True)

    def _upload(self, local: Path, key: str) -> None:
        self.fs.put_file(str(local), key)
        self.fs.invalidate_cache(key)
        self._remember(local, self.fs.info(key))

    def _download(self, key: str, local: Path, info: Mapping[str, Any]) -> None:
        if local.is_file() and self._recorded(local) == _version(info):
            return
        with atomic_path(local) as tmp:
            self.fs.get_file(key, str(tmp))
        self._remember(local, info)

    def _version_file(self, local: Path) -> Path:
        return self.root / VERSIONS_DIR / self.rel(local)

    def _recorded(self, local: Path) -> str | None:
        try:
            return self._version_file(local).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _remember(self, local: Path, info: Mapping[str, Any]) -> None:
        atomic_write_text(self._version_file(local), _version(info))


def _hidden(rel: Path) -> bool:
    """Temporary files of atomic writes and staging folders start with a dot: never published."""
    return any(part.startswith(".") for part in rel.parts)


def _version(info: Mapping[str, Any]) -> str:
    """The store's identity of one object version: ETag where the backend has one, else mtime; plus size."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{tag}:{info.get('size')}"
