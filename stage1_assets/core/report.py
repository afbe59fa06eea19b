"""Small renderers for UI metadata and reports (markdown), free of Dagster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any, max_chars: int) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    # a backslash is escaped too: before a pipe it would otherwise escape the pipe's escape
    text = " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], max_chars: int = 120) -> str:
    if not rows:
        return "_(none)_"
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_cell(r.get(c, ""), max_chars) for c in columns) + " |\n" for r in rows)
    return head + body
