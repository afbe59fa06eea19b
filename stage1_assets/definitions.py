"""The one Definitions object of the stage1 code location."""

import dagster as dg

from .assets.adapter_checkpoint import adapter_checkpoint
from .assets.base_model import base_model
from .assets.eval_report import eval_report
from .assets.pilot_data import pilot_data
from .assets.qc_summary import qc_summary
from .assets.scale_shards import scale_shards
from .assets.sft_dataset import sft_dataset
from .assets.test_instructions import test_instructions
from .jobs import JOBS
from .resources import BaseModelResource, ProvenanceResource, Stage1Paths
from .schedules import missing_shards_schedule
from .sensors import dead_run_sensor

defs = dg.Definitions(
    assets=[
        base_model,
        test_instructions,
        pilot_data,
        scale_shards,
        sft_dataset,
        qc_summary,
        adapter_checkpoint,
        eval_report,
    ],
    jobs=JOBS,
    schedules=[missing_shards_schedule],
    sensors=[dead_run_sensor],
    resources={
        "model": BaseModelResource(),
        "paths": Stage1Paths(),
        "provenance": ProvenanceResource(),
    },
)
