"""What a run leaves to read: CSV logs (no TensorBoard), a PNG curve, a progress bar.

- ``train_log.csv``: one row every ``log_every`` steps — step, epoch, lr, mean loss since
  the last row, samples/s, density of the prunable weights.
- ``eval_log.csv``: one row per epoch — the evaluation metrics of the held-out split.
- ``curves.png``: training loss and held-out accuracy against the step.

A resumed run first drops the rows logged after the checkpoint it resumes from, so no
step appears twice in the logs of a killed-and-resumed run.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..io import atomic_write, atomic_write_text

TRAIN_FIELDS = ("step", "epoch", "lr", "loss", "samples_per_s", "density")
EVAL_FIELDS = ("step", "epoch", "loss", "top1", "top5", "accuracy", "f1", "density")


class CsvLog:
    """Appends rows to ``path``; ``resume_step`` keeps only rows with step ≤ it.

    ``fields=None`` (an evaluator hook's metrics, unknown before it runs): the columns are
    those of the rows kept from a resumed run, else the keys of the first row written.
    """

    def __init__(self, path: Path, fields: tuple[str, ...] | None,
                 resume_step: int | None = None):
        self.path = path
        rows, header = [], None
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, header = list(reader), reader.fieldnames
        rows = [r for r in rows if int(r["step"]) <= (resume_step or 0)]
        self.fields = fields or (tuple(header) if header and rows else None)
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        if self.fields is None:
            atomic_write_text(self.path, "")
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def read(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def write(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = tuple(row)
            self._rewrite([])
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def plot_curves(train_csv: Path, eval_csv: Path, out: Path, title: str,
                key: str | None = None) -> Path | None:
    """Loss and a held-out metric (``key``; default top-1 or accuracy) against the step, as
    a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = list(csv.DictReader(open(train_csv, newline=""))) if train_csv.is_file() else []
    evals = list(csv.DictReader(open(eval_csv, newline=""))) if eval_csv.is_file() else []
    if not train and not evals:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot([int(r["step"]) for r in train], [float(r["loss"]) for r in train], lw=1)
    ax1.set(xlabel="step", ylabel="training loss", yscale="log")
    key = key or ("top1" if evals and evals[0].get("top1") else "accuracy")
    pts = [(int(r["step"]), float(r[key])) for r in evals if r.get(key)]
    if pts:
        ax2.plot(*zip(*pts, strict=True), marker="o", lw=1)
    ax2.set(xlabel="step", ylabel=f"held-out {key}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return out


class ProgressBar:
    """A rich bar over the run's steps showing epoch, loss and throughput (rank 0 only)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                            TextColumn("{task.fields[speed]} samples/s"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True),
                            disable=not enabled)
        self.task = self.bar.add_task("train", total=total, completed=done, epoch=0,
                                      loss="-", speed="-")
        self.console = self.bar.console

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def update(self, step: int, epoch: int, loss: float, speed: float) -> None:
        self.bar.update(self.task, completed=step, epoch=epoch, loss=f"{loss:.4f}",
                        speed=f"{speed:,.0f}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)


class Throughput:
    """Samples per second over the steps since the last reading."""

    def __init__(self) -> None:
        self.t0, self.samples = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.samples += n

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.t0, 1e-9)
        self.t0, self.samples = now, 0
        return rate
