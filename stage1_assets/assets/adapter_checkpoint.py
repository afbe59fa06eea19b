"""`adapter_checkpoint`: a LoRA (QLoRA on CUDA) adapter trained on the SFT dataset, resumable."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import PROFILE
from ..core import adapter, layout, plots
from ..core.io import content_hash, read_json, read_jsonl, stable_hash
from ..core.qc import DatasetQCSummary
from ..core.training import ADAPTER_FILES, TrainingParams, train_adapter
from ..materialize import Step, stage1_asset
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths


class AdapterConfig(dg.Config, TrainingParams):
    epochs: int = Field(default=PROFILE.epochs, ge=1, le=100)
    batch_size: int = Field(default=PROFILE.train_batch_size, ge=1, le=1024, description="Sequences per micro-batch.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")


def log_training_step(context: dg.AssetExecutionContext, record: dict, line: str) -> None:
    """A line where validation loss is measured (every `checkpoint_every` steps and the last): one per step floods."""
    if "val_loss" in record:
        context.log.info(f"train loss {record['train_loss']:.3f}, val loss {record['val_loss']:.3f}; {line}")


def qc_gate(paths: Stage1Paths, sft_path: Path) -> str:
    """Refuse a dataset whose QC failed, whose QC is stale, or that overlaps the test set.

    Overlap comes from the QC summary's own test-set check; the summary must describe the current
    dataset and the current test set. Returns the dataset's sha256.
    """
    qc_path = paths.fetch(layout.QC_SUMMARY)
    if not qc_path.exists():
        raise dg.Failure(f"{qc_path} does not exist: materialize qc_summary (and pass its checks) before training")
    summary = DatasetQCSummary.read(qc_path, what="; re-materialize qc_summary")
    dataset_hash = content_hash(sft_path)
    test_hash = lambda: content_hash(paths.fetch(layout.TEST_SET))  # noqa: E731 (read only if all else passes)
    refusal = summary.training_refusal(qc_path, sft_path, dataset_hash, test_hash)
    if refusal:
        raise dg.Failure(refusal)
    return dataset_hash


@stage1_asset(
    stage="training",
    group="training",
    kinds={"pytorch", "peft"},
    gpu=True,
    deps=["sft_dataset", "qc_summary", "test_instructions"],
    description=(
        "LoRA adapter (QLoRA: 4-bit NF4 base on CUDA; fp32 LoRA on CPU) trained on `sft_dataset` with loss on "
        "response tokens only. Standard PEFT directory `data/adapters/<spec-hash>/` (loadable with "
        "`PeftModel.from_pretrained`) plus `training_metrics.json` and a loss curve. Resumes from its last "
        "checkpoint; refuses a dataset whose QC failed or that overlaps the test set."
    ),
)
def adapter_checkpoint(
    context: dg.AssetExecutionContext,
    config: AdapterConfig,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
) -> dg.MaterializeResult:
    step = Step(context, paths, provenance)
    sft_path = paths.fetch_verified(layout.SFT_DATASET, producer="sft_dataset")  # as the merge recorded it
    dataset_hash = qc_gate(paths, sft_path)
    rows = read_jsonl(sft_path, required=("instruction", "response"))
    lm = model.load()
    params = TrainingParams(**config.model_dump(exclude={"max_steps"}))
    spec = {"dataset": dataset_hash, "base_model": lm.info.fingerprint, "params": params.model_dump(),
            "max_steps": config.max_steps}  # fmt: skip
    out_dir = paths.fetch_dir(layout.ADAPTERS, stable_hash(spec)[:16])  # an adapter another host trained is reused
    metrics_path = out_dir / layout.TRAINING_METRICS
    staging = paths.staging()
    if metrics_path.exists():
        context.log.info(f"{out_dir} already holds an adapter trained with this spec; reusing it")
        metrics = read_json(metrics_path, {"steps": int}, what=f"; delete {out_dir} to train again")
        png = (out_dir / layout.LOSS_CURVE).read_bytes()
    else:
        result = train_adapter(
            lm.info.path, lm.tokenizer, rows, out_dir, params, device=lm.info.device, max_steps=config.max_steps,
            on_step=lambda record, line: log_training_step(context, record, line),
        )  # fmt: skip
        metrics = result.metrics | {"history": result.history, "spec": spec}
        png = plots.loss_curve(result.history)
        staging.write_bytes(out_dir / layout.LOSS_CURVE, png)
        staging.write_json(metrics_path, metrics)  # its presence marks a finished adapter: committed with provenance
    paths.publish(*(out_dir / name for name in ADAPTER_FILES))
    adapter_hash = content_hash(out_dir, ADAPTER_FILES)
    # the record eval_report finds the adapter by, committed with the provenance record
    record = adapter.AdapterRecord(out_dir.name, adapter_hash, lm.info.fingerprint, dataset_hash)
    staging.write_json(paths.path(*layout.LATEST_ADAPTER), record.to_dict())
    staging.manifest(paths.path(*layout.LATEST_ADAPTER), adapter.PRODUCER)
    metadata = {
        "adapter_dir": dg.MetadataValue.path(paths.location(out_dir)),
        "adapter_hash": adapter_hash,
        "quantization": metrics["quantization"],
        "cuda_graph": metrics["cuda_graph"],
        "fused_kernels": metrics["fused_kernels"],
        "steps": metrics["steps"],
        "resumed_from_step": metrics["resumed_from_step"],
        "train_examples": metrics["train_examples"],
        "validation_examples": metrics["validation_examples"],
        "truncation_rate": metrics["truncation_rate"],
        "first_train_loss": metrics["first_train_loss"],
        "final_train_loss": metrics["final_train_loss"],
        "final_val_loss": metrics["final_val_loss"] if metrics["final_val_loss"] is not None else float("nan"),
        "tokens_per_second": metrics["tokens_per_second"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "wall_seconds": metrics["wall_seconds"],
        "trainable_share": metrics["trainable_share"],
        "loss_curve": dg.MetadataValue.md(plots.markdown_image(png, "loss curve")),
    }
    with staging:
        return step.materialized(
            staging, adapter_hash, metadata, model=lm.info, row_count=len(rows),
            inputs={"base_model": lm.info.fingerprint, "sft_dataset": dataset_hash},
            outputs={"adapter": (paths.location(out_dir), adapter_hash)},
            params=spec["params"] | {"max_steps": config.max_steps},
            metrics={k: v for k, v in metrics.items() if k not in ("history", "spec")},
        )  # fmt: skip
