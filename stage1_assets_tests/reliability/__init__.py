"""Reliability tests, one module per failure class: what goes wrong, and what must hold when it does.

- bad input (`test_bad_input`): a malformed file, run config or model is refused with a clear error
  before any expensive work, and nothing is written;
- crash safety (`test_crash_safety`): a process killed mid-shard, mid-merge or mid-training leaves
  nothing half-written that looks complete, and re-materializing resumes;
- concurrency (`test_concurrency`, `test_concurrent_pilots`): shard runs and pilots at once, with a
  reader querying provenance, lose nothing and never collide;
- dead runs (`test_dead_runs`): a run whose process died is marked failed and its partition runs again;
- disk and memory (`test_disk_and_memory`): generation backs off on out-of-memory or a memory ceiling,
  and a full disk fails cleanly;
- idempotence (`test_idempotence`): unchanged inputs give the same content hash, a changed one a new artifact;
- parameter change (`test_parameter_change`): a finished shard is never silently replaced by other parameters;
- write order (`test_write_order`): outputs become visible only together with their provenance record;
- artifact verification (`test_artifact_verification`): what an asset reads is checked against what its
  producer wrote.

`support.py` holds their helpers (synthetic shards, a reader that never trusts a file, Dagster runs in
subprocesses); `conftest.py` the session fixtures several of them share.
"""
