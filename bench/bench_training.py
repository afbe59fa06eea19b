"""Steady-state QLoRA training throughput, as the pipeline runs it (`core.training.train_adapter`).

Tokens/s counts real (non-padding) tokens between optimizer steps after `--warmup` steps (the
first steps pay CUDA-graph capture, cuBLAS set-up and the allocator's growth), from the step
records `train_adapter` hands its `on_step` callback; each record follows a host sync. Variants
run in one process on the same rows (random weights of a real architecture, real tokenizer):

  * shipped       — packed chunks of 4,096 tokens, one CUDA graph replayed per chunk, LoRA matmuls
                    under bf16 autocast, Liger's fused RMSNorm and GeGLU kernels
  * padded-eager  — the step before this work: a right-padded batch, eager forward and backward,
                    fp32 LoRA matmuls (its code is kept below, as the peer)
  * eager-packed / no-liger / fp32-lora / chunk-2048 / chunk-8192 — shipped minus one of its parts

Usage (GPU host): bash scripts/gpu_bench.sh run .bench-carry bench/bench_training.py --arch 1b
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import bench_gpu
import torch
import transformers

from stage1_assets.core import prompts, training
from stage1_assets.core.kernels import softcapped
from stage1_assets.core.training import TrainingParams, train_adapter

VARIANTS = {  # name: TrainingParams overrides (None: the padded eager peer)
    "shipped": {},
    "eager-packed": {"cuda_graphs": False},
    "padded-eager": None,
    "no-liger": {"liger_kernels": False},
    "fp32-lora": {"bf16_autocast": False},
    "chunk-2048": {"chunk_tokens": 2048},
    "chunk-8192": {"chunk_tokens": 8192},
}


def bench_rows(n: int, seed: int = 8) -> list[dict]:
    """Instruction + a response of 2-8 pool instructions: lengths vary like accepted pairs (~30-200 tokens)."""
    rng = random.Random(seed)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    return [{"instruction": rng.choice(pool).instruction,
             "response": " ".join(rng.choice(pool).instruction for _ in range(rng.randint(2, 8)))}
            for _ in range(n)]  # fmt: skip


def steady(stamps: list[tuple[float, int]], warmup: int) -> dict:
    (start, _), timed = stamps[warmup - 1], stamps[warmup:]
    tokens = sum(n for _, n in timed)
    return {"steady_tokens_per_s": round(tokens / (timed[-1][0] - start)), "steady_steps": len(timed),
            "tokens_per_step": round(tokens / len(timed))}  # fmt: skip


def shipped_run(model_dir: str, tokenizer, device: str, params: TrainingParams, steps: int, warmup: int,
                adapter_dir: Path) -> dict:  # fmt: skip
    stamps: list[tuple[float, int]] = []
    rows = bench_rows(steps * params.batch_size)

    def on_step(record: dict, _line: str) -> None:
        stamps.append((time.perf_counter(), record["tokens"]))

    result = train_adapter(model_dir, tokenizer, rows, adapter_dir, params, device=device, max_steps=steps,
                           on_step=on_step)  # fmt: skip
    m = result.metrics
    return steady(stamps, warmup) | {
        "whole_run_tokens_per_s": round(m["tokens_per_second"]), "peak_memory_mb": round(m["peak_memory_mb"]),
        "cuda_graph": m["cuda_graph"], "quantization": m["quantization"], "fused_kernels": m["fused_kernels"],
        "first_train_loss": round(m["first_train_loss"], 4), "final_train_loss": round(m["final_train_loss"], 4),
    }  # fmt: skip


def padded_eager_run(model_dir: str, tokenizer, device: str, params: TrainingParams, steps: int, warmup: int) -> dict:
    """The training step before packing (same model set-up, batches and optimizer): the peer."""
    train = training.encode_examples(tokenizer, bench_rows(steps * params.batch_size), params.max_seq_len)
    model = training.attach_lora(training.load_base_for_training(model_dir, device, params)[0], params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, int(params.warmup_fraction * steps), steps)
    pad_id = tokenizer.pad_token_id
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    stamps, losses = [], []
    for indices in training.epoch_batches([len(e.input_ids) for e in train], params.batch_size, params.seed, 0):
        batch = [train[i] for i in indices]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in batch], device=device)
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in batch], device=device)
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch], device=device)
        causal = model.get_base_model()
        hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        selected = labels[:, 1:] != -100
        logits = softcapped(causal.get_output_embeddings()(hidden[:, :-1][selected]), causal.config)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][selected])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        stamps.append((time.perf_counter(), int(mask.sum())))
    return steady(stamps, warmup) | {
        "peak_memory_mb": round(training.peak_memory_mb(device)),
        "first_train_loss": round(losses[0], 4),
        "final_train_loss": round(losses[-1], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64, help="sequences per step (the full profile's)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", default="shipped,padded-eager,no-liger")
    parser.add_argument("--profile-steps", type=int, default=0, help="also profile this many shipped steps")
    args = parser.parse_args()
    model, tokenizer = bench_gpu.build_model(args.tokenizer_dir, args.arch, args.device)
    workdir = Path("/tmp/stage1_bench_training")
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    del model
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    result = {"arch": f"gemma3-{args.arch} (random weights)", "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "command": "python3 bench/bench_training.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "variants": {}}  # fmt: skip
    for name in args.variants.split(","):
        overrides = VARIANTS[name]
        params = TrainingParams(epochs=1, batch_size=args.batch, max_seq_len=256, validation_fraction=0.0,
                                checkpoint_every=10**6, **(overrides or {}))  # fmt: skip
        try:
            if overrides is None:
                run = padded_eager_run(str(workdir / "model"), tokenizer, args.device, params, args.steps, args.warmup)
            else:
                run = shipped_run(str(workdir / "model"), tokenizer, args.device, params, args.steps, args.warmup,
                                  workdir / f"adapter-{name}")  # fmt: skip
        except Exception as error:  # one failing variant (e.g. out of memory) must not hide the others
            run = {"error": f"{type(error).__name__}: {str(error)[:400]}"}
        result["variants"][name] = run
        print(json.dumps({name: run}), flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    shipped, peer = (result["variants"].get(k, {}).get("steady_tokens_per_s") for k in ("shipped", "padded-eager"))
    if shipped and peer:
        result["steady_tokens_per_s"] = shipped
        result["shipped_over_padded_eager"] = round(shipped / peer, 2)
    if args.profile_steps:
        params = TrainingParams(epochs=1, batch_size=args.batch, max_seq_len=256, validation_fraction=0.0)
        bench_gpu.profiled(lambda: shipped_run(str(workdir / "model"), tokenizer, args.device, params,
                                               args.profile_steps, 1, workdir / "adapter-profiled"),
                           out_dir / "profile_training_shipped.txt")  # fmt: skip
    (out_dir / f"bench_training_{args.arch}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
