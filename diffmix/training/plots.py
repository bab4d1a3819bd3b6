"""PNG learning curves of a run (matplotlib, Agg backend, no display needed).

* `loss.png`: training loss per step (faint), its debiased EMA (bold), the EMA
  per source, held-out loss per source at each eval, EMA plateaus shaded and
  epoch starts dashed;
* `skills.png`: every probe score against steps, with the threshold tau and
  the (interpolated) crossing marked, or "censored" in the title.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from diffmix.pipelines.io import atomic_open  # noqa: E402


def save_png(fig: plt.Figure, path: Path, dpi: int = 100) -> None:
    """Write and close a figure; the PNG's bytes depend on the figure alone (no matplotlib
    version in its metadata), and the file appears whole or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())


def plot_loss(frame: pl.DataFrame, summary: dict[str, Any], path: Path) -> None:
    train = frame.filter(pl.col("kind") == "train")
    evals = frame.filter(pl.col("kind") == "eval")
    fig, ax = plt.subplots(figsize=(9, 5))
    steps = train["step"].to_numpy()
    ax.plot(steps, train["loss"].to_numpy(), color="tab:gray", alpha=0.3, lw=0.8, label="train loss")
    ax.plot(steps, train["loss_ema"].to_numpy(), color="black", lw=2, label="train loss (debiased EMA)")
    for i, column in enumerate(c for c in train.columns if c.startswith("loss_ema/")):
        ax.plot(steps, train[column].to_numpy(), lw=1, color=f"C{i}", label=column.removeprefix("loss_ema/") + " (EMA)")
        held = f"heldout_loss/{column.removeprefix('loss_ema/')}"
        if held in evals.columns:
            ax.plot(evals["step"].to_numpy(), evals[held].to_numpy(), "o--", ms=3, lw=0.8, color=f"C{i}", label=held)
    for j, plateau in enumerate(summary.get("plateaus", [])):
        ax.axvspan(plateau["start_step"], plateau["end_step"], color="tab:orange", alpha=0.15, label="EMA plateau" if j == 0 else None)
    boundaries = summary.get("epoch_boundaries", [])
    for j, boundary in enumerate(boundaries if len(boundaries) <= 40 else []):  # more would hide the curves
        ax.axvline(boundary["step"], color="tab:purple", ls=":", lw=1, label="epoch start" if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    if (train["loss"] > 0).any():  # a run without target tokens has only zero losses: no log axis
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    save_png(fig, path)


def plot_skills(frame: pl.DataFrame, summary: dict[str, Any], tau: float, path: Path) -> None:
    evals = frame.filter(pl.col("kind") == "eval")
    skills = summary.get("skills", {})
    names = sorted(skills)
    if not names:
        return
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        entry = skills[name]
        ax.plot(evals["step"].to_numpy(), evals[f"probe/{name}"].to_numpy(), "o-", ms=3)
        ax.axhline(tau, color="tab:red", ls="--", lw=1)
        if entry["censored"]:
            ax.set_title(f"{name}\n(censored: not held >= {tau})", fontsize=8)
        else:
            ax.axvline(entry["steps"], color="tab:green", lw=1)
            ax.plot([entry["steps"]], [tau], "*", color="tab:green", ms=10)
            ax.set_title(f"{name}\n{tau} at step {entry['steps']:.0f}", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    save_png(fig, path)


def plot_run(frame: pl.DataFrame, summary: dict[str, Any], tau: float, run: Path) -> None:
    plot_loss(frame, summary, run / "loss.png")
    plot_skills(frame, summary, tau, run / "skills.png")
