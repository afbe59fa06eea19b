from stage1_assets.core import dedup


def test_dedup_exact_and_near_duplicates():
    texts = [
        "Explain why the sky is blue during the day.",
        "explain why the sky is blue during the day!",
        "Explain why the sky is blue during the day time.",
        "List three ways to save water at home.",
        "What is the capital of France?",
        "What is the capital of Spain?",
    ]
    kept, dropped = dedup.deduplicate(texts)
    assert kept == [0, 3, 4, 5]
    assert dropped[1] == (0, "exact")
    assert dropped[2][0] == 0 and dropped[2][1].startswith("near:")
