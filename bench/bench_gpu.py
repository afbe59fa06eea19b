"""Throughput of the engine, the critic, a whole shard and QLoRA training, on random weights.

Random weights of a real architecture (throughput does not depend on weight values) with the real
Gemma 3 tokenizer; random weights never emit a stop sequence, so each prompt gets a length cap
drawn from a realistic mix (median ~20 tokens, up to 100). The engine and a sequential
one-prompt-at-a-time `model.generate` loop run on the same prompts, same caps, in the same process.

Usage (GPU box, through the device tool): python3 bench/bench_gpu.py --tokenizer-dir DIR --arch 1b
Locally, for a smoke test: .venv/bin/python bench/bench_gpu.py --tokenizer-dir data/models/<dir> --arch 270m
    --device cpu --rows 8 --sequential 2 --shard-pairs 8 --train-steps 2
"""

import argparse
import gc
import json
import os
import random
import time
from pathlib import Path

import torch

from stage1_assets.core import prompts
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.critic import Critic
from stage1_assets.core.generation import Generator
from stage1_assets.core.training import TrainingParams, train_adapter

# Gemma 3 1B text-model shape (hidden 1152, 26 layers, GQA 4:1, 262k vocab): ~1.0B parameters.
GEMMA3_1B = {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
             "num_key_value_heads": 1, "head_dim": 256}  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(tokenizer_dir: str, arch: str, device: str, dtype: torch.dtype | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tokenizer_dir)
    if arch == "1b":
        config.update(GEMMA3_1B)
        config.layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)]
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def length_caps(n: int, seed: int, median: float = 20, cap: int = 100) -> list[int]:
    rng = random.Random(seed)
    return [max(4, min(cap, int(rng.lognormvariate(0, 0.6) * median))) for _ in range(n)]


def response_prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    shots = prompts.load_pool(prompts.QA_SHOTS)
    instructions = [rng.choice(pool).instruction for _ in range(n)]
    # drop a random number of shots so prompt lengths vary, as they do across real prompts
    return instructions, [prompts.response_prompt(i, shots[: rng.randint(4, len(shots))]) for i in instructions]


