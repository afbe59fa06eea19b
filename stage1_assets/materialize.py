"""What every stage1 asset shares: its decorator's defaults, and the tail of its body.

The tail: the step's staged outputs are published together with its provenance record
(`ProvenanceResource.commit`), then the asset returns its metadata with a data version, the first
16 hex digits of its output's content hash.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from .core.artifacts import Staging
from .core.model_loader import ModelInfo
from .core.provenance import ProvenanceRecord
from .k8s import GPU_TAGS
from .resources import ProvenanceResource, Stage1Paths

OWNERS = ["team:stage1"]


def stage1_asset(*, stage: str, group: str, kinds: set[str], gpu: bool = False, **kwargs: Any) -> Any:
    """`dg.asset` with the team as owner and a `stage` tag; `gpu`: in the `gpu` pool, with the op tags that ask
    Kubernetes for a GPU (stage1_assets/k8s.py)."""
    on_gpu = {"pool": "gpu", "op_tags": GPU_TAGS} if gpu else {}
    return dg.asset(group_name=group, kinds=kinds, owners=OWNERS, tags={"stage": stage}, **on_gpu, **kwargs)


def materialize_result(version: str, metadata: Mapping[str, Any]) -> dg.MaterializeResult:
    """The asset's result: its metadata, and its data version from `version` (a content hash)."""
    return dg.MaterializeResult(metadata=dict(metadata), data_version=dg.DataVersion(version[:16]))


@dataclass
class Step:
    """One materialization of an asset: its context, resources and start time, for the provenance record."""

    context: dg.AssetExecutionContext
    paths: Stage1Paths
    provenance: ProvenanceResource
    started: float = field(default_factory=time.perf_counter)

    def commit(self, staging: Staging, model: ModelInfo | None = None, **fields: Any) -> ProvenanceRecord:
        """Publish `staging` with the step's provenance record (`ProvenanceResource.commit`'s fields); `model`
        fills in the model fingerprint and device."""
        if model is not None:
            fields = {"model_fingerprint": model.fingerprint, "device": model.device} | fields
        return self.provenance.commit(self.context, self.started, staging, self.paths, **fields)

    def materialized(
        self, staging: Staging, version: str, metadata: Mapping[str, Any], model: ModelInfo | None = None, **fields: Any
    ) -> dg.MaterializeResult:
        """`commit`, then the asset's result (`materialize_result`)."""
        self.commit(staging, model, **fields)
        return materialize_result(version, metadata)
