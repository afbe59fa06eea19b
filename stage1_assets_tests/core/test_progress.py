"""The progress line of long steps: share done, rate from this process's work only, time left."""

import re

from stage1_assets.core.progress import Progress


def test_progress_counts_resumed_work_as_done_but_times_only_new_work():
    progress = Progress(total=100, unit="pairs", already_done=50)
    line = progress.advance(25, tokens=500)
    assert line.startswith("75/100 pairs (75%)")
    assert "tokens/s" in line
    # 25 units took the elapsed time so far; 25 left take about as long again
    rate_line = re.search(r"~([\d,]+) s left", line)
    assert rate_line is not None


def test_progress_without_tokens_or_rate_says_so():
    progress = Progress(total=10, unit="steps")
    assert progress.advance(0) == "0/10 steps (0%), time left unknown"
    assert "tokens/s" not in progress.advance(10)
    assert progress.advance(0).startswith("10/10 steps (100%)")
