"""Configurable resources: where artifacts live, which base model, where provenance goes."""

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from .core import devices, guard, layout, model_loader
from .core.artifacts import Staging, manifest_path, verify
from .core.io import content_hash, read_jsonl
from .core.provenance import Artifact, ProvenanceRecord, ProvenanceStore, code_version
from .core.storage import ArtifactStore, parse_storage_options
from .runs import heartbeat

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("STAGE1_DATA_DIR", str(REPO_ROOT / "data"))
DEFAULT_MODELS_DIR = os.environ.get("STAGE1_MODELS_DIR", str(REPO_ROOT / "data" / "models"))
# the base model of runs that get no resource config (schedule, backfill, daemon-launched runs): see `source`
DEFAULT_MODEL_SOURCE = os.environ.get("STAGE1_MODEL_SOURCE", model_loader.EMBEDDED)
DEFAULT_ARTIFACT_STORE = os.environ.get("STAGE1_ARTIFACT_STORE", "")
DEFAULT_ARTIFACT_STORE_OPTIONS = os.environ.get("STAGE1_ARTIFACT_STORE_OPTIONS", "")

_LOADED: dict[tuple[Any, ...], model_loader.LoadedModel] = {}


class ArtifactStoreConfig(dg.ConfigurableResource):
    """Where artifacts live for every host (README: Beyond one machine); paths and provenance share it."""

    artifact_store: str = Field(
        default=DEFAULT_ARTIFACT_STORE,
        description="fsspec URL of the artifact store shared by all hosts (e.g. s3://bucket/stage1); `data_dir` "
        "is then its local mirror. Empty (default): `data_dir` is the only copy, for one host.",
    )
    artifact_store_options: str = Field(
        default=DEFAULT_ARTIFACT_STORE_OPTIONS,
        description='fsspec storage options as a JSON object (e.g. {"endpoint_url": "http://minio:9000"}); '
        "credentials come from the backend's usual environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...).",
    )

    def storage_options(self) -> dict[str, Any]:
        return parse_storage_options(self.artifact_store_options)


class Stage1Paths(ArtifactStoreConfig):
    """Root of the produced artifacts (the layout under `data/` in README.md), mirrored to the artifact store if any.

    Assets read inputs through `fetch`/`fetch_dir` and hand outputs to `publish` after writing them;
    without an artifact store both are no-ops.
    """

    data_dir: str = Field(default=DEFAULT_DATA_DIR, description="Directory for produced artifacts.")

    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.data_dir, self.artifact_store, self.storage_options())

    def fetch(self, *parts: str) -> Path:
        """The local path of file `parts`, holding the store's current version."""
        return self.store().fetch(self.path(*parts))

    def fetch_dir(self, *parts: str, pattern: str | None = None) -> Path:
        """The local path of folder `parts`, mirroring the store's files (those matching `pattern`)."""
        return self.store().fetch_dir(self.path(*parts), pattern)

    def fetch_verified(self, *parts: str, producer: str) -> Path:
        """Like `fetch`, with the file's sidecar manifest, and checked against it (named error if it does not match)."""
        path = self.fetch(*parts)
        self.store().fetch(manifest_path(path))
        verify(path, producer)
        return path

    def test_set(self) -> tuple[Path, list[dict[str, Any]]]:
        """The held-out test set (checked against its manifest, refused by file and line when malformed): its
        path and rows."""
        path = self.fetch_verified(layout.TEST_SET, producer="test_instructions")
        return path, read_jsonl(path, required=("instruction",))

    def staging(self) -> Staging:
        """Where a step writes its outputs until `ProvenanceResource.commit` publishes them with its record."""
        return Staging()

    def publish(self, *paths: Path) -> None:
        """Upload written files or folders to the store (in the order given)."""
        self.store().sync(*paths)

    def location(self, path: Path) -> str:
        """What provenance and metadata call `path`: its store URL, or the local path on one host."""
        return self.store().location(path)


