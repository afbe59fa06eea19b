"""The one Definitions object of the stage1 code location."""

import dagster as dg

from .assets.base_model import base_model
from .assets.pilot_data import pilot_data
from .assets.test_instructions import test_instructions
from .resources import BaseModelResource, ProvenanceResource, Stage1Paths

defs = dg.Definitions(
    assets=[base_model, test_instructions, pilot_data],
    resources={
        "model": BaseModelResource(),
        "paths": Stage1Paths(),
        "provenance": ProvenanceResource(),
    },
)
