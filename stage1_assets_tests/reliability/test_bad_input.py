"""Bad input: a malformed file, config or model gets a clear error before expensive work, and leaves nothing behind.

Every materialization here runs through Dagster with a model resource whose path does not exist
(except where the model itself is the bad input): had the step loaded a model before validating,
the error would be about the model. Nothing may be written to the data directory — no partial
output, no provenance row claiming success.
"""

import json

import dagster as dg
import pytest

from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import BaseModelResource, ProvenanceResource, Stage1Paths

from ..conftest import make_tiny_model_dir
from .support import step_failure_text, tree


def resources(tmp_path, source: str | None = None, **model_options) -> dict:
    data = tmp_path / "data"
    return {
        "model": BaseModelResource(source=source or str(tmp_path / "no-model-needed"), **model_options),
        "paths": Stage1Paths(data_dir=str(data)),
        "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb")),
    }


def materialize(asset: str, resources: dict, config: dict | None = None) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {asset: {"config": config}}} if config is not None else None
    return dg.materialize([defs.get_assets_def(asset)], resources=resources, run_config=run_config,
                          raise_on_error=False)  # fmt: skip


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "file is empty"),
        (b"\n  \n", "file is empty"),
        (b'{"instruction": "ok"}\n\xff\xfe bad\n', ":2: not valid UTF-8"),
        (b'{"instruction": "ok"}\n{"instruction": \n', ":2: malformed JSON"),
        (b'["not", "an", "object"]\n', ":1: expected a JSON object"),
        (b'{"id": "a", "instruction": "ok"}\n{"id": "b"}\n', ":2: field 'instruction' is missing or empty"),
        (b'{"id": "a", "instruction": "  "}\n', ":1: field 'instruction' is missing or empty"),
        (b'{"id": "a", "instruction": "x"}\n{"id": "a", "instruction": "y"}\n', ":2: duplicate id 'a'"),
        # a row without an id is numbered test-0001, which the next row claims explicitly
        (b'{"instruction": "x"}\n\n{"id": "test-0001", "instruction": "y"}\n', ":3: duplicate id 'test-0001'"),
        (b'{"id": ["a"], "instruction": "x"}\n', ":1: field 'id' must be a string or an integer"),
    ],
    ids=[
        "empty",
        "blank-lines-only",
        "not-utf8",
        "malformed-json",
        "not-an-object",
        "missing-instruction",
        "blank-instruction",
        "duplicate-id",
        "numbered-id-clash",
        "bad-id-type",
    ],
)
def test_bad_test_set_file_names_file_line_and_problem_and_writes_nothing(tmp_path, content, problem):
    source = tmp_path / "my_tests.jsonl"
    source.write_bytes(content)
    data = tmp_path / "data"
    data.mkdir()
    (data / "test_instructions.jsonl").write_text('{"id": "test-0001", "instruction": "An earlier set."}\n')
    before = tree(data)

    result = materialize("test_instructions", resources(tmp_path), {"source_file": str(source)})

    assert not result.success
    message = step_failure_text(result)
    assert f"InputFileError: {source}" in message and problem in message, message
    assert tree(data) == before, "a refused input must not touch the outputs or provenance"


