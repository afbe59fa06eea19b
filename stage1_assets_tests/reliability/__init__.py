"""Issue 8: bad input, crashes and concurrent runs lose nothing and explain themselves.

One module per item: bad input (`test_bad_input`), crash safety (`test_crash_safety`), concurrency
(`test_concurrency`), idempotence (`test_idempotence`), disk and memory (`test_disk_and_memory`).
"""
