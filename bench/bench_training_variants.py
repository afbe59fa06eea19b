"""QLoRA training speed: the shipped code path against the alternatives it was chosen over, in one run.

Variants (same model, same rows, same steps, same process):
  * shipped      — bf16 weights outside the 4-bit layers, fp32 LoRA weights, length-grouped batches
  * no-grouping  — shipped, but batches in plain shuffled order
  * autocast     — shipped, plus bf16 autocast around the forward (LoRA matmuls in bf16)
  * peft-prepare — peft.prepare_model_for_kbit_training (fp32 embeddings/norms), plain shuffled
                   batches: the code path before the change
Usage (GPU box): python3 bench/bench_training_variants.py --tokenizer-dir /tmp/tok --arch 1b
"""

import argparse
import json
import os
import random
from pathlib import Path

import bench_gpu
import torch

from stage1_assets.core import training


def plain_batches(lengths, batch_size, seed, epoch):
    order = list(range(len(lengths)))
    random.Random(seed * 1_000 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def peft_prepared(model_dir, device, params):
    from peft import prepare_model_for_kbit_training

    model, quantization = SHIPPED["load"](model_dir, device, params)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), quantization + " + peft prepare"


def autocast_loss(model, batch):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return SHIPPED["loss"](model, batch)


SHIPPED = {"load": training.load_base_for_training, "batches": training.epoch_batches,
           "loss": training.response_loss}  # fmt: skip
VARIANTS = {
    "shipped": {},
    "no-grouping": {"batches": plain_batches},
    "autocast": {"loss": autocast_loss},
    "peft-prepare": {"load": peft_prepared, "batches": plain_batches},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    model, tokenizer = bench_gpu.build_model(args.tokenizer_dir, args.arch, "cuda")
    workdir = Path("/tmp/stage1_bench_variants")
    (workdir / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    del model
    bench_gpu.bench_training_on(str(workdir / "model"), tokenizer, "cuda", 2, args.batch, workdir / "warm-up")
    results = {}
    for name in args.variants.split(","):
        overrides = {**SHIPPED, **VARIANTS[name]}
        training.load_base_for_training = overrides["load"]
        training.epoch_batches = overrides["batches"]
        training.response_loss = overrides["loss"]
        out = bench_gpu.bench_training_on(str(workdir / "model"), tokenizer, "cuda", args.steps, args.batch,
                                          workdir / f"adapter-{name}")  # fmt: skip
        results[name] = out
        print(json.dumps({name: out}), flush=True)
    base = results.get("peft-prepare", {}).get("tokens_per_second")
    if base:
        results["ratio_to_peft_prepare"] = {k: round(v["tokens_per_second"] / base, 2)
                                            for k, v in results.items() if k in VARIANTS}  # fmt: skip
    print(json.dumps(results, indent=2))
    (Path(os.environ.get("OUT", "/tmp")) / f"bench_training_variants_{args.arch}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
