"""Shards on a multi-GPU host: one process per shard, each on the GPU it claims (core/devices.py).

Runs, in one invocation:
  1. one shard process alone on one GPU (the baseline);
  2. N shard processes at once, one per GPU, each claiming its device the way a Dagster run does;
  3. a crash: a process claims a GPU and is SIGKILLed; a new process must get that GPU at once.
Each shard is the same work as `bench_gpu.py --only shard` (instruction + response generation +
critic) on random weights of a real architecture. Prints JSON and writes it under $OUT.

Usage (device tool, kind nvidia-h100-x2): python3 bench/bench_multi_gpu.py --tokenizer-dir /tmp/tok
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from stage1_assets.core import devices


def worker(args: argparse.Namespace) -> None:
    import bench_gpu

    device = devices.claim_gpu_for_process(Path(args.lock_dir), wait_seconds=args.wait, label=args.label)
    print(json.dumps({"event": "claimed", "device": device, "pid": os.getpid()}), flush=True)
    if args.hold:
        time.sleep(args.hold)
        return
    model, tokenizer = bench_gpu.build_model(args.tokenizer_dir, args.arch, device)
    bench_gpu.bench_shard(model, tokenizer, device, 64, args.batch, args.critic_batch)  # warm-up
    start = time.time()
    result = bench_gpu.bench_shard(model, tokenizer, device, args.pairs, args.batch, args.critic_batch)
    print(json.dumps({"event": "done", "device": device, "uuid": str(torch.cuda.get_device_properties(device).uuid),
                      "start": start, "end": time.time(), **result}), flush=True)  # fmt: skip


def spawn(args: argparse.Namespace, lock_dir: str, label: str, hold: float = 0.0) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--lock-dir", lock_dir, "--label", label, "--hold", str(hold),
           "--tokenizer-dir", args.tokenizer_dir, "--arch", args.arch, "--pairs", str(args.pairs),
           "--batch", str(args.batch), "--critic-batch", str(args.critic_batch), "--wait", "0"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def events(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate()
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_together(args: argparse.Namespace, lock_dir: str, n: int) -> dict:
    procs = [spawn(args, lock_dir, f"shard-{k:03d}") for k in range(n)]
    done = [e for p in procs for e in events(p) if e["event"] == "done"]
    if len(done) != n:
        raise RuntimeError(f"{n - len(done)} of {n} shard processes failed")
    wall = max(e["end"] for e in done) - min(e["start"] for e in done)
    return {"processes": n, "devices": sorted(e["device"] for e in done),
            "distinct_gpus": len({e["uuid"] for e in done}), "pairs": n * args.pairs, "wall_seconds": round(wall, 1),
            "pairs_per_s": round(n * args.pairs / wall, 1),
            "per_process_seconds": [e["seconds"] for e in done]}  # fmt: skip


def crash_frees_gpu(args: argparse.Namespace, lock_dir: str, n: int) -> dict:
    holders = [spawn(args, lock_dir, f"holder-{k}", hold=600) for k in range(n)]
    claimed = [json.loads(p.stdout.readline()) for p in holders]
    refused = spawn(args, lock_dir, "extra", hold=1)
    refused_rc = refused.wait()  # every GPU is claimed: this one must fail, not share a GPU
    victim = holders[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    started = time.perf_counter()
    successor = spawn(args, lock_dir, "successor", hold=1)
    successor_claim = json.loads(successor.stdout.readline())
    seconds = time.perf_counter() - started
    for p in [*holders, successor]:
        p.kill()
        p.wait()
    return {"claimed": [c["device"] for c in claimed], "extra_process_refused": refused_rc != 0,
            "killed_device": claimed[0]["device"], "successor_device": successor_claim["device"],
            "successor_claim_seconds": round(seconds, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--arch", choices=["270m", "1b"], default="1b")
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--critic-batch", type=int, default=512)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--lock-dir", default="")
    parser.add_argument("--label", default="")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--wait", type=float, default=0.0)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    n = torch.cuda.device_count()
    lock_dir = tempfile.mkdtemp(prefix="stage1-gpu-locks-")
    result = {"gpus": n, "gpu": torch.cuda.get_device_name(0), "arch": f"gemma3-{args.arch} (random weights)",
              "pairs_per_shard": args.pairs}  # fmt: skip
    single = result["one_process_one_gpu"] = run_together(args, lock_dir, 1)
    print(json.dumps(result), flush=True)
    together = result["one_process_per_gpu"] = run_together(args, lock_dir, n)
    result["scaling"] = round(together["pairs_per_s"] / single["pairs_per_s"], 2)
    result["crash"] = crash_frees_gpu(args, lock_dir, n)
    print(json.dumps(result, indent=2), flush=True)
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "bench_multi_gpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
