from stage1_assets.core.merge import TestSetIndex, cost_summary, merge_shards
from stage1_assets.core.shards import shard_keys, shard_sizes

TESTS = [
    "Describe how the printing press changed the spread of knowledge across Europe in the fifteenth century.",
    "What causes ocean tides?",
]


def pair(i, instruction, response="A fine, specific answer.", accepted=True, score=1.5):
    return {"id": f"shard-000-{i:06d}", "instruction": instruction, "response": response, "accepted": accepted,
            "critic_score": score}  # fmt: skip


def test_partition_keys_and_sizes():
    keys = shard_keys(10)
    assert keys[0] == "shard-000" and keys[-1] == "shard-009" and not any("," in k for k in keys)
    assert shard_sizes(15_000, 10) == [1_500] * 10
    assert sum(shard_sizes(47, 3)) == 47 and shard_sizes(47, 3) == [16, 16, 15]


def test_decontamination_removes_planted_overlaps_and_nothing_else():
    clean = [pair(i, text) for i, text in enumerate([
        "Explain how vaccines train the immune system.",
        "What causes the seasons on Earth?",  # shares words with a test instruction, not a near-duplicate
        "Write a haiku about the printing of newspapers.",
        "List three ways to save money on groceries.",
        "Describe the water cycle in four steps.",
    ])]  # fmt: skip
    planted = [
        # 13-word n-gram of the long test instruction inside a response
        pair(
            10,
            "Tell me about books.",
            "Historians describe how the printing press changed the spread of "
            "knowledge across Europe in the fifteenth century quite a lot.",
        ),  # fmt: skip
        # the whole short test instruction inside an instruction
        pair(11, "Quickly, what causes ocean tides? Keep it short."),
        # near-duplicate of a test instruction
        pair(12, "What causes the ocean tides?"),
    ]
    result = merge_shards(clean + planted, TESTS)
    assert [r["id"] for r in result.kept] == [r["id"] for r in clean]
    removed = {r["id"]: r for r in result.removed}
    assert set(removed) == {p["id"] for p in planted}
    assert all(r["step"] == "test_overlap" for r in removed.values())
    assert "response shares a 13-gram" in removed["shard-000-000010"]["why"]
    assert "contains a whole test instruction" in removed["shard-000-000011"]["why"]
    assert "near-duplicate" in removed["shard-000-000012"]["why"]


def test_merge_drops_rejected_and_duplicates_with_reasons():
    rows = [
        pair(0, "List three uses of vinegar in cleaning."),
        pair(1, "List three uses of vinegar in cleaning!"),
        pair(2, "List three uses of vinegar in the cleaning."),
        pair(3, "Give two tips for sleeping better.", accepted=False, score=0.2),
        pair(4, "Name a prime number larger than ten."),
    ]
    result = merge_shards(rows, TESTS)
    assert [r["id"] for r in result.kept] == ["shard-000-000000", "shard-000-000004"]
    assert result.removed_by_step == {"critic_rejected": 1, "duplicate": 2}
    short_word_test = TestSetIndex(["Name a prime."])
    assert short_word_test.overlap("Please name a prime, any prime.") is not None
    assert short_word_test.overlap("Rename a primer coat of paint.") is None  # whole words only


def test_cost_projection_and_budget_warning():
    cost = cost_summary({"shard-000": 1800.0, "shard-001": 1800.0}, num_shards=10, accepted_pairs=2000,
                        price_per_accelerator_hour=2.0, budget=15.0)  # fmt: skip
    assert cost["spend"] == 2.0 and cost["spend_per_1000_accepted"] == 1.0
    assert cost["projected_total"] == 10.0 and cost["within_budget"]
    over = cost_summary({"shard-000": 3600.0}, num_shards=10, accepted_pairs=100, price_per_accelerator_hour=2.0,
                        budget=15.0)  # fmt: skip
    assert over["projected_total"] == 20.0 and not over["within_budget"]
