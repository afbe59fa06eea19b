"""One progress line for long steps (a shard, training): how far, how fast, how long still to go."""

from __future__ import annotations

import time


class Progress:
    """Counts work done in this process; work resumed from an earlier attempt counts as done, not timed."""

    def __init__(self, total: int, unit: str, already_done: int = 0) -> None:
        self.total, self.unit, self.done = total, unit, already_done
        self.advanced, self.tokens = 0, 0
        self.started = time.perf_counter()

    def advance(self, units: int, tokens: int = 0) -> str:
        """Record `units` more done (and the tokens they took); returns the progress line."""
        self.done += units
        self.advanced += units
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.advanced / elapsed
        speed = f", {self.tokens / elapsed:,.0f} tokens/s" if self.tokens else ""
        left = f"~{(self.total - self.done) / rate:,.0f} s left" if rate > 0 else "time left unknown"
        share = 100 * self.done / max(self.total, 1)
        return f"{self.done:,}/{self.total:,} {self.unit} ({share:.0f}%){speed}, {left}"
