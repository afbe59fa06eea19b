"""The one Definitions object of the stage1 code location."""

import dagster as dg

from .assets.base_model import base_model
from .resources import BaseModelResource, ProvenanceResource, Stage1Paths

defs = dg.Definitions(
    assets=[base_model],
    resources={
        "model": BaseModelResource(),
        "paths": Stage1Paths(),
        "provenance": ProvenanceResource(),
    },
)
