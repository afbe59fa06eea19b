"""PNG plots for UI metadata and reports (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 3.2), dpi=100)


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def histogram(series: dict[str, Sequence[float]], xlabel: str, bin_width: float = 5) -> bytes:
    fig, ax = _figure()
    top = max((max(v) for v in series.values() if len(v)), default=1)
    bins = [i * bin_width for i in range(int(top // bin_width) + 2)]
    for label, values in series.items():
        ax.hist(values, bins=bins, alpha=0.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend()
    return _png(fig)


def loss_curve(history: Sequence[dict[str, Any]]) -> bytes:
    fig, ax = _figure()
    ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], label="train")
    val = [h for h in history if "val_loss" in h]
    ax.plot([h["step"] for h in val], [h["val_loss"] for h in val], marker="o", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    return _png(fig)
