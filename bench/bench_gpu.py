"""Throughput of the engine, the critic, a whole shard and QLoRA training, on random weights.

Random weights of a real architecture (throughput does not depend on weight values) with the real
Gemma 3 tokenizer; random weights never emit a stop sequence, so each prompt gets a length cap
drawn from a realistic mix (median ~20 tokens, up to 100). The engine and its peer, plain batched
`model.generate`, run on the same prompts, caps and batch size, in the same process.

Usage (GPU box, through the device tool): python3 bench/bench_gpu.py --tokenizer-dir DIR --arch 1b
Locally, for a smoke test: .venv/bin/python bench/bench_gpu.py --tokenizer-dir data/models/<dir> --arch 270m
    --device cpu --rows 8 --shard-pairs 8 --train-steps 2
"""

import argparse
import gc
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import torch
import transformers

from stage1_assets.core import decoding, generation, kernels, prompts
from stage1_assets.core.config import CriticParams, InstructionSampling, ResponseSampling
from stage1_assets.core.critic import Critic
from stage1_assets.core.generation import Generator
from stage1_assets.core.kernels import NO_FUSED_KERNELS, fuse_for_inference, fuse_with_liger, inference_attention
from stage1_assets.core.training import TrainingParams, train_adapter

# Gemma 3 1B text-model shape (hidden 1152, 26 layers, GQA 4:1, 262k vocab): ~1.0B parameters.
GEMMA3_1B = {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
             "num_key_value_heads": 1, "head_dim": 256}  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(tokenizer_dir: str, arch: str, device: str, dtype: torch.dtype | None = None, gguf: str | None = None):
    """Random weights of `arch`, or the real weights of a GGUF file (the embedded model's, dequantized as the
    pipeline converts it)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"
    if gguf:
        model = AutoModelForCausalLM.from_pretrained(Path(gguf).parent, gguf_file=Path(gguf).name,
                                                     quantization_config=GgufConfig(dequantize=True))  # fmt: skip
        return model.to(device=device, dtype=dtype).eval(), tokenizer
    config = AutoConfig.from_pretrained(tokenizer_dir)
    if arch == "1b":
        config.update(GEMMA3_1B)
        config.layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)]
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 1B model's random init on the host takes a minute
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
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


def cuda_milliseconds(fn, repeats: int = 10) -> float:
    """Mean milliseconds of `fn` on the current CUDA device over `repeats` calls, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / repeats * 1e3, 3)


