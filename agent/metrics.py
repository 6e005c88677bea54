"""Training metrics: one JSON line per step (the source of truth), TensorBoard, optionally Weights & Biases, and a
PNG of the curves.

TensorBoard tags are grouped by where a number comes from (:func:`tag_of`): ``rollout/`` (success, reward,
counts of the step's episodes), ``eval/`` (held-out episodes), ``train/`` (the learner: loss, clip fraction,
entropy, grad norm, lr), ``timing/`` (seconds); the run's settings go to the HParams tab. W&B (the ``wandb``
extra) gets the same tags and the settings as its config; ``WANDB_MODE=offline`` keeps the run on disk under
``out_dir/wandb`` (``wandb sync`` uploads it later).

A run resumed from its checkpoint at step k logs each step once, as an uninterrupted run does: the rows and
TensorBoard events of steps after k, written by the stopped attempt, are dropped (``purge_step``) and logged
again. The W&B run (its id kept in ``out_dir/wandb_id``) is continued under the same id at the step after the
last one its files hold (``lightswe.agent.wandb_files``; W&B steps only increase and a run cannot be rewound, so
a step it holds keeps the stopped attempt's values); steps of metrics.jsonl it lost (a killed process loses what
W&B had not flushed, up to 15 s) are logged to it from there first. A fresh start (no checkpoint) starts a new
W&B run.

Example::

    log = MetricsLog("runs/x", hparams={"learner.lr": 3e-3}, logger=LogConfig(wandb=True))
    log.write(step=3, metrics={"success_rate": 0.5, "loss": 0.1})   # rollout/success_rate, train/loss
    log.close(); plot_curves("runs/x/metrics.jsonl", "runs/x/curves.png")
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lightswe.durable import atomic_file
from lightswe.errors import UserInputError

# Curves drawn by default, when present (flat and duplicate curves are left out, see plot_curves).
DEFAULT_KEYS = ("success_rate", "reward_mean", "loss", "clip_fraction", "entropy", "grad_norm",
                "filtered_share", "logprob_mismatch_abs")
ROLLOUT_KEYS = frozenset({"success_rate", "reward_mean", "submitted", "truncated", "episodes", "runs_failed",
                          "generated_tokens", "filtered_share", "draws", "overlong_penalty"})
# Drawn on one panel: the training and held-out success of the same policy.
OVERLAYS = {"success_rate": "eval_success_rate", "reward_mean": "eval_reward_mean"}


@dataclass(kw_only=True, slots=True)
class LogConfig:
    """Where metrics go besides metrics.jsonl."""

    # TensorBoard event files under OUT/tb (tensorboard --logdir OUT/tb).
    tensorboard: bool = True
    # Also log to Weights & Biases (pip install 'lightswe[wandb]'; WANDB_MODE=offline keeps the run on disk).
    wandb: bool = False
    # W&B project.
    wandb_project: str = "lightswe"
    # W&B run name (default: the name of the run folder).
    wandb_name: str | None = None


def tag_of(key: str) -> str:
    """The grouped TensorBoard / W&B tag of a metric key: ``eval_success_rate`` -> ``eval/success_rate``,
    ``rollout_seconds`` -> ``timing/rollout_seconds``, ``loss`` -> ``train/loss``."""
    if key.endswith("_seconds"):
        return f"timing/{key}"
    if key.startswith("eval_"):
        return f"eval/{key[len('eval_'):]}"
    if key.startswith("warm_start_"):
        return f"warm_start/{key[len('warm_start_'):]}"
    return f"{'rollout' if key in ROLLOUT_KEYS else 'train'}/{key}"


def _hparam_value(value):
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


class MetricsLog:
    """Append-only JSONL plus TensorBoard (skipped with a note if tensorboard is not installed) and W&B.

    ``hparams``: the run's flat settings (``{"learner.lr": 0.003, ...}``), shown in TensorBoard's HParams tab and
    as the W&B config.

    Raises:
        ImportError: ``logger.wandb`` without the wandb package (with the install command).
    """

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, hparams: dict | None = None,
                 logger: LogConfig | None = None, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step. Rows and TensorBoard events of that step and later, logged
        before the stop but after the checkpoint it resumes from, are dropped (the run logs them again), so a
        resumed run's metrics hold each step once, as an uninterrupted run's do; W&B continues its run past the
        last step it holds (module docs). ``purge_step=0``: a fresh start (a new W&B run); None: append."""
        logger = logger or LogConfig(tensorboard=tensorboard)
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if purge_step is not None and self.path.exists():
            self._purge(purge_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - appended to at every step until close()
        self._tb = self._wandb = None
        hparams = {k: _hparam_value(v) for k, v in (hparams or {}).items()}
        if logger.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - depends on the environment
                print("tensorboard not installed (pip install 'lightswe[viz]'); metrics go to JSONL only")
            else:
                self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=purge_step)
                if hparams:
                    self._write_hparams(hparams)
        self._wandb_held = -1  # the last step the W&B run held when this attempt began
        if logger.wandb:
            self._wandb, self._wandb_held = _start_wandb(self.dir, logger, hparams, fresh=purge_step == 0)
            for row in _rows(self.path):  # steps of metrics.jsonl that W&B lost (kept rows: before purge_step)
                if row["step"] > self._wandb_held:
                    self._log_wandb(row["step"], {k: v for k, v in row.items() if k not in ("step", "time")})

    def _purge(self, step: int) -> None:
        """Keep the rows of steps before ``step`` (a torn last line goes too), rewritten atomically."""
        keep = [json.dumps(row) + "\n" for row in _rows(self.path) if row["step"] < step]
        with atomic_file(self.path) as handle:
            handle.writelines(keep)

    def _write_hparams(self, hparams: dict) -> None:
        """Into the same event file as the scalars (``add_hparams`` would make a second run folder)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {"eval/success_rate": 0.0, "rollout/success_rate": 0.0, "train/loss": 0.0}
        for summary in hparams_summary(hparams, metrics):
            self._tb.file_writer.add_summary(summary)

    def write(self, *, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(tag_of(k), v, step)
            self._tb.flush()
        self._log_wandb(step, clean)

    def _log_wandb(self, step: int, metrics: dict) -> None:
        if self._wandb is not None and step > self._wandb_held:  # never a step it holds: no rewind
            self._wandb.log({tag_of(k): v for k, v in metrics.items() if v is not None}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(out: Path, logger: LogConfig, hparams: dict, *, fresh: bool):
    """(the W&B run under ``out/wandb``, the last step its files hold or -1). Its id is kept in ``out/wandb_id``
    so that a resumed run continues it (``fresh``: a new run; the old one's steps were discarded)."""
    try:
        import wandb
    except ImportError as err:
        raise ImportError("--log.wandb needs the wandb package: pip install 'lightswe[wandb]' (or drop "
                          "--log.wandb)") from err
    from lightswe.agent.wandb_files import held_steps

    id_file = out / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() and not fresh else ""
    held = -1
    if run_id:
        try:
            held = max(held_steps(out, run_id), default=-1)
        except Exception as err:  # noqa: BLE001 - a format this reader does not know: W&B drops lower steps itself
            print(f"warning: cannot read the steps of W&B run {run_id} under {out / 'wandb'} ({err!r}); the resumed "
                  "run logs from the checkpoint's next step (W&B ignores steps it already holds, with a warning)")
    run_id = run_id or uuid.uuid4().hex[:8]
    with atomic_file(id_file) as handle:
        handle.write(run_id + "\n")
    run = wandb.init(project=logger.wandb_project, name=logger.wandb_name or out.resolve().name, id=run_id,
                     resume="allow", dir=str(out), config=hparams)
    return run, held


def _rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl that parse and name their step (a torn last line, from a kill, does not)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue
        rows.append(row)
    return rows


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def _flat(points: list[tuple[int, float]]) -> bool:
    return len(points) > 1 and len({round(v, 12) for _, v in points}) == 1


def curve_panels(rows: list[dict], keys: tuple[str, ...]) -> list[list[str]]:
    """The panels worth drawing: one per key (with its held-out twin of :data:`OVERLAYS`), leaving out flat
    curves (one value at every step: nothing to read) and curves equal to an earlier one (with 0/1 rewards the
    mean reward is the success rate)."""
    panels: list[list[str]] = []
    drawn: list[list[tuple[int, float]]] = []
    for key in keys:
        if any(key in panel for panel in panels):
            continue
        group = [k for k in (key, OVERLAYS.get(key)) if k and _series(rows, k)]
        if not group or all(_flat(_series(rows, k)) for k in group) or _series(rows, group[0]) in drawn:
            continue
        drawn.append(_series(rows, group[0]))
        panels.append(group)
    return panels


def plot_curves(jsonl: str | Path, png: str | Path, keys: tuple[str, ...] = DEFAULT_KEYS,
                title: str = "lightswe training") -> Path:
    """One small panel per metric worth drawing (:func:`curve_panels`) against the step; returns the PNG path.

    Raises:
        UserInputError: none of ``keys`` was logged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(jsonl)
    if not any(r.get(k) is not None for r in rows for k in keys):
        raise UserInputError(f"{jsonl}: none of {keys} was logged; nothing to plot")
    panels = curve_panels(rows, keys) or [[next(k for k in keys if any(r.get(k) is not None for r in rows))]]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, group in zip(axes.flat, panels):
        for key in group:
            pts = _series(rows, key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                    label="held-out" if key.startswith("eval_") else "train")
        ax.set_title(group[0] if len(group) == 1 else f"{group[0]} (train, held-out)")
        if len(group) > 1:
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
