"""LoRA / QLoRA supervised fine-tuning on the accepted pairs, resumable, in standard PEFT format.

* Template: `prompts.sft_prompt(instruction)` + " " + response + EOS; the loss covers the response
  and EOS tokens only. The evaluation prompts both systems with the same `sft_prompt`.
* CUDA: QLoRA — the base model in bitsandbytes 4-bit NF4 with double quantization and bf16
  compute, LoRA adapters on all linear projections. CPU: plain LoRA on fp32 weights (bitsandbytes'
  CPU 4-bit path works but is several times slower than fp32 matmuls on a small model, and memory
  is not the constraint there); the choice is recorded as `quantization` in the metrics.
* Each micro-batch is packed into fixed-shape chunks (`core/train_step.py`); on CUDA every chunk
  replays one captured graph, under bf16 autocast, with Liger's fused Gemma 3 kernels where
  installed — about 3x the tokens/s of an eager padded step (BENCHMARKS.md, QLoRA training).
* Resumable: every `checkpoint_every` optimizer steps the adapter, optimizer, scheduler and step
  counter are saved to `checkpoints/step-NNNNNN/` (atomic directory rename). A killed run resumes
  from the newest checkpoint; the data order is a function of the seed and epoch, so the resumed
  run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from . import prompts
from .config import Strict
from .io import atomic_write_json
from .kernels import NO_FUSED_KERNELS, fuse_with_liger
from .progress import Progress
from .train_step import ChunkStep, loss_sum, pack_chunks

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LENGTH_GROUP_WINDOW = 32  # batches sorted by length together (see epoch_batches)


class TrainingParams(Strict):
    epochs: int = Field(default=3, ge=1, le=100)
    learning_rate: float = Field(default=2e-4, gt=0.0, le=1.0)
    batch_size: int = Field(default=8, ge=1, le=1024, description="Sequences per micro-batch.")
    grad_accumulation: int = Field(default=1, ge=1, le=1024)
    max_seq_len: int = Field(default=256, ge=16, le=32_768)
    lora_r: int = Field(default=16, ge=1, le=1024)
    lora_alpha: int = Field(default=32, ge=1, le=4096)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str = Field(
        default="all-linear", description="'all-linear' or comma-separated module names (e.g. 'q_proj,v_proj')."
    )
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=0.9)
    warmup_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    checkpoint_every: int = Field(default=20, ge=1, description="Optimizer steps between checkpoints.")
    seed: int = 0
    qlora_on_cuda: bool = Field(default=True, description="Load the base in 4-bit NF4 on CUDA (QLoRA).")
    chunk_tokens: int = Field(
        default=4096, ge=16, le=1 << 20,
        description="Tokens per packed chunk (rows of max_seq_len tokens); on CUDA every chunk replays one graph.",
    )  # fmt: skip
    cuda_graphs: bool = Field(default=True, description="Capture the chunk step as a CUDA graph on CUDA.")
    bf16_autocast: bool = Field(default=True, description="On CUDA, LoRA matmuls in bf16 (fp32 master weights).")
    liger_kernels: bool = Field(
        default=True, description="On CUDA, Liger's fused RMSNorm and GeGLU kernels for Gemma 3 (if installed)."
    )

    @model_validator(mode="after")
    def _chunk_holds_a_sequence(self) -> TrainingParams:
        if self.chunk_tokens < self.max_seq_len:
            raise ValueError(
                f"chunk_tokens ({self.chunk_tokens}) must be at least max_seq_len ({self.max_seq_len}): "
                "a chunk's rows are max_seq_len tokens wide"
            )
        return self

    @property
    def chunk_rows(self) -> int:
        return self.chunk_tokens // self.max_seq_len


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class TrainingResult:
    adapter_dir: Path
    metrics: dict[str, Any]
    resumed_from_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def encode_examples(tokenizer: Any, rows: Sequence[dict[str, Any]], max_seq_len: int) -> list[Example]:
    """Prompt + response + EOS, labels masked (-100) on the prompt; truncated to `max_seq_len`."""
    examples = []
    for row in rows:
        prompt = tokenizer(prompts.sft_prompt(row["instruction"]), add_special_tokens=True)["input_ids"]
        answer = tokenizer(" " + row["response"].strip(), add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        ids = (prompt + answer)[:max_seq_len]
        labels = ([-100] * len(prompt) + answer)[:max_seq_len]
        examples.append(Example(ids, labels, truncated=len(prompt) + len(answer) > max_seq_len))
    return examples


def split_validation(rows: Sequence[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, max(1, round(len(rows) * fraction))) if fraction > 0 and len(rows) > 1 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [rows[i] for i in train], [rows[i] for i in val]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A shuffled epoch in batches of similar length, a pure function of seed and epoch.

    The shuffled order is cut into windows of LENGTH_GROUP_WINDOW batches; each window is sorted by
    length and cut into batches, and the batches are shuffled again. This grouping cut the padding of
    padded batches; packed chunks (core/train_step.py) have none to cut, but the order is kept so that
    checkpoints written before packing resume on the batches they expect.
    """
    rng = random.Random(seed * 1_000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        grouped = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches


def load_base_for_training(model_dir: str, device: str, params: TrainingParams) -> tuple[Any, str]:
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda") and params.qlora_on_cuda:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
        # No peft.prepare_model_for_kbit_training: its fp32 cast of the embedding and norms makes the whole
        # forward fp32 work, and only the LoRA weights (fp32 already) train (BENCHMARKS.md, training variants).
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": device})  # fmt: skip
        return model, "4-bit NF4 (bitsandbytes, double quant, bf16 compute)"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model, f"none ({str(dtype).removeprefix('torch.')} LoRA)"


def attach_lora(model: Any, params: TrainingParams) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
        target_modules=params.target_modules if params.target_modules == "all-linear"
        else [m.strip() for m in params.target_modules.split(",") if m.strip()],
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, config)


