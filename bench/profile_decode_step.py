"""Where a decode step's time goes at batch 256 on a 1B model: forward, sampling, stop checks, compaction.

Usage (GPU box): python3 bench/profile_decode_step.py --tokenizer-dir DIR
"""

import argparse
import json
import time

import torch
from bench_gpu import build_model, cuda_milliseconds, response_prompts

from stage1_assets.core.config import ResponseSampling
from stage1_assets.core.generation import STOP_WINDOW_TOKENS, sample_next


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    from transformers import DynamicCache

    model, tok = build_model(args.tokenizer_dir, "1b", "cuda")
    _, texts = response_prompts(args.batch, seed=1)
    enc = tok(texts, return_tensors="pt", padding=True).to("cuda")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = {}
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        start = time.perf_counter()
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        out["prefill_ms"] = round((time.perf_counter() - start) * 1000, 1)
        out["prompt_width"] = ids.shape[1]
        nxt = res.logits[:, -1].argmax(-1)
        step_mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
        step_pos = pos[:, -1:] + 1

        # one decode step on a fresh copy each time would copy the cache; time forward on the growing cache instead
        def forward():
            model(
                input_ids=nxt[:, None],
                attention_mask=step_mask,
                position_ids=step_pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )

        out["decode_forward_ms"] = cuda_milliseconds(forward, repeats=5)
        logits = res.logits[:, -1, :]
        uni = torch.rand(args.batch)
        params = ResponseSampling()
        out["sample_next_ms"] = cuda_milliseconds(lambda: sample_next(logits, ids, params, uni))
        toks = [list(range(100, 100 + STOP_WINDOW_TOKENS))] * args.batch
        out["stop_decode_loop_ms"] = cuda_milliseconds(lambda: [tok.decode(t, skip_special_tokens=True) for t in toks])
        out["tolist_sync_ms"] = cuda_milliseconds(lambda: (nxt.tolist(), torch.isin(nxt, nxt[:2]).tolist()))
        print(json.dumps(out), flush=True)
        keep = torch.arange(0, args.batch - 8, device="cuda")
        out["compaction_ms"] = cuda_milliseconds(
            lambda: [(layer.keys[keep], layer.values[keep]) for layer in cache.layers if layer.keys is not None]
        )
        out["uniforms_ms"] = cuda_milliseconds(
            lambda: torch.rand(2000, generator=torch.Generator().manual_seed(1))[torch.arange(256)]
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
