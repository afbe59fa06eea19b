"""The adapter record: which trained adapter is the latest, as `adapter_checkpoint` commits it.

`adapters/latest.json` (core/layout.py) is written with its sidecar manifest in the same commit as
the adapter's provenance record; `eval_report` reads it to find the adapter folder
`adapters/<spec hash>/` and checks the folder's files against the hash recorded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .artifacts import ContractError, Document
from .io import FieldType

PRODUCER = "adapter_checkpoint"


@dataclass(frozen=True)
class AdapterRecord(Document):
    """One trained adapter: its folder name (the hash of its training spec), the hash of its files, and the
    base model and SFT dataset it was trained from."""

    spec_hash: str
    adapter_sha256: str
    base_model: str
    sft_dataset_sha256: str

    TYPES: ClassVar[dict[str, FieldType]] = {"spec_hash": str, "adapter_sha256": str, "base_model": str,
                                              "sft_dataset_sha256": str}  # fmt: skip

    @classmethod
    def read(cls, path: Path, what: str = f"; re-materialize {PRODUCER}") -> AdapterRecord:
        return super().read(path, what)

    def check(self, adapter_dir: Path, adapter_sha256: str) -> None:
        """Refuse an adapter folder whose files are not those recorded (`adapter_sha256`: their hash now)."""
        if adapter_sha256 != self.adapter_sha256:
            raise ContractError(
                f"{adapter_dir} holds an adapter with hash {adapter_sha256}, but {PRODUCER} recorded "
                f"{self.adapter_sha256}: it changed after training; re-materialize {PRODUCER}"
            )
