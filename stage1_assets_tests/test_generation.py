import torch

from stage1_assets.core.config import SamplingParams
from stage1_assets.core.generation import Generator, truncate_at_stop

PROMPTS = [
    "The capital of France is",
    "Instruction: List three fruits.\nResponse:",
    "A much longer prompt that needs left padding when it shares a batch with the short ones above, so",
    "1, 2, 3,",
    "Once upon a time",
]


def test_greedy_batched_matches_transformers_generate(tiny_model):
    """Left padding, position ids, the KV cache and row compaction must not change the result."""
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, stop_sequences=["\x00"])
    ours, _ = gen.generate(PROMPTS, params, batch_size=3, seed=0)
    for prompt, completion in zip(PROMPTS, ours, strict=True):
        enc = tiny_model.tokenizer(prompt, return_tensors="pt")
        out = tiny_model.model.generate(**enc, max_new_tokens=12, do_sample=False)
        expected = tiny_model.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert completion.text == expected.strip()


def test_repetition_penalty_matches_transformers(tiny_model):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.3, max_new_tokens=10, stop_sequences=["\x00"])
    [ours], _ = gen.generate(PROMPTS[:1], params, batch_size=1, seed=0)
    enc = tiny_model.tokenizer(PROMPTS[0], return_tensors="pt")
    out = tiny_model.model.generate(**enc, max_new_tokens=10, do_sample=False, repetition_penalty=1.3)
    assert (
        ours.text == tiny_model.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    )


def test_sampling_is_reproducible_and_independent_of_batching(tiny_model):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, stop_sequences=["\x00"])
    a, _ = gen.generate(PROMPTS, params, batch_size=5, seed=7)
    b, _ = gen.generate(PROMPTS, params, batch_size=2, seed=7)
    c, _ = gen.generate(PROMPTS, params, batch_size=5, seed=8)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]


def test_stop_sequences_cut_text_and_set_finish_reason(real_model):
    gen = Generator(real_model.model, real_model.tokenizer)
    prompt = "Instruction: Name a color.\nResponse: Blue.\n\nInstruction: Name a fruit.\nResponse: Apple.\n\n"
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    [completion], _ = gen.generate([prompt + "Instruction: Name an animal.\nResponse:"], params, batch_size=1, seed=0)
    assert completion.finish_reason == "stop"
    assert "Instruction" not in completion.text and completion.text
    assert completion.completion_tokens < 30


def test_length_finish_reason_and_skip_for_resume(tiny_model):
    gen = Generator(tiny_model.model, tiny_model.tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=4, stop_sequences=["\x00"])
    seen = []
    results, stats = gen.generate(PROMPTS, params, batch_size=2, seed=0, skip={1, 3},
                                  on_batch=lambda idx, comps: seen.extend(idx))  # fmt: skip
    assert results[1] is None and results[3] is None
    assert sorted(seen) == [0, 2, 4] and stats.rows == 3
    for r in (results[0], results[2], results[4]):
        assert r.finish_reason in ("length", "eos")
        assert r.completion_tokens <= 4


def test_truncate_at_earliest_stop():
    assert truncate_at_stop("a\nQ: b\nInstruction c", ["\nInstruction", "\nQ:"]) == ("a", True)
    assert truncate_at_stop("plain", ["\nQ:"]) == ("plain", False)


def test_top_p_keeps_only_the_nucleus():
    from stage1_assets.core.generation import sample_next

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    params = SamplingParams(temperature=1.0, top_p=0.5, repetition_penalty=1.0)
    draws = {int(sample_next(logits, torch.zeros((1, 1), dtype=torch.long), params, torch.tensor([u]))) for u in
             torch.linspace(0, 0.999, 50).tolist()}  # fmt: skip
    assert draws == {0}
    params = SamplingParams(temperature=1.0, top_p=0.85, repetition_penalty=1.0)
    draws = {int(sample_next(logits, torch.zeros((1, 1), dtype=torch.long), params, torch.tensor([u]))) for u in
             torch.linspace(0, 0.999, 50).tolist()}  # fmt: skip
    assert draws == {0, 1}