def timed(device: str, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def hf_generate_batched(model, tokenizer, device: str, texts: list[str], caps: list[int], batch: int) -> int:
    """The peer: plain batched `model.generate` on the engine's prompts, caps and batch size, length-sorted
    batches as the engine makes them. A batch runs to its longest cap; only the rows' own caps count as useful."""
    order = sorted(range(len(texts)), key=lambda i: -len(tokenizer(texts[i])["input_ids"]))
    useful = 0
    with inference_attention(model.device):  # the engine's attention backends, for both
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True).to(device)
            longest = max(caps[i] for i in rows)
            model.generate(**enc, max_new_tokens=longest, min_new_tokens=longest, do_sample=True, temperature=0.4,
                           top_p=0.9, repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            useful += sum(caps[i] for i in rows)
    return useful


def bench_generation(model, tokenizer, device: str, rows: int, batch: int, peer_rows: int) -> dict:
    """The engine and plain batched HF `generate` on the same prompts, caps and batch size, in this process."""
    params = ResponseSampling(stop_sequences=list(ResponseSampling().stop_sequences))
    _, texts = response_prompts(rows, seed=1)
    caps = length_caps(rows, seed=2)
    gen = Generator(model, tokenizer)
    gen.generate(texts[:8], params, batch_size=8, seed=0, length_caps=[4] * 8)  # warm-up
    (completions, stats), engine_s = timed(device, lambda: gen.generate(texts, params, batch, seed=0,
                                                                        length_caps=caps))  # fmt: skip
    _, breakdown = engine_breakdown(lambda: gen.generate(texts, params, batch, seed=0, length_caps=caps))
    # the peer makes the tokens each row needed: its cap, or where a real model stopped (a batch of HF
    # `generate` with stop strings runs until its last row stops)
    needed = [c.completion_tokens for c in completions]
    hf_generate_batched(model, tokenizer, device, texts[:8], [4] * 8, 8)  # warm-up
    peer_tokens, peer_s = timed(
        device, lambda: hf_generate_batched(model, tokenizer, device, texts[:peer_rows], needed[:peer_rows], batch)
    )
    engine_tps, peer_tps = stats.generated_tokens / engine_s, peer_tokens / peer_s
    return {"rows": rows, "batch_size": batch, "generated_tokens": stats.generated_tokens,
            "engine_seconds": round(engine_s, 2), "engine_tokens_per_s": round(engine_tps, 1),
            "engine_pairs_per_s": round(rows / engine_s, 2), "engine_breakdown_seconds": breakdown,
            "hf_generate_rows": peer_rows, "hf_generate_seconds": round(peer_s, 2),
            "hf_generate_tokens_per_s": round(peer_tps, 1), "engine_over_hf_generate": round(engine_tps / peer_tps, 2),
            "mean_prompt_tokens": round(sum(len(tokenizer(t)["input_ids"]) for t in texts[:64]) / min(64, rows), 1),
            "mean_cap_tokens": round(sum(caps) / rows, 1),
            "mean_completion_tokens": round(sum(needed) / rows, 1)}  # fmt: skip


def graphs_agree(model, tokenizer, rows: int, batch: int, peak: bool = True) -> dict:
    """Completions with the decode step replayed as CUDA graphs, run eagerly, and from plain HF `generate`
    (greedy), same prompts. Random weights give near-flat next-token distributions, where any rounding
    difference changes the draw, so with `peak` the final norm is scaled up for this check (peaked,
    model-like logits); real weights are checked as they are (scaling theirs saturates the logits into ties)."""
    norm = model.get_decoder().norm.weight
    saved = norm.detach().clone()
    if peak:
        norm.data.fill_(30.0)
    try:
        params = ResponseSampling()
        _, texts = response_prompts(rows, seed=9)
        caps = length_caps(rows, seed=10)
        graphed, _ = Generator(model, tokenizer).generate(texts, params, batch, seed=3, length_caps=caps)
        capture = decoding.DecodeSession._graph
        decoding.DecodeSession._graph = lambda self, rows: None
        try:
            eager, _ = Generator(model, tokenizer).generate(texts, params, batch, seed=3, length_caps=caps)
        finally:
            decoding.DecodeSession._graph = capture
        greedy = ResponseSampling(temperature=0.0, stop_sequences=["\x00"], max_new_tokens=16)
        few = texts[:32]
        ours, _ = Generator(model, tokenizer).generate(few, greedy, 32, seed=0)
        enc = tokenizer(few, return_tensors="pt", padding=True).to(model.device)
        hf = model.generate(**enc, max_new_tokens=16, do_sample=False, repetition_penalty=greedy.repetition_penalty,
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        hf_texts = tokenizer.batch_decode(hf[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        norm.data.copy_(saved)
    same = sum(a.text == b.text for a, b in zip(graphed, eager, strict=True))
    greedy_same = sum(a.text == b.strip() for a, b in zip(ours, hf_texts, strict=True))
    return {"rows": rows, "graphs_vs_eager_identical": round(same / rows, 3),
            "greedy_vs_hf_generate_identical": round(greedy_same / len(few), 3)}  # fmt: skip


def critic_pairs(n: int) -> list[tuple[str, str]]:
    """Instructions with responses of 1-4 pool instructions: 35 tokens on average."""
    rng = random.Random(3)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    return [(rng.choice(pool).instruction, " ".join(rng.choice(pool).instruction for _ in range(rng.randint(1, 4))))
            for _ in range(n)]  # fmt: skip


def bench_critic(model, tokenizer, device: str, pairs: int, batch: int) -> dict:
    """One `Critic.score` call of `pairs` pairs, as a shard makes per generation batch; timed on a second
    call, the first also computing the shots documents' KV caches."""
    data = critic_pairs(pairs)
    critic = Critic(model, tokenizer, CriticParams(batch_size=batch))
    _, first_seconds = timed(device, lambda: critic.score(data))
    _, seconds = timed(device, lambda: critic.score(data))
    return {"pairs": pairs, "batch_size": batch, "first_call_seconds": round(first_seconds, 2),
            "seconds": round(seconds, 2), "pairs_per_s": round(pairs / seconds, 1)}  # fmt: skip


def liger_vocabulary_logprobs(model, hidden, targets):
    """`kernels.vocabulary_logprobs` by Liger's fused linear cross-entropy (Triton), the shipped path's peer."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return -liger_fused_linear_cross_entropy(hidden, head.weight, targets, bias=head.bias, reduction="none",
                                             softcap=cap)  # fmt: skip


def scoring_check(model, tokenizer, device: str, pairs: int, batch: int) -> dict:
    """The critic's evidence with the shipped log-probabilities (torch) and with Liger's fused linear
    cross-entropy, same pairs: the seconds of each and the largest difference of each signal."""
    import stage1_assets.core.scoring as scoring

    data = critic_pairs(pairs)
    critic = Critic(model, tokenizer, CriticParams(batch_size=batch))
    shipped = scoring.vocabulary_logprobs
    runs = {}
    for name, logprobs in (("torch", shipped), ("liger", liger_vocabulary_logprobs)):
        scoring.vocabulary_logprobs = logprobs
        try:
            critic.score(data[:16])  # the documents' caches and the kernels' first use
            runs[name] = timed(device, lambda: critic.evidence(data))
        finally:
            scoring.vocabulary_logprobs = shipped
    both = list(zip(runs["torch"][0], runs["liger"][0], strict=True))
    return {"pairs": pairs, "batch_size": batch, **{f"{k}_seconds": round(v[1], 2) for k, v in runs.items()},
            "max_abs_difference_nats": {
                signal: float(f"{max(abs(getattr(a, signal) - getattr(b, signal)) for a, b in both):.3g}")
                for signal in ("end", "pmi", "contrast", "cond_logprob")}}  # fmt: skip


def logits_check(model, tokenizer, rows: int = 8, steps: int = 12) -> dict:
    """The engine's next-token logits (graph replay and eager) against one plain forward pass of the
    whole sequence per prompt: the largest difference at each step, in units of the logits' spread."""
    _, texts = response_prompts(rows, seed=12)
    sequences = tokenizer(texts)["input_ids"]
    report = {}
    norm = model.get_decoder().norm.weight
    saved = norm.detach().clone()
    for mode in ("graphs", "eager", "graphs-peaked"):
        norm.data.copy_(saved if mode != "graphs-peaked" else torch.full_like(saved, 30.0))
        recorded: list[torch.Tensor] = []

        def sampler(logits, history, uniforms, recorded=recorded):
            recorded.append(logits[:rows].float().clone())
            return logits.argmax(dim=-1)

        session = decoding.DecodeSession(model, max(map(len, sequences)), rows, steps + 1, sampler)
        session.use_graphs = mode == "graphs" and session.use_graphs
        tokens = [session.start_batch(sequences, torch.rand(steps + 1, rows), [s[0] for s in sequences],
                                      tokenizer.pad_token_id)]  # fmt: skip
        for step in range(steps):
            tokens.append(session.decode(rows, step).clone())
        # a replayed graph records its sampler's output only at capture: compare the tokens' logits instead
        generated = torch.stack(tokens, dim=1).tolist()
        worst = []
        with torch.inference_mode():
            for row, seq in enumerate(sequences):
                full = torch.tensor([seq + generated[row]], device=model.device)
                reference = model(input_ids=full).logits[0, len(seq) - 1 : -1].float()
                ours = reference.argmax(dim=-1).tolist()
                worst.append(sum(a != b for a, b in zip(ours, generated[row], strict=True)))
        report[mode] = {"tokens_differing_from_plain_forward_argmax": sum(worst), "of": rows * (steps + 1),
                        "first_step_logits_max_diff_over_std": round(float(
                            (recorded[0] - _plain_last_logits(model, sequences)).abs().max()
                            / recorded[0].std()), 4)}  # fmt: skip
    norm.data.copy_(saved)
    return report


def _plain_last_logits(model, sequences) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(input_ids=torch.tensor([s], device=model.device)).logits[:, -1].float()
                          for s in sequences])  # fmt: skip


def bench_shard(
    model, tokenizer, device: str, pairs: int, batch: int, critic_batch: int, repeats: int = 1, breakdown: bool = False,
    instruction_groups: tuple[int, int] = (prompts.INSTRUCTION_GROUP, prompts.INSTRUCTION_SHARED_SHOTS),
) -> dict:
    """Instruction + response generation + critic for one shard, with the prompts `core.pairs` builds. The
    first run is the figure (a shard is a process of its own); later runs in this process show the warm cost.
    `instruction_groups`: (prompts per group, shots they share), core/prompts.py."""
    gen = Generator(model, tokenizer)
    pool = prompts.load_pool(prompts.TRAIN_POOL)
    shots = prompts.load_pool(prompts.QA_SHOTS)
    rng = random.Random(4)
    n_instr = pairs + pairs // 4  # generate_instructions asks for 25% spares
    instr_prompts = prompts.instruction_prompts(pool, rng, n_instr, *instruction_groups)
    instructions = [rng.choice(pool).instruction for _ in range(pairs)]
    critic = Critic(model, tokenizer, CriticParams(batch_size=critic_batch))
    response_prompts_ = [prompts.response_prompt(i, shots) for i in instructions]
    responses: list = []
    steps = {
        "instructions": lambda: gen.generate(instr_prompts, InstructionSampling(), batch, seed=0,
                                             length_caps=length_caps(n_instr, 6, 16, 48)),
        "responses": lambda: responses.append(gen.generate(response_prompts_, ResponseSampling(), batch, seed=1,
                                                           length_caps=length_caps(pairs, 7))[0]),
        "critic": lambda: critic.score([(i, c.text) for i, c in zip(instructions, responses.pop(), strict=True)]),
    }  # fmt: skip
    parts = {}

    def shard():
        for name, step in steps.items():
            if breakdown:  # synchronised around every engine and critic call: for reading, not for the figure
                (_, spent), seconds = timed(device, lambda step=step: engine_breakdown(step))
                parts[f"{name}_breakdown"] = {"seconds": round(seconds, 2), **spent}
            else:
                parts[f"{name}_seconds"] = round(timed(device, step)[1], 2)

    runs = []
    for _ in range(repeats):
        _, seconds = timed(device, shard)
        runs.append({"seconds": round(seconds, 1), **parts})
    hours = runs[0]["seconds"] * 15_000 / pairs / 3600
    return {"pairs": pairs, "instruction_groups": instruction_groups, **runs[0],
            "projected_gpu_hours_15000": round(hours, 3),
            **({"warm_runs": runs[1:]} if repeats > 1 else {})}  # fmt: skip


def engine_breakdown(fn) -> tuple[object, dict]:
    """Run `fn`, timing the engine's prefill, decode steps and graph captures and the critic's document
    prefill and forward passes (synchronized: for reading only). What is left of a part is host work."""
    import stage1_assets.core.scoring as scoring

    timed_methods = ((decoding.DecodeSession, "start_batch", "prefill"), (decoding.DecodeSession, "decode", "decode"),
                     (decoding.DecodeSession, "_graph", "capture"), (scoring.LogprobScorer, "_prefix", "critic_prefix"),
                     (scoring.LogprobScorer, "_token_logprobs_of", "critic_forward"))  # fmt: skip
    spent = dict.fromkeys(["prefill", "decode", "capture", "critic_prefix", "critic_forward", "steps"], 0.0)
    originals = {(cls, name): getattr(cls, name) for cls, name, _ in timed_methods}

    def timing(cls, name, key):
        def wrapper(self, *args, **kwargs):
            if key == "capture" and args[0] in self.graphs:
                return originals[cls, name](self, *args, **kwargs)
            sync(str(self.device))
            start = time.perf_counter()
            out = originals[cls, name](self, *args, **kwargs)
            sync(str(self.device))
            spent[key] += time.perf_counter() - start
            spent["steps"] += key == "decode"
            return out

        return wrapper

    for cls, name, key in timed_methods:
        setattr(cls, name, timing(cls, name, key))
    try:
        out = fn()
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)
    spent["decode"] -= spent["capture"]  # a capture happens inside the decode call that first needs it
    return out, {k: round(v, 3) for k, v in spent.items() if v}


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
    averages = prof.key_averages()
    tables = [averages.table(sort_by=key, row_limit=40, max_name_column_width=70)
              for key in ("cuda_time_total", "self_cpu_time_total")]  # fmt: skip
    path.write_text("\n\n".join(tables))
    print(tables[0][:5000], tables[1][:5000], sep="\n", flush=True)
    return out


def python_profiled(fn, path: Path):
    """`fn` under cProfile: the functions with the most cumulative time go to `path` (host time, e.g. a process's
    first use of a kernel)."""
    import cProfile
    import io
    import pstats

    def run():
        profiler = cProfile.Profile()
        out = profiler.runcall(fn)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
        path.write_text(text.getvalue())
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--gguf", help="real weights: the embedded model's GGUF file (with --arch 270m)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--peer-rows", type=int, default=None, help="rows for HF generate (default: all)")
    parser.add_argument("--critic-pairs", type=int, default=1024, help="pairs per call (a full-profile batch)")
    parser.add_argument("--critic-batch", type=int, default=512)
    parser.add_argument("--shard-pairs", type=int, default=1500)
    parser.add_argument("--shard-repeats", type=int, default=1, help="later runs show the warm cost")
    parser.add_argument("--breakdown", action="store_true", help="time the shard's engine and critic calls apart")
    parser.add_argument("--instruction-groups", type=int, nargs=2, metavar=("PROMPTS", "SHARED_SHOTS"),
                        default=(prompts.INSTRUCTION_GROUP, prompts.INSTRUCTION_SHARED_SHOTS),
                        help="instruction prompts per group and the shots they share; 1 0: every prompt its own")
    parser.add_argument(
        "--cudnn-attention",
        action="store_true",
        help="let inference attention use cuDNN (the pipeline leaves it out: core/kernels.py)",
    )
    parser.add_argument("--liger-inference", action="store_true",
                        help="inference on Liger's Triton kernels (norms, GeGLU, the critic's cross-entropy), as "
                        "shipped until 2026-12-01 (core/kernels.py)")
    parser.add_argument("--min-graph-rows", type=int, help="the smallest decode graph (core/generation.py)")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--only", default="generation,graphs,critic,shard,training")
    parser.add_argument("--profile", action="store_true", help="write the top CUDA kernels of each phase to $OUT")
    parser.add_argument("--python-profile", action="store_true", help="write each phase's cProfile top 60 to $OUT")
    parser.add_argument(
        "--no-fused-kernels",
        action="store_true",
        help="without the fused norms (the pipeline's default on CUDA: core/kernels.py)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.cudnn_attention:
        from torch.nn.attention import SDPBackend

        backends = kernels.inference_sdpa_backends()
        kernels.inference_sdpa_backends = lambda: [SDPBackend.CUDNN_ATTENTION, *backends]
    if args.min_graph_rows:
        generation.MIN_GRAPH_ROWS = args.min_graph_rows
    if args.gguf and args.arch != "270m":
        parser.error("--gguf holds the 270M model's weights: use it with --arch 270m")
    build = lambda: build_model(args.tokenizer_dir, args.arch, args.device, gguf=args.gguf)  # noqa: E731
    (model, tokenizer), build_seconds = timed(args.device, build)
    fusing = args.device.startswith("cuda") and not args.no_fused_kernels  # as core.model_loader.load_model does
    fused = (fuse_with_liger if args.liger_inference else fuse_for_inference)(model) if fusing else NO_FUSED_KERNELS
    if fusing and args.liger_inference:
        import stage1_assets.core.scoring as scoring

        scoring.vocabulary_logprobs, fused = liger_vocabulary_logprobs, fused + ", cross-entropy"
    weights = "real weights: " + Path(args.gguf).name if args.gguf else "random weights"
    result = {"arch": f"gemma3-{args.arch} ({weights})", "fused_kernels": fused,
              "parameters": sum(p.numel() for p in model.parameters()), "device": args.device,
              "model_build_seconds": round(build_seconds, 1), "cudnn_attention": args.cudnn_attention,
              "min_graph_rows": generation.MIN_GRAPH_ROWS,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "command": "python3 bench/bench_gpu.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    only = set(args.only.split(","))
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    phases = (  # the shard first: a shard runs as a process of its own, so its figure is taken cold
        ("shard", lambda: bench_shard(model, tokenizer, args.device, args.shard_pairs, args.batch, args.critic_batch,
                                      args.shard_repeats, args.breakdown, tuple(args.instruction_groups))),
        ("generation", lambda: bench_generation(model, tokenizer, args.device, args.rows, args.batch,
                                                args.peer_rows or args.rows)),
        ("graphs", lambda: graphs_agree(model, tokenizer, min(args.rows, 512), args.batch, peak=not args.gguf)),
        ("logits", lambda: logits_check(model, tokenizer)),
        ("scoring", lambda: scoring_check(model, tokenizer, args.device, args.shard_pairs, args.critic_batch)),
        ("critic", lambda: bench_critic(model, tokenizer, args.device, args.critic_pairs, args.critic_batch)),
        ("training", lambda: bench_training(model, tokenizer, args.device, args.train_steps, args.train_batch,
                                            Path("/tmp/stage1_bench_train"))),
    )  # fmt: skip
    for name, fn in phases:
        if name in only:
            if args.python_profile:
                fn = python_profiled(fn, out_dir / f"pyprofile_{name}_{args.arch}.txt")
            result[name] = profiled(fn, out_dir / f"profile_{name}_{args.arch}.txt") if args.profile else fn()
            print(json.dumps({name: result[name]}), flush=True)
            # in the pipeline each phase is a run of its own process: none inherits another's cached GPU memory
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    (out_dir / f"bench_gpu_{args.arch}{'_real' if args.gguf else ''}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