def test_good_test_set_file_keeps_given_ids_and_numbers_the_rest(tmp_path, tiny_model_dir):
    """The control for the refusals above: the same path accepts a valid file."""
    source = tmp_path / "my_tests.jsonl"
    source.write_text('{"id": "mine-1", "instruction": "Name a metal."}\n\n{"instruction": " Name a gas. "}\n')
    result = materialize("test_instructions", resources(tmp_path, str(tiny_model_dir)), {"source_file": str(source)})
    assert result.success
    rows = [json.loads(line) for line in (tmp_path / "data/test_instructions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["instruction"]) for r in rows] == [("mine-1", "Name a metal."), ("test-0002", "Name a gas.")]


def bert_dir(path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=100)).save_pretrained(path)  # fmt: skip
    return path


HF_CACHE_SNAPSHOT = "hub/models--lmsys--vicuna-7b-v1.5/snapshots/" + "0123456789abcdef" * 2 + "01234567"


@pytest.mark.parametrize(
    ("make_source", "expected"),
    [
        (lambda tmp, emb: str(tmp / "missing-model"), ["ModelSourceError", "missing-model does not exist"]),
        (lambda tmp, emb: "google/gemma-3-270m", ["hub downloads are off", "allow_hub=false"]),
        (lambda tmp, emb: str(bert_dir(tmp / "bert-base")), ["ModelGuardError", "is not a causal language model"]),
        (
            lambda tmp, emb: str(make_tiny_model_dir(tmp / "tiny-3-270m-it", emb)),
            ["contamination guard", "instruction-tuned", "set allow_instruction_tuned=true and override_reason="],
        ),
        (  # a Hugging Face cache snapshot: the folder is a commit hash, the repo id is two levels up
            lambda tmp, emb: str(make_tiny_model_dir(tmp / HF_CACHE_SNAPSHOT, emb)),
            ["contamination guard", "'lmsys/vicuna-7b-v1.5'", "family 'vicuna'", "set allow_instruction_tuned=true"],
        ),
    ],
    ids=["missing-path", "offline-hub-id", "not-a-causal-lm", "instruction-tuned", "instruction-tuned-hf-cache"],
)
def test_bad_model_source_says_which_problem_and_how_to_override(tmp_path, embedded_dir, make_source, expected):
    result = materialize("base_model", resources(tmp_path, make_source(tmp_path, embedded_dir)))
    assert not result.success
    message = step_failure_text(result)
    assert all(text in message for text in expected), message
    assert not (tmp_path / "data").exists(), "no base_model.json, no provenance for a refused model"


def test_instruction_tuned_override_needs_a_reason_and_records_it(tmp_path, embedded_dir):
    source = str(make_tiny_model_dir(tmp_path / "tiny-3-270m-it", embedded_dir))
    no_reason = materialize("base_model", resources(tmp_path, source, allow_instruction_tuned=True))
    assert not no_reason.success and "needs a non-empty override_reason" in step_failure_text(no_reason)
    assert not (tmp_path / "data").exists()

    ok = materialize("base_model", resources(tmp_path, source, allow_instruction_tuned=True,
                                             override_reason="ablation study"))  # fmt: skip
    assert ok.success
    manifest = json.loads((tmp_path / "data/base_model.json").read_text())
    assert manifest["guard"]["refused"] and manifest["guard"]["override_reason"] == "ablation study"
    [event] = ok.get_asset_materialization_events()
    assert "guard overridden: ablation study" in event.materialization.metadata["guard"].value
    [record] = ProvenanceStore(tmp_path / "data/provenance.duckdb").query(
        "SELECT params_json FROM records WHERE asset_key = 'base_model'"
    )
    guard = json.loads(record["params_json"])["guard"]
    assert guard["refused"] and guard["override_reason"] == "ablation study"


@pytest.mark.parametrize(
    ("asset", "config", "expected"),
    [
        ("pilot_data", {"response_sampling": {"top_p": 1.5}}, ["response_sampling.top_p", "less than or equal to 1"]),
        ("pilot_data", {"count": 1}, ["count", "greater than or equal to 2"]),
        ("pilot_data", {"qc": {"max_runaway_rate": -0.1}}, ["qc.max_runaway_rate", "greater than or equal to 0"]),
        ("test_instructions", {"sampling": {"temperature": 2.5}}, ["sampling.temperature", "less than or equal to 2"]),
        ("adapter_checkpoint", {"chunk_tokens": 100}, ["chunk_tokens (100) must be at least max_seq_len (256)"]),
        ("pilot_data", {"bogus": 1}, ["bogus"]),
        ("pilot_data", {"qc": {"max_runaway_ratio": 0.1}}, ["max_runaway_ratio"]),
        ("test_instructions", {"sampling": {"temprature": 0.5}}, ["temprature"]),
    ],
    ids=[
        "top_p-above-1",
        "count-below-2",
        "negative-rate",
        "temperature-above-2",
        "chunk-narrower-than-a-sequence",
        "unknown-key",
        "unknown-nested-key",
        "misspelt-key",
    ],
)
def test_bad_run_config_is_refused_naming_the_field_before_model_work(tmp_path, asset, config, expected):
    try:
        result = materialize(asset, resources(tmp_path), config)
    except dg.DagsterInvalidConfigError as exc:  # unknown keys: refused before the run starts
        message = str(exc)
        assert "Received unexpected config entry" in message, message
    else:  # out-of-range values: refused when the step builds its config, before the body runs
        assert not result.success
        message = step_failure_text(result)
        assert "no-model-needed" not in message, "the model must not be touched before the config is valid"
    assert all(text in message for text in expected), message
    assert not (tmp_path / "data").exists()