def timed(device: str, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def bench_generation(model, tokenizer, device: str, rows: int, batch: int, sequential: int) -> dict:
    params = ResponseSampling(stop_sequences=list(ResponseSampling().stop_sequences))
    _, texts = response_prompts(rows, seed=1)
    caps = length_caps(rows, seed=2)
    gen = Generator(model, tokenizer)
    gen.generate(texts[:8], params, batch_size=8, seed=0, length_caps=[4] * 8)  # warm-up
    (_, stats), engine_s = timed(device, lambda: gen.generate(texts, params, batch, seed=0, length_caps=caps))
    seq_tokens = 0

    def sequential_loop():
        nonlocal seq_tokens
        for text, cap in zip(texts[:sequential], caps[:sequential], strict=True):
            enc = tokenizer(text, return_tensors="pt").to(device)
            out = model.generate(**enc, max_new_tokens=cap, min_new_tokens=cap, do_sample=True, temperature=0.4,
                                 top_p=0.9, repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            seq_tokens += out.shape[1] - enc["input_ids"].shape[1]

    _, seq_s = timed(device, sequential_loop)
    engine_tps = stats.generated_tokens / engine_s
    seq_tps = seq_tokens / seq_s
    return {"rows": rows, "batch_size": batch, "generated_tokens": stats.generated_tokens,
            "engine_seconds": round(engine_s, 2), "engine_tokens_per_s": round(engine_tps, 1),
            "engine_pairs_per_s": round(rows / engine_s, 2), "sequential_rows": sequential,
            "sequential_tokens_per_s": round(seq_tps, 1), "speedup_vs_sequential": round(engine_tps / seq_tps, 1),
            "mean_prompt_tokens": round(sum(len(tokenizer(t)["input_ids"]) for t in texts[:64]) / min(64, rows), 1),
            "mean_cap_tokens": round(sum(caps) / rows, 1)}  # fmt: skip


def critic_pairs(n: int) -> list[tuple[str, str]]:
    """Instructions with responses of 1-4 pool instructions: 35 tokens on average."""
    rng = random.Random(3)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    return [(rng.choice(pool).instruction, " ".join(rng.choice(pool).instruction for _ in range(rng.randint(1, 4))))
            for _ in range(n)]  # fmt: skip


def bench_critic(model, tokenizer, device: str, pairs: int, batch: int) -> dict:
    """The path `Critic` picks for a call of `pairs` pairs (packed and compiled on CUDA from
    COMPILE_MIN_ROWS rows, two per pair), timed on a second call: the first pays the compilation."""
    data = critic_pairs(pairs)
    critic = Critic(model, tokenizer, CriticParams(batch_size=batch))
    _, first_seconds = timed(device, lambda: critic.score(data))
    _, seconds = timed(device, lambda: critic.score(data))
    return {"pairs": pairs, "batch_size": batch, "path": "packed" if critic.scorer.packs(2 * pairs) else "padded",
            "first_call_seconds": round(first_seconds, 2), "seconds": round(seconds, 2),
            "pairs_per_s": round(pairs / seconds, 1)}  # fmt: skip


def bench_shard(model, tokenizer, device: str, pairs: int, batch: int, critic_batch: int) -> dict:
    """Instruction + response generation + critic for one shard, as `core.shards` runs them."""
    gen = Generator(model, tokenizer)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    rng = random.Random(4)
    n_instr = pairs + pairs // 4  # generate_instructions asks for 25% spares
    instr_prompts = [prompts.instruction_prompt(pool, rng) for _ in range(n_instr)]
    instructions, resp_prompts = response_prompts(pairs, seed=5)
    critic = Critic(model, tokenizer, CriticParams(batch_size=critic_batch))

    def shard():
        gen.generate(instr_prompts, InstructionSampling(), batch, seed=0, length_caps=length_caps(n_instr, 6, 16, 48))
        out, _ = gen.generate(resp_prompts, ResponseSampling(), batch, seed=1, length_caps=length_caps(pairs, 7))
        critic.score([(i, c.text) for i, c in zip(instructions, out, strict=True)])

    _, seconds = timed(device, shard)
    return {"pairs": pairs, "seconds": round(seconds, 1),
            "projected_gpu_hours_15000": round(seconds * 15_000 / pairs / 3600, 3),
            "original_plan_gpu_hours_15000": "6-7"}  # fmt: skip


def bench_training(model, tokenizer, device: str, steps: int, batch: int, workdir: Path) -> dict:
    model_dir = workdir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return bench_training_on(str(model_dir), tokenizer, device, steps, batch, workdir / "adapter")


def bench_training_on(model_dir: str, tokenizer, device: str, steps: int, batch: int, adapter_dir: Path) -> dict:
    """QLoRA (CUDA) / LoRA (CPU) training of `steps` steps on rows of realistic, varied lengths."""
    rng = random.Random(8)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    rows = [{"instruction": rng.choice(pool).instruction,
             "response": " ".join(rng.choice(pool).instruction for _ in range(rng.randint(2, 8)))}
            for _ in range(steps * batch)]  # fmt: skip
    params = TrainingParams(epochs=1, batch_size=batch, max_seq_len=256, validation_fraction=0.0,
                            checkpoint_every=10**6)  # fmt: skip
    result = train_adapter(model_dir, tokenizer, rows, adapter_dir, params, device=device, max_steps=steps)
    m = result.metrics
    return {k: m[k] for k in ("quantization", "steps", "tokens_per_second", "peak_memory_mb", "wall_seconds",
                              "trainable_share", "first_train_loss", "final_train_loss")}  # fmt: skip


def profiled(fn, path: Path) -> dict:
    """Run `fn` under torch.profiler; the kernels that took the most GPU time go to `path`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))
    print(path.read_text()[:6000], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sequential", type=int, default=16)
    parser.add_argument("--critic-pairs", type=int, default=16384)
    parser.add_argument("--critic-batch", type=int, default=512)
    parser.add_argument("--shard-pairs", type=int, default=1500)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--only", default="generation,critic,shard,training")
    parser.add_argument("--profile", action="store_true", help="write the top CUDA kernels of each phase to $OUT")
    args = parser.parse_args()
    model, tokenizer = build_model(args.tokenizer_dir, args.arch, args.device)
    result = {"arch": f"gemma3-{args.arch} (random weights)",
              "parameters": sum(p.numel() for p in model.parameters()), "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__}  # fmt: skip
    only = set(args.only.split(","))
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    phases = (
        ("generation", lambda: bench_generation(model, tokenizer, args.device, args.rows, args.batch, args.sequential)),
        ("critic", lambda: bench_critic(model, tokenizer, args.device, args.critic_pairs, args.critic_batch)),
        ("shard", lambda: bench_shard(model, tokenizer, args.device, args.shard_pairs, args.batch, args.critic_batch)),
        ("training", lambda: bench_training(model, tokenizer, args.device, args.train_steps, args.train_batch,
                                            Path("/tmp/stage1_bench_train"))),
    )  # fmt: skip
    for name, fn in phases:
        if name in only:
            result[name] = profiled(fn, out_dir / f"profile_{name}_{args.arch}.txt") if args.profile else fn()
            print(json.dumps({name: result[name]}), flush=True)
            # in the pipeline each phase is a run of its own process: none inherits another's cached GPU memory
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    (out_dir / f"bench_gpu_{args.arch}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
