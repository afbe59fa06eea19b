"""Issue 8: bad input, crashes and concurrent runs lose nothing and explain themselves.

One module per item: bad input (`test_bad_input`), crash safety (`test_crash_safety`), concurrency
(`test_concurrency`), idempotence (`test_idempotence`), disk and memory (`test_disk_and_memory`).
Integrity through Dagster itself, one module per failure class: runs whose process died
(`test_dead_runs`), artifacts changed after they were written (`test_artifact_verification`),
concurrent pilots (`test_concurrent_pilots`), outputs and provenance published together
(`test_write_order`), a parameter change on a finished shard (`test_parameter_change`).
"""
