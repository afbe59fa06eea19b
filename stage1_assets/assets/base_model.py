"""`base_model`: resolve, guard and fingerprint the clean base model — the root of all lineage."""

import dagster as dg

from ..core import layout
from ..materialize import Step, stage1_asset
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths


@stage1_asset(
    stage="model",
    group="model",
    kinds={"pytorch", "huggingface"},
    description=(
        "The clean base (not instruction-tuned) causal LM that generates, critiques and judges all "
        "data. Refuses instruction-tuned models and adapters (contamination guard). Writes "
        "`data/base_model.json` with the model fingerprint every downstream artifact records."
    ),
)
def base_model(
    context: dg.AssetExecutionContext,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
) -> dg.MaterializeResult:
    step = Step(context, paths, provenance)
    info = model.load().info
    guard = info.guard
    metadata = {
        "name": info.name,
        "source": info.source,
        "path": dg.MetadataValue.path(info.path),
        "fingerprint": info.fingerprint,
        "parameter_count": info.parameter_count,
        "dtype": info.dtype,
        "device": info.device,
        "load_seconds": info.load_seconds,
        "converted_from_gguf_now": info.converted_from_gguf,
        "guard": dg.MetadataValue.md(
            "\n".join(
                ["**clean base model**" if not guard.refused else "**guard overridden**"]
                + [f"- refusing signal: {r}" for r in guard.reasons]
                + [f"- note: {n}" for n in guard.notes]
            )
        ),
    }
    with paths.staging() as staging:  # base_model.json appears together with the provenance record
        staging.write_json(paths.path(layout.BASE_MODEL), info.as_dict())
        return step.materialized(
            staging, info.fingerprint, metadata, model=info,
            params={"source": model.source, "device": info.device, "dtype": info.dtype, "guard": guard.as_dict()},
            metrics={"parameter_count": info.parameter_count, "load_seconds": info.load_seconds},
            outputs={"base_model": (info.path, info.fingerprint)},
        )  # fmt: skip
