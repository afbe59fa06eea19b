import random

import dagster as dg
import pytest
import torch

from stage1_assets.assets.adapter_checkpoint import qc_gate
from stage1_assets.core.io import atomic_write_json, atomic_write_jsonl, sha256_file
from stage1_assets.core.training import TrainingParams, encode_examples, epoch_batches, mean_loss, train_adapter
from stage1_assets.resources import Stage1Paths

from ..support import ROWS


def test_loss_masks_the_prompt_and_truncation_is_reported(tiny_model):
    [example] = encode_examples(tiny_model.tokenizer, ROWS[:1], max_seq_len=256)
    answer_len = sum(label != -100 for label in example.labels)
    answer = tiny_model.tokenizer(" Red is a primary color.", add_special_tokens=False)["input_ids"]
    assert answer_len == len(answer) + 1  # response tokens + EOS
    assert example.labels[-1] == tiny_model.tokenizer.eos_token_id and not example.truncated
    [short] = encode_examples(tiny_model.tokenizer, ROWS[:1], max_seq_len=16)
    assert short.truncated and len(short.input_ids) == 16


@pytest.mark.slow
def test_real_steps_lower_the_loss_and_the_adapter_reloads(tmp_path, real_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    params = TrainingParams(epochs=4, batch_size=4, learning_rate=1e-3, lora_dropout=0.0, validation_fraction=0.0,
                            checkpoint_every=100)  # fmt: skip
    examples = encode_examples(real_model.tokenizer, ROWS, params.max_seq_len)
    pad = real_model.tokenizer.pad_token_id
    before = mean_loss(real_model.model, examples, params, pad)
    result = train_adapter(real_model.info.path, real_model.tokenizer, ROWS, tmp_path / "a", params, device="cpu")
    assert result.metrics["steps"] == 8 and result.metrics["quantization"].startswith("none")
    base = AutoModelForCausalLM.from_pretrained(real_model.info.path, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    after = mean_loss(adapted, examples, params, pad)
    print(f"training loss on the tiny set: {before:.3f} -> {after:.3f}")
    assert after < before * 0.8
    batch = real_model.tokenizer(["Instruction: What do bees make?\nResponse:"], return_tensors="pt")
    with torch.no_grad():
        delta = (adapted(**batch).logits - real_model.model(**batch).logits).abs().max()
    assert delta > 1e-3


def qc_summary_file(tmp_path, sft_sha256: str, overlap: int = 0, metrics: dict | None = None) -> None:
    """A `qc_summary.json` as the qc_summary asset writes it (core.qc.DatasetQCSummary), with these values."""
    metric = {"threshold": 0.05, "flagged_count": 0, "flagged_ids": [], "examples": []}
    summary = {"pairs": 8, "passed": True, "thresholds": {}, "length_bias": {}, "per_shard": {},
               "metrics": {name: metric | m for name, m in (metrics or {}).items()},
               "test_overlap": {"count": overlap, "method": "duckdb-sql-audit", "examples": [], "sft_rows": 8},
               "sft_dataset_sha256": sft_sha256, "test_set_sha256": "test"}  # fmt: skip
    atomic_write_json(tmp_path / "qc_summary.json", summary)


def test_gate_refuses_a_dataset_that_failed_qc(tmp_path):
    sft = atomic_write_jsonl(tmp_path / "stage1_sft_data.jsonl", ROWS)
    failing = {"runaway_rate": {"value": 0.2, "rule": "value < 0.05", "passed": False}}
    qc_summary_file(tmp_path, sha256_file(sft), metrics=failing)
    with pytest.raises(dg.Failure, match=r"failed QC: runaway_rate = 0.2 \(needs value < 0.05\)"):
        qc_gate(Stage1Paths(data_dir=str(tmp_path)), sft)
    qc_summary_file(tmp_path, "other")
    with pytest.raises(dg.Failure, match="another version"):
        qc_gate(Stage1Paths(data_dir=str(tmp_path)), sft)
    qc_summary_file(tmp_path, sha256_file(sft), overlap=2)
    with pytest.raises(dg.Failure, match="test_overlap = 2"):
        qc_gate(Stage1Paths(data_dir=str(tmp_path)), sft)


def test_length_grouped_batches_cover_every_row_once_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(8, 256) for _ in range(1000)]
    batches = epoch_batches(lengths, 16, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == epoch_batches(lengths, 16, seed=3, epoch=1)  # resume replays the same order
    assert batches != epoch_batches(lengths, 16, seed=3, epoch=2)

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    plain = [shuffled[i : i + 16] for i in range(0, 1000, 16)]
    assert padded(batches) < 0.7 * padded(plain)
