"""Dagster run-config classes: the core pydantic models, exposed to the launchpad.

Each class inherits its fields, bounds and defaults from `core.config`, so a value out of range
is refused with the field name and the allowed range before any model work starts. Counts
default to the active profile (`STAGE1_PROFILE`, read when the code location loads).
"""

import os

import dagster as dg
from pydantic import Field

from .core.config import CriticParams, InstructionSampling, QCThresholds, ResponseSampling, get_profile

PROFILE = get_profile(os.environ.get("STAGE1_PROFILE", "local"))


class InstructionSamplingConfig(dg.Config, InstructionSampling):
    """Sampling for instruction generation (defaults T=0.7, top_p=0.9, rep=1.1; docs/METHOD.md)."""


class ResponseSamplingConfig(dg.Config, ResponseSampling):
    """Sampling for response generation (defaults T=0.4, top_p=0.9, rep=1.1, 100 tokens; docs/METHOD.md)."""


class CriticConfig(dg.Config, CriticParams):
    """The critic (core/critic.py): a pair is accepted when no rule rejects it and its score reaches the threshold."""


class QCConfig(dg.Config, QCThresholds):
    """The QC thresholds (docs/METHOD.md) and the critic checks' minimums."""


class GenerationConfig(dg.Config):
    """Everything that decides how pairs are generated; scale shards reuse the pilot's values."""

    instruction_sampling: InstructionSamplingConfig = InstructionSamplingConfig()
    response_sampling: ResponseSamplingConfig = ResponseSamplingConfig()
    critic: CriticConfig = CriticConfig(batch_size=PROFILE.critic_batch_size)
    batch_size: int = Field(default=PROFILE.generation_batch_size, ge=1, le=4096, description="Rows per batch.")