@torch.no_grad()
def mean_loss(model: Any, examples: Sequence[Example], params: TrainingParams, pad_id: int) -> float:
    """Mean cross-entropy over the examples' response tokens (eager, packed like training)."""
    if not examples:
        return float("nan")
    model.eval()
    chunks = pack_chunks(examples, params.chunk_rows, params.max_seq_len, pad_id, fixed_shape=False)
    autocast = model.device.type == "cuda" and params.bf16_autocast
    total = sum(float(loss_sum(model, [t.to(model.device) for t in c.tensors()], True, autocast)) for c in chunks)
    model.train()
    return total / max(sum(c.labelled for c in chunks), 1)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / CHECKPOINTS).glob("step-*")) if (out_dir / CHECKPOINTS).exists() else []
    # a process killed inside save_checkpoint leaves `step-N.partial-<pid>`: never resume from it
    complete = [p for p in found if p.name.removeprefix("step-").isdigit()]
    return complete[-1] if complete else None


def save_checkpoint(
    out_dir: Path, model: Any, optimizer: Any, scheduler: Any, step: int, micro_done: int, history: list
) -> None:
    final = out_dir / CHECKPOINTS / f"step-{step:06d}"
    staging = final.with_name(final.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "micro_done": micro_done,
        },
        staging / "state.pt",
    )
    atomic_write_json(staging / "history.json", history)
    os.replace(staging, final)
    for old in sorted((out_dir / CHECKPOINTS).glob("step-*"))[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_adapter(
    model_dir: str,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    params: TrainingParams,
    device: str = "cpu",
    max_steps: int | None = None,
    on_step: Callable[[dict[str, Any], str], None] | None = None,
) -> TrainingResult:
    """Train (or resume training) a LoRA adapter on `rows`; `out_dir` becomes a PEFT adapter directory.

    `on_step(record, progress_line)` sees every optimizer step's record (loss, lr, val_loss where measured).
    """
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(params.seed)
    train_rows, val_rows = split_validation(rows, params.validation_fraction, params.seed)
    train = encode_examples(tokenizer, train_rows, params.max_seq_len)
    val = encode_examples(tokenizer, val_rows, params.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model, quantization = load_base_for_training(model_dir, device, params)
    fused = fuse_with_liger(model) if device.startswith("cuda") and params.liger_kernels else NO_FUSED_KERNELS
    model = attach_lora(model, params)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(math.ceil(len(train) / params.batch_size) / params.grad_accumulation)
    total_steps = (
        steps_per_epoch * params.epochs if max_steps is None else min(max_steps, steps_per_epoch * params.epochs)
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=params.learning_rate, weight_decay=params.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(params.warmup_fraction * total_steps), total_steps)

    step, micro_done, history = 0, 0, []
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, micro_done = state["step"], state["micro_done"]
        history = json.loads((checkpoint / "history.json").read_text())
        log.info("resuming from %s (step %d of %d)", checkpoint.name, step, total_steps)
    resumed_from = step

    graphed = device.startswith("cuda") and params.cuda_graphs
    chunk_step = ChunkStep(model, graphed, autocast=device.startswith("cuda") and params.bf16_autocast)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started, trained_tokens = time.perf_counter(), 0
    progress = Progress(total_steps, "steps", already_done=step)
    micro_in_step, step_tokens, step_labelled, step_loss = 0, 0, 0, torch.zeros((), device=model.device)
    for epoch in range(params.epochs):
        batches = epoch_batches([len(e.input_ids) for e in train], params.batch_size, params.seed, epoch)
        for b, indices in enumerate(batches):
            if epoch * len(batches) + b < micro_done:
                continue  # done before the checkpoint we resumed from
            if step >= total_steps:
                break
            chunks = pack_chunks([train[i] for i in indices], params.chunk_rows, params.max_seq_len, pad_id,
                                 fixed_shape=chunk_step.graphed)  # fmt: skip
            labelled = sum(c.labelled for c in chunks)
            for chunk in chunks:  # the micro-batch adds the gradient of its mean loss over response tokens
                step_loss += chunk_step(chunk, 1.0 / (max(labelled, 1) * params.grad_accumulation))
            step_tokens += sum(c.tokens for c in chunks)
            step_labelled += labelled
            micro_in_step += 1
            micro_done = epoch * len(batches) + b + 1
            if micro_in_step < params.grad_accumulation and b < len(batches) - 1:
                continue
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=False)  # ChunkStep adds into these tensors
            micro_in_step = 0
            step += 1
            record = {"step": step, "epoch": epoch, "train_loss": float(step_loss) / max(step_labelled, 1),
                      "lr": scheduler.get_last_lr()[0], "tokens": step_tokens}  # fmt: skip
            trained_tokens, step_tokens, step_labelled = trained_tokens + step_tokens, 0, 0
            step_loss.zero_()
            if step % params.checkpoint_every == 0 or step == total_steps or b == len(batches) - 1:
                record["val_loss"] = mean_loss(model, val, params, pad_id)
            history.append(record)
            line = progress.advance(1, record["tokens"])
            if on_step:
                on_step(record, line)
            if step % params.checkpoint_every == 0 and step < total_steps:
                save_checkpoint(out_dir, model, optimizer, scheduler, step, micro_done, history)

    wall = time.perf_counter() - started
    staging = out_dir / f".adapter.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for item in sorted(staging.iterdir(), key=lambda p: p.name == "adapter_model.safetensors"):
        os.replace(item, out_dir / item.name)  # weights land last: config without weights never loads
    staging.rmdir()
    metrics = {
        "quantization": quantization,
        "device": device,
        "cuda_graph": chunk_step.graph is not None,
        "fused_kernels": fused,
        "steps": step,
        "total_steps": total_steps,
        "resumed_from_step": resumed_from,
        "train_examples": len(train),
        "validation_examples": len(val),
        "truncation_rate": sum(e.truncated for e in train + val) / max(len(train) + len(val), 1),
        "trainable_parameters": trainable,
        "trainable_share": trainable / total_params,
        "trained_tokens_this_process": trained_tokens,
        "tokens_per_second": trained_tokens / wall if wall > 0 else 0.0,
        "wall_seconds": wall,
        "peak_memory_mb": peak_memory_mb(device),
        "first_train_loss": history[0]["train_loss"] if history else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
    }
    return TrainingResult(out_dir, metrics, resumed_from, history)
