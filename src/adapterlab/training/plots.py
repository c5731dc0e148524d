"""loss.png: train and validation loss against the step, with the base model's validation loss for scale."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_loss(records: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        return [s for s, _ in points], [v for _, v in points]

    train_x, train_y = series("loss")
    val_x, val_y = series("eval_loss")
    _, base_y = series("base_loss")
    if not train_x and not val_x:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train_x:
        ax.plot(train_x, train_y, label="train loss", color="#4C72B0", linewidth=1.5)
    if val_x:
        ax.plot(val_x, val_y, label="val loss (adapter)", color="#DD8452", marker="o", linewidth=1.5)
    if base_y:
        ax.axhline(base_y[0], label=f"val loss (base) {base_y[0]:.3f}", color="#55A868", linestyle="--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
