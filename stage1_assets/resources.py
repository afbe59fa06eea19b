"""Configurable resources: where artifacts live, which base model, where provenance goes."""

import os
import time
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from .core import model_loader
from .core.provenance import Artifact, ProvenanceRecord, ProvenanceStore, code_version

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("STAGE1_DATA_DIR", str(REPO_ROOT / "data"))
DEFAULT_MODELS_DIR = os.environ.get("STAGE1_MODELS_DIR", str(REPO_ROOT / "data" / "models"))

_LOADED: dict[tuple[Any, ...], model_loader.LoadedModel] = {}


class Stage1Paths(dg.ConfigurableResource):
    """Root of the produced artifacts (DESIGN.md layout under `data/`)."""

    data_dir: str = Field(default=DEFAULT_DATA_DIR, description="Directory for produced artifacts.")

    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)


class BaseModelResource(dg.ConfigurableResource):
    """The clean base model every generation, critic and judge step uses."""

    source: str = Field(
        default=model_loader.EMBEDDED,
        description="'embedded' (Gemma 3 270M base from PyPI), a local HF model directory, or a hub id.",
    )
    models_dir: str = Field(default=DEFAULT_MODELS_DIR, description="Cache of converted models.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_hub: bool = Field(default=False, description="Allow hub downloads (off: machines are offline).")
    allow_instruction_tuned: bool = Field(
        default=False, description="Override the contamination guard (needs override_reason)."
    )
    override_reason: str | None = Field(default=None, description="Why the guard is overridden.")

    def load(self) -> model_loader.LoadedModel:
        """Load once per process: every asset in a run shares one copy of the weights."""
        key = (self.source, self.models_dir, self.device, self.allow_hub,
               self.allow_instruction_tuned, self.override_reason)  # fmt: skip
        if key not in _LOADED:
            _LOADED[key] = model_loader.load_model(
                source=self.source,
                models_dir=Path(self.models_dir),
                device=self.device,
                allow_hub=self.allow_hub,
                allow_instruction_tuned=self.allow_instruction_tuned,
                override_reason=self.override_reason,
            )
        return _LOADED[key]


class ProvenanceResource(dg.ConfigurableResource):
    """DuckDB provenance store (`data/provenance.duckdb` by default)."""

    db_path: str = Field(default=str(Path(DEFAULT_DATA_DIR) / "provenance.duckdb"))

    def store(self) -> ProvenanceStore:
        return ProvenanceStore(Path(self.db_path))

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
        """
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
        self.store().record(rec)
        return rec
