import pytest
from pydantic import ValidationError

from stage1_assets.core.config import (
    PROFILES,
    STOP_SEQUENCES,
    CriticParams,
    InstructionSampling,
    Profile,
    QCThresholds,
    ResponseSampling,
    get_profile,
)


def test_defaults_are_the_validated_values():
    ins, resp = InstructionSampling(), ResponseSampling()
    assert (ins.temperature, ins.top_p, ins.repetition_penalty) == (0.7, 0.9, 1.1)
    assert (resp.temperature, resp.top_p, resp.repetition_penalty, resp.max_new_tokens) == (
        0.4,
        0.9,
        1.1,
        100,
    )
    assert tuple(resp.stop_sequences) == STOP_SEQUENCES
    critic = CriticParams()  # the answer score's threshold, chosen on the control set's development half
    assert (critic.signal, critic.confidence_threshold, critic.rules) == (
        "answer", 1.5, ["runaway", "content_free", "restated", "arithmetic"],
    )  # fmt: skip
    qc = QCThresholds()
    assert (qc.max_runaway_rate, qc.max_token_limit_rate, qc.max_median_response_tokens) == (0.05, 0.10, 40)
    assert (qc.max_delimiter_leakage, qc.min_acceptance_rate, qc.runaway_max_chars) == (0, 0.5, 500)
    full = PROFILES["full"]
    assert (full.test_count, full.total_pairs, full.num_shards, full.shard_size, full.epochs) == (
        200, 15_000, 10, 1_500, 3,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("model", "values", "field"),
    [
        (InstructionSampling, {"temperature": -0.1}, "temperature"),
        (ResponseSampling, {"top_p": 0.0}, "top_p"),
        (ResponseSampling, {"top_p": 1.5}, "top_p"),
        (ResponseSampling, {"max_new_tokens": 0}, "max_new_tokens"),
        (ResponseSampling, {"stop_sequences": [""]}, "stop_sequences"),
        (QCThresholds, {"max_runaway_rate": 1.5}, "max_runaway_rate"),
        (QCThresholds, {"min_acceptance_rate": -0.2}, "min_acceptance_rate"),
        (CriticParams, {"batch_size": 0}, "batch_size"),
        (QCThresholds, {"max_runaway_ratio": 0.1}, "max_runaway_ratio"),
    ],
)
def test_invalid_values_name_the_field_and_range(model, values, field):
    with pytest.raises(ValidationError) as err:
        model(**values)
    message = str(err.value)
    assert field in message
    assert any(word in message for word in ("greater", "less", "stop_sequences", "Extra inputs"))


def test_profile_refuses_zero_or_too_many_shards():
    with pytest.raises(ValidationError, match="num_shards"):
        Profile(name="x", test_count=1, pilot_count=2, total_pairs=10, num_shards=0,
                generation_batch_size=1, epochs=1, train_batch_size=1)  # fmt: skip
    with pytest.raises(ValidationError, match="must not exceed total_pairs"):
        Profile(name="x", test_count=1, pilot_count=2, total_pairs=3, num_shards=5,
                generation_batch_size=1, epochs=1, train_batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match="STAGE1_PROFILE='huge'"):
        get_profile("huge")
