"""Training metrics: one JSON line per step (the source of truth), TensorBoard scalars, a PNG of the curves.

Example::

    log = MetricsLog("runs/x")
    log.write(step=3, metrics={"success_rate": 0.5, "loss": 0.1})
    log.close(); plot_curves("runs/x/metrics.jsonl", "runs/x/curves.png")
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

# Curves drawn by default, when present.
DEFAULT_KEYS = ("success_rate", "reward_mean", "loss", "clip_fraction", "entropy", "grad_norm",
                "filtered_share", "logprob_mismatch_abs")


class MetricsLog:
    """Append-only JSONL plus TensorBoard (skipped with a note if tensorboard is not installed)."""

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._file = open(self.path, "a")  # noqa: SIM115 - appended to at every step until close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - depends on the environment
                print("tensorboard not installed (pip install 'lightswe[viz]'); metrics go to JSONL only")
            else:
                self._tb = SummaryWriter(str(self.dir / "tb"))

    def write(self, *, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(jsonl: str | Path, png: str | Path, keys: tuple[str, ...] = DEFAULT_KEYS,
                title: str = "lightswe training") -> Path:
    """One small panel per metric against the step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(jsonl)
    present = [k for k in keys if any(r.get(k) is not None for r in rows)]
    if not present:
        raise ValueError(f"{jsonl}: none of {keys} was logged; nothing to plot")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
