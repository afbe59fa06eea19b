"""Typed, validated parameters with the validated defaults of docs/METHOD.md.

These are plain pydantic models so that `core` runs without Dagster (on the GPU box, in
benchmarks). The Dagster run-config classes in `stage1_assets.config` inherit from them, so a
bound is written once and enforced both in the UI's run config and in plain Python.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

STOP_SEQUENCES: tuple[str, ...] = ("\nInstruction", "\nQ:", "\n###", "\nUser:", "\nResponse:")


class Strict(BaseModel):
    """Unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class SamplingParams(Strict):
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Softmax temperature; 0 means greedy decoding.")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Nucleus sampling mass, in (0, 1].")
    repetition_penalty: float = Field(
        default=1.1, ge=1.0, le=2.0, description="HF-style penalty on already-seen tokens, in [1, 2]."
    )
    max_new_tokens: int = Field(default=48, ge=1, le=2048, description="Generation length cap.")
    stop_sequences: list[str] = Field(
        default_factory=lambda: list(STOP_SEQUENCES),
        description="Strings that end a completion; they are cut from the returned text.",
    )

    @model_validator(mode="after")
    def _stops_not_empty_strings(self) -> SamplingParams:
        if any(s == "" for s in self.stop_sequences):
            raise ValueError("stop_sequences: empty string is not a valid stop sequence")
        return self


class InstructionSampling(SamplingParams):
    """Validated pilot parameters for instruction generation (short completions)."""


class ResponseSampling(SamplingParams):
    """Validated pilot parameters for response generation."""

    temperature: float = Field(default=0.4, ge=0.0, le=2.0, description="Softmax temperature; 0 = greedy.")
    max_new_tokens: int = Field(default=100, ge=1, le=2048, description="Generation length cap.")


CRITIC_RULES = ("runaway", "content_free", "restated", "arithmetic")
CRITIC_SIGNALS = ("answer", "pmi_mean")


class CriticParams(Strict):
    signal: str = Field(
        default="answer",
        description=(
            "The critic's score (core/critic.py): answer, the base model's evidence that the response is a "
            "finished, relevant answer that reads like the good demonstrations and adds to the request (nats); "
            "pmi_mean, the earlier per-token PMI (nats/token), which favours short answers that echo the request."
        ),
    )
    contrast_weight: float = Field(
        default=10.0, ge=0.0, le=100.0, description="Weight of the good-vs-bad-document contrast in `answer`."
    )
    novelty_weight: float = Field(
        default=2.0, ge=0.0, le=100.0, description="Weight of the share of new informative words in `answer`."
    )
    confidence_threshold: float = Field(
        default=1.5,
        ge=-100.0,
        le=100.0,
        description="A pair is accepted when no rule rejects it and its score reaches this value (nats for the "
        "answer signal; chosen on the development half of the control set).",
    )
    rules: list[str] = Field(
        default_factory=lambda: list(CRITIC_RULES),
        description=f"Rules that reject a response before its score is looked at, of {list(CRITIC_RULES)} "
        "(core/response_rules.py).",
    )
    batch_size: int = Field(default=16, ge=1, le=4096, description="Pairs per forward pass.")

    @model_validator(mode="after")
    def _known_signal_and_rules(self) -> CriticParams:
        if self.signal not in CRITIC_SIGNALS:
            raise ValueError(f"signal: {self.signal!r} is not one of {list(CRITIC_SIGNALS)}")
        unknown = [r for r in self.rules if r not in CRITIC_RULES]
        if unknown:
            raise ValueError(f"rules: {unknown} not among {list(CRITIC_RULES)}")
        return self


class QCThresholds(Strict):
    max_runaway_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Runaway rate must be below.")
    max_token_limit_rate: float = Field(
        default=0.10, ge=0.0, le=1.0, description="Share of responses that hit max new tokens must be below."
    )
    max_median_response_tokens: float = Field(
        default=40.0, gt=0.0, le=100_000, description="Median response length in tokens must be below."
    )
    max_delimiter_leakage: int = Field(
        default=0, ge=0, description="Responses containing template delimiters: at most this many."
    )
    min_acceptance_rate: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Critic-accepted share of pairs must be at least."
    )
    runaway_max_chars: int = Field(
        default=500, ge=1, description="A response longer than this many characters counts as runaway."
    )
    min_length_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Warn when the median length of accepted answers is below this share of the rejected ones'.",
    )
    min_critic_pairwise_accuracy: float = Field(
        default=0.85,
        ge=0.5,
        le=1.0,
        description="On the held-out labelled control set, the critic must rank good above bad this often.",
    )
    min_critic_rejection: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="On the held-out control set, the critic must reject this share of each of the restated, "
        "content-free and runaway responses.",
    )
    min_critic_discrimination: float = Field(
        default=0.75,
        ge=0.5,
        le=1.0,
        description="Share of real pairs the critic must score above their shuffled twins.",
    )


class Profile(Strict):
    name: str
    test_count: int = Field(ge=1, description="Held-out test instructions.")
    pilot_count: int = Field(ge=2, description="Pilot pairs per iteration.")
    total_pairs: int = Field(ge=1, description="Pairs generated across all scale shards.")
    num_shards: int = Field(ge=1, le=10_000, description="Scale shards (one Dagster partition each).")
    generation_batch_size: int = Field(ge=1, le=4096)
    critic_batch_size: int = Field(default=16, ge=1, le=4096, description="Pairs per critic/judge forward pass.")
    epochs: int = Field(ge=1, le=100)
    train_batch_size: int = Field(ge=1, le=1024, description="Training sequences per micro-batch.")
    eval_if_prompts: int | None = Field(
        default=None, ge=1, description="Verifiable-instruction prompts evaluated (None: all)."
    )
    eval_qa_questions: int | None = Field(default=None, ge=1, description="Reference questions evaluated (None: all).")

    @model_validator(mode="after")
    def _shards_fit(self) -> Profile:
        if self.num_shards > self.total_pairs:
            raise ValueError(f"num_shards ({self.num_shards}) must not exceed total_pairs ({self.total_pairs})")
        return self

    @property
    def shard_size(self) -> int:
        return -(-self.total_pairs // self.num_shards)


PROFILES: dict[str, Profile] = {
    "local": Profile(
        name="local",
        test_count=8,
        pilot_count=16,
        total_pairs=48,
        num_shards=3,
        generation_batch_size=16,
        epochs=1,
        train_batch_size=8,
        eval_if_prompts=40,
        eval_qa_questions=20,
    ),
    "full": Profile(
        name="full",
        test_count=200,
        pilot_count=200,
        total_pairs=15_000,
        num_shards=10,
        # the batch at which the engine peaks on an H200/H100 (BENCHMARKS.md); memory back-off splits it
        generation_batch_size=1024,
        # 1,024 rows a forward (each pair is scored twice in one call), each with its own copy of the
        # ~550-token shots document's keys and values: ~15 GB at the 1B shape, as the shard benchmark runs
        # (a GPU with less memory scores in halves: core/scoring.py)
        critic_batch_size=512,
        epochs=3,
        # batch 8 leaves an H200 idle between kernel launches (~9,000 steps for 15k pairs); 64 is the
        # batch the QLoRA benchmark measures
        train_batch_size=64,
        eval_if_prompts=None,
        eval_qa_questions=None,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"STAGE1_PROFILE={name!r} is not a profile; expected one of {sorted(PROFILES)}") from None