class BaseModelResource(dg.ConfigurableResource):
    """The clean base model every generation, critic and judge step uses."""

    source: str = Field(
        default=DEFAULT_MODEL_SOURCE,
        description="'embedded' (Gemma 3 270M base from PyPI), a local HF model directory, or a hub id "
        "(default: $STAGE1_MODEL_SOURCE, else 'embedded').",
    )
    models_dir: str = Field(default=DEFAULT_MODELS_DIR, description="Cache of converted models.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_hub: bool = Field(default=False, description="Allow hub downloads (off: machines are offline).")
    allow_instruction_tuned: bool = Field(
        default=False, description="Override the contamination guard (needs override_reason)."
    )
    override_reason: str | None = Field(default=None, description="Why the guard is overridden.")
    fused_kernels: bool = Field(
        default=True,
        description="On CUDA, run each of Gemma's float32 norms as one call of torch's fused RMSNorm (the same "
        "function to float rounding, fewer kernels; no Triton compilation: BENCHMARKS.md).",
    )
    gpu_wait_seconds: float = Field(
        default=600.0, ge=0.0, description="How long to wait for a free GPU when every GPU of the host is claimed."
    )

    def load(self) -> model_loader.LoadedModel:
        """Load once per process: every asset in a run shares one copy of the weights."""
        key = (self.source, self.models_dir, self.device, self.allow_hub,
               self.allow_instruction_tuned, self.override_reason, self.fused_kernels)  # fmt: skip
        if key not in _LOADED:
            _LOADED[key] = model_loader.load_model(
                source=self.source,
                models_dir=Path(self.models_dir),
                device=self._device(),
                allow_hub=self.allow_hub,
                allow_instruction_tuned=self.allow_instruction_tuned,
                override_reason=self.override_reason,
                fused_kernels=self.fused_kernels,
            )
        return _LOADED[key]

    def controls_cache_dir(self) -> Path:
        """Where critic reports on the labelled control set are kept, beside the converted models they depend on."""
        return Path(self.models_dir) / "critic_controls"

    def guard_adapter(self, adapter_dir: Path) -> dict:
        """The contamination guard on an adapter about to be loaded on top of the base model: its base must be
        a clean base model too (refused like a model, with the same override). Returns the verdict."""
        verdict = guard.inspect_adapter(adapter_dir)
        guard.apply_guard(verdict, self.allow_instruction_tuned, self.override_reason)
        return verdict.as_dict()

    def _device(self) -> str:
        """On a CUDA host, this process's own GPU (see core/devices.py); else the configured device."""
        if self.device == "cpu" or not model_loader.cuda_available():
            return self.device
        return devices.claim_gpu_for_process(wait_seconds=self.gpu_wait_seconds)


class ProvenanceResource(ArtifactStoreConfig):
    """DuckDB provenance store (`data/provenance.duckdb` by default); with an artifact store, every record also
    goes to the shared log `<artifact_store>/provenance/spool/` that each host's DuckDB ingests."""

    db_path: str = Field(default=str(Path(DEFAULT_DATA_DIR) / "provenance.duckdb"))

    def store(self) -> ProvenanceStore:
        return ProvenanceStore(
            Path(self.db_path), store_url=self.artifact_store, storage_options=self.storage_options()
        )

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[Any]:
        """While a step that records provenance runs, its run worker and a heartbeat are kept in the run's tags,
        so that a run whose process dies is recognized as dead (stage1_assets/runs.py)."""
        with heartbeat(context.instance, context.run_id), super().yield_for_execution(context) as resource:
            yield resource

    def commit(
        self,
        context: dg.AssetExecutionContext,
        started: float,
        staging: Staging,
        paths: "Stage1Paths",
        inputs: dict[str, str] | None = None,
        outputs: dict[str, Path | tuple[str, str]] | None = None,
        **fields: Any,
    ) -> ProvenanceRecord:
        """Publish the step's staged outputs together with its provenance record (the tail of every asset).

        `outputs` maps artifact name to its target path (staged in `staging`, or an existing file or folder
        that is recorded as it is), or to (location, content hash) for something identified otherwise (the
        base model by its fingerprint). Nothing under a target's name changes unless the record is written
        too; then the outputs go to the artifact store (if any) before the record goes to the shared log.
        """
        recorded = {
            name: path if isinstance(path, tuple)
            else (paths.location(path), staging.hash(path) if path in staging else content_hash(path))
            for name, path in (outputs or {}).items()
        }  # fmt: skip
        rec = self._record(context, started, inputs, recorded, **fields)
        self.store().commit(rec, staging, publish=paths.publish)
        return rec

    def record(
        self,
        context: dg.AssetExecutionContext,
        started: float,
        inputs: dict[str, str] | None = None,
        outputs: dict[str, tuple[str, str]] | None = None,
        **fields: Any,
    ) -> ProvenanceRecord:
        """Record one materialization of the current asset (run id, partition, timings filled in).

        `inputs` maps artifact name to content hash; `outputs` maps name to (path, content hash).
        Outputs written before this call are visible before their record: prefer `commit`.
        """
        rec = self._record(context, started, inputs, outputs, **fields)
        self.store().record(rec)
        return rec

    def _record(
        self,
        context: dg.AssetExecutionContext,
        started: float,
        inputs: dict[str, str] | None,
        outputs: dict[str, tuple[str, str]] | None,
        **fields: Any,
    ) -> ProvenanceRecord:
        wall = round(time.perf_counter() - started, 3)
        device = fields.get("device")
        rec = ProvenanceRecord(
            asset_key=context.asset_key.to_user_string(),
            run_id=context.run_id,
            partition_key=context.partition_key if context.has_partition_key else None,
            code_version=code_version(),
            wall_seconds=wall,
            accelerator_seconds=wall if device and device.startswith("cuda") else 0.0,
            inputs=[Artifact(name=n, content_hash=h) for n, h in (inputs or {}).items()],
            outputs=[Artifact(name=n, path=p, content_hash=h) for n, (p, h) in (outputs or {}).items()],
            **fields,
        )
        return rec
