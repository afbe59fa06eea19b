"""Disk and memory: generation backs off on out-of-memory or a memory ceiling; a full disk fails cleanly.

Splitting a batch is safe because a prompt's completion does not depend on its batch (per-prompt
sampling noise), so every back-off test compares with an unconstrained run, row for row.
"""

import errno
import math
from pathlib import Path

import dagster as dg
import pytest
import torch

from stage1_assets.assets.scale_shards import SHARD_PARTITIONS
from stage1_assets.core.config import SamplingParams
from stage1_assets.core.generation import MB, MEMORY_CEILING_ENV, Generator
from stage1_assets.core.provenance import ProvenanceStore
from stage1_assets.definitions import defs
from stage1_assets.resources import ProvenanceResource, Stage1Paths

from ..support import PROMPTS
from .support import synthetic_shard_rows, tree, write_merge_inputs, write_shard

SAMPLING = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6, stop_sequences=["\x00"])


def cpu_allocator_failure() -> RuntimeError:
    """The error torch raises when the CPU allocator cannot get memory: a real one, not a lookalike."""
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("an exabyte allocation succeeded")


class BatchSpy:
    """Wraps the real batch function: records each batch size and fails those above `fits` rows."""

    def __init__(self, gen: Generator, fits: int | None = None, error: BaseException | None = None) -> None:
        self.real, self.fits, self.error, self.sizes = gen._generate_batch, fits, error, []

    def __call__(self, sequences, *args):
        self.sizes.append(len(sequences))
        if self.fits is not None and len(sequences) > self.fits:
            raise self.error
        return self.real(sequences, *args)


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory (injected)"), cpu_allocator_failure()],
    ids=["cuda-oom", "cpu-allocator"],
)
def test_out_of_memory_splits_the_batch_instead_of_failing(tiny_model, monkeypatch, error):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    expected, _ = gen.generate(PROMPTS, SAMPLING, batch_size=1, seed=5)
    spy = BatchSpy(gen, fits=2, error=error)
    monkeypatch.setattr(gen, "_generate_batch", spy)
    results, stats = gen.generate(PROMPTS, SAMPLING, batch_size=5, seed=5)
    assert spy.sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, and the 3 -> 1 + 2
    assert stats.batch_splits == 2 and stats.rows == 5
    assert [r.text for r in results] == [r.text for r in expected]


def test_other_errors_and_a_single_row_that_does_not_fit_still_fail(tiny_model, monkeypatch):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    spy = BatchSpy(gen, fits=0, error=RuntimeError("shape mismatch"))
    monkeypatch.setattr(gen, "_generate_batch", spy)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gen.generate(PROMPTS, SAMPLING, batch_size=5, seed=0)
    assert spy.sizes == [5], "an error that is not out-of-memory must not be retried"

    spy = BatchSpy(gen, fits=0, error=torch.OutOfMemoryError("injected"))
    monkeypatch.setattr(gen, "_generate_batch", spy)
    with pytest.raises(torch.OutOfMemoryError):
        gen.generate(PROMPTS[:2], SAMPLING, batch_size=2, seed=0)
    assert spy.sizes == [2, 1]


def test_memory_ceiling_splits_batches_before_they_run_with_the_same_completions(tiny_model, monkeypatch):
    unconstrained = Generator(tiny_model.model, tiny_model.tokenizer)
    expected, free_stats = unconstrained.generate(PROMPTS, SAMPLING, batch_size=5, seed=5)
    assert free_stats.batch_splits == 0

    longest = max(len(ids) for ids in tiny_model.tokenizer(PROMPTS)["input_ids"])
    two_rows = unconstrained.estimate_batch_bytes(2, longest, SAMPLING.max_new_tokens)
    ceiling_mb = math.ceil(two_rows / MB)
    assert unconstrained.estimate_batch_bytes(3, longest, SAMPLING.max_new_tokens) / MB > ceiling_mb
    gen = Generator(tiny_model.model, tiny_model.tokenizer, memory_ceiling_mb=ceiling_mb)
    spy = BatchSpy(gen)
    monkeypatch.setattr(gen, "_generate_batch", spy)
    results, stats = gen.generate(PROMPTS, SAMPLING, batch_size=5, seed=5)

    assert spy.sizes == [2, 1, 2], "5 -> 2 + 3 -> 2 + 1 + 2, each split decided before running"
    assert stats.batch_splits == 2
    assert [r.text for r in results] == [r.text for r in expected]

    monkeypatch.setenv(MEMORY_CEILING_ENV, str(ceiling_mb))
    assert Generator(tiny_model.model, tiny_model.tokenizer).memory_ceiling_mb == ceiling_mb


def test_memory_ceiling_too_low_for_one_row_or_malformed_is_a_clear_error(tiny_model, monkeypatch):
    gen = Generator(tiny_model.model, tiny_model.tokenizer, memory_ceiling_mb=1)
    with pytest.raises(MemoryError, match=r"needs an estimated \d+ MB, above the memory ceiling of 1 MB"):
        gen.generate(PROMPTS[:1], SAMPLING, batch_size=1, seed=0)
    monkeypatch.setenv(MEMORY_CEILING_ENV, "2GB")
    with pytest.raises(ValueError, match=f"{MEMORY_CEILING_ENV}='2GB' must be a positive whole number"):
        Generator(tiny_model.model, tiny_model.tokenizer)


def outputs(data: Path) -> dict[str, bytes]:
    """Every file but the provenance database, which is checked by querying it."""
    return {name: content for name, content in tree(data).items() if not name.startswith("provenance.duckdb")}


def test_full_disk_fails_the_step_naming_the_path_and_leaves_the_old_artifact(tmp_path, monkeypatch):
    """The merge's first write hits ENOSPC half-way, as on a full disk: the last good dataset stays."""
    keys = SHARD_PARTITIONS.get_partition_keys()
    data = tmp_path / "data"
    write_merge_inputs(data, keys, per_shard=12)
    resources = {"paths": Stage1Paths(data_dir=str(data)),
                 "provenance": ProvenanceResource(db_path=str(data / "provenance.duckdb"))}  # fmt: skip
    assert dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources).success
    write_shard(data, keys[0], synthetic_shard_rows(keys[0], 12, seed=99))
    before = outputs(data)

    def disk_full_half_way(self: Path, payload: bytes) -> int:
        with open(self, "wb") as fh:
            fh.write(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full_half_way)
    result = dg.materialize([defs.get_assets_def("sft_dataset")], resources=resources, raise_on_error=False)
    monkeypatch.undo()

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"could not write {data / 'stage1_sft_data.jsonl'}: No space left on device" in str(
        failure.event_specific_data.error
    )
    assert outputs(data) == before, "the old dataset stays byte for byte, and no temporary file is left"
    records = ProvenanceStore(data / "provenance.duckdb").query(
        "SELECT count(*) AS n FROM records WHERE asset_key = 'sft_dataset'"
    )
    assert records == [{"n": 1}], "only the earlier, successful merge is recorded"
