"""The jobs of the GPU assets: on Kubernetes each run's pod asks for a GPU through the jobs' run tags."""

import dagster as dg

from .assets.adapter_checkpoint import adapter_checkpoint
from .assets.eval_report import eval_report
from .assets.scale_shards import scale_shards
from .k8s import GPU_TAGS
from .partitions import SHARD_PARTITIONS

scale_shards_job = dg.define_asset_job(
    "scale_shards_job",
    selection=[scale_shards],
    partitions_def=SHARD_PARTITIONS,
    description="Generate one scale shard (backfill it over all or some partitions).",
    tags=GPU_TAGS,  # run tags too: on Kubernetes each run's pod asks for a GPU (stage1_assets/k8s.py)
)
training_job = dg.define_asset_job(
    "training_job",
    selection=[adapter_checkpoint],
    description="Train the adapter (on Kubernetes, in a pod with a GPU).",
    tags=GPU_TAGS,
)
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=[eval_report],
    description="Evaluate base vs base+adapter (on Kubernetes, in a pod with a GPU).",
    tags=GPU_TAGS,
)

JOBS = [scale_shards_job, training_job, evaluation_job]
