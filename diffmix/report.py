"""The comparison report: `report.md` (with PNGs beside it) and a self-contained `report.html`.

Plots: each skill's learning curve (one line per recipe: the mean over seeds,
a band from the lowest to the highest seed, the threshold as a dashed line),
each recipe's per-source training loss (debiased EMA), and the source
proportions over the steps of each mixture.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from diffmix.pipelines.io import atomic_open  # noqa: E402
from diffmix.training.plots import save_png  # noqa: E402

HOW_TO_READ = """\
**How to read this.** Each skill is a probe on held-out documents of one source
(exact match of the parsed answer unless the name says otherwise). *Steps /
tokens / examples to τ* is where the probe first reached the threshold τ and
held it for k evaluations, interpolated between evaluations, as mean ± standard
deviation over seeds. A run that never got there is **censored**: it is counted,
never averaged in; `≤x` means τ was already held at the first evaluation. *AULC*
is the area under the learning curve over log tokens, on the token span every
run covers (listed in the setup; 1.0 = perfect from the start): it ranks runs
that never cross τ. The
*speed-up* is the baseline's mean steps to τ over the recipe's, with a 95%
bootstrap interval over seeds; `>x` is a lower bound when the baseline never
reached τ (from its last evaluation below τ). Fewer steps can still cost more tokens (scratchpads are long):
compare all three axes.
"""


def _curve_frame(run_dir: Path) -> pl.DataFrame | None:
    path = run_dir / "metrics.parquet"
    return pl.read_parquet(path) if path.is_file() else None


def plot_skill_curves(frame: pl.DataFrame, skill: str, tau: float, path: Path) -> None:
    """Score against steps and against tokens: one line per recipe (mean over seeds, band min..max)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    column = f"probe/{skill}"
    for recipe in dict.fromkeys(frame["recipe"].to_list()):
        curves = []
        for run_dir in frame.filter((pl.col("recipe") == recipe) & (pl.col("status") == "ok"))["run_dir"].to_list():
            metrics = _curve_frame(Path(run_dir))
            if metrics is not None and column in metrics.columns:
                curves.append(metrics.filter(pl.col("kind") == "eval").select("step", "tokens", column).drop_nulls())
        if not curves:
            continue
        joined = (
            pl.concat(curves)
            .group_by("step")
            .agg(pl.col("tokens").mean(), pl.col(column).mean().alias("mean"), pl.col(column).min().alias("lo"), pl.col(column).max().alias("hi"))
            .sort("step")
        )
        label = f"{recipe} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        for ax, axis in zip(axes, ("step", "tokens")):
            x = joined[axis].to_numpy()
            (line,) = ax.plot(x, joined["mean"].to_numpy(), label=label)
            ax.fill_between(x, joined["lo"].to_numpy(), joined["hi"].to_numpy(), color=line.get_color(), alpha=0.2)
    for ax, axis in zip(axes, ("steps", "tokens")):
        ax.axhline(tau, color="grey", linestyle="--", linewidth=1, label=f"τ = {tau}")
        ax.set_xlabel(axis)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(skill)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{skill}: learning curve per recipe")
    _save(fig, path)


def plot_source_losses(frame: pl.DataFrame, path: Path) -> None:
    """Training loss (debiased EMA) per source, one panel per recipe (first seed)."""
    recipes = list(dict.fromkeys(frame.filter(pl.col("status") == "ok")["recipe"].to_list()))
    fig, axes = plt.subplots(1, max(1, len(recipes)), figsize=(4.5 * max(1, len(recipes)), 3.5), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        run_dir = frame.filter((pl.col("recipe") == recipe) & (pl.col("status") == "ok"))["run_dir"][0]
        metrics = _curve_frame(Path(run_dir))
        if metrics is not None:
            train = metrics.filter(pl.col("kind") == "train")
            for column in [c for c in train.columns if c.startswith("loss_ema/")]:
                ax.plot(train["step"].to_numpy(), train[column].to_numpy(), label=column.removeprefix("loss_ema/"))
        ax.set_title(recipe, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (EMA)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_proportions(proportions: dict[str, tuple[list[str], np.ndarray]], path: Path) -> None:
    """Stacked share of each source over the run, one panel per recipe."""
    fig, axes = plt.subplots(1, max(1, len(proportions)), figsize=(4.5 * max(1, len(proportions)), 3), squeeze=False)
    for ax, (recipe, (names, shares)) in zip(axes[0], proportions.items()):
        x = (np.arange(len(shares)) + 0.5) / max(1, len(shares))
        ax.stackplot(x, shares.T, labels=names)
        ax.set_title(recipe, fontsize=9)
        ax.set_xlabel("fraction of the run")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def markdown_table(table: pl.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.iter_rows()]
    return "\n".join([header, rule, *rows])


def html_table(table: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in table.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    out: Path,
    frame: pl.DataFrame,
    tables: dict[str, pl.DataFrame],
    proportions: dict[str, tuple[list[str], np.ndarray]],
    tau: float,
    setup: dict[str, Any],
) -> tuple[Path, Path]:
    """Write the PNGs, `report.md` and a self-contained `report.html`; return the two paths."""
    images: list[tuple[str, str]] = []  # (file name, caption)
    for skill in tables:
        name = f"curve_{skill.replace('/', '_')}.png"
        plot_skill_curves(frame, skill, tau, out / name)
        images.append((name, f"Learning curve: {skill}"))
    plot_source_losses(frame, out / "source_losses.png")
    images.append(("source_losses.png", "Training loss per source"))
    if proportions:
        plot_proportions(proportions, out / "proportions.png")
        images.append(("proportions.png", "Source proportions over the run"))

    failed = frame.filter(pl.col("status") != "ok")
    md = [f"# Recipe comparison: {setup['title']}", ""]
    md += [f"- **{key}**: {value}" for key, value in setup.items() if key != "title"]
    md += ["", HOW_TO_READ]
    for skill, table in tables.items():
        md += [f"## {skill}", "", markdown_table(table), ""]
    if failed.height:
        md += ["## Failed runs", ""]
        md += [f"- `{r['run_id']}`: {r['error']}" for r in failed.select("run_id", "error").to_dicts()]
        md.append("")
    md += ["## Plots", ""] + [f"![{caption}]({name})\n" for name, caption in images]
    md_path = out / "report.md"
    with atomic_open(md_path) as f:
        f.write("\n".join(md).encode())

    parts = [f"<h1>Recipe comparison: {html.escape(setup['title'])}</h1><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in setup.items() if k != "title"]
    parts.append("</ul><p>" + html.escape(HOW_TO_READ.replace("**", "").replace("*", "")) + "</p>")
    for skill, table in tables.items():
        parts.append(f"<h2>{html.escape(skill)}</h2>{html_table(table)}")
    if failed.height:
        parts.append("<h2>Failed runs</h2><ul>")
        parts += [f"<li><code>{html.escape(r['run_id'])}</code>: {html.escape(str(r['error']))}</li>" for r in failed.select("run_id", "error").to_dicts()]
        parts.append("</ul>")
    parts.append("<h2>Plots</h2>")
    for name, caption in images:
        data = base64.b64encode((out / name).read_bytes()).decode()
        parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}"
    page = f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>diffmix comparison</title><style>{style}</style></head><body>{"".join(parts)}</body></html>\n'
    html_path = out / "report.html"
    with atomic_open(html_path) as f:
        f.write(page.encode())
    return md_path, html_path
