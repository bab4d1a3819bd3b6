"""Compare mixture recipes: which recipe teaches each skill fastest, with honest spreads.

Plain functions the `compare_recipes` flow composes:

    plan_comparison   recipes x seeds -> runs; each recipe's mixture cached by its hash
    comparison_frame  one row per run: recipe, weights and schedule, seed, model, every summary metric
    skill_table       per skill and recipe: mean +- spread over seeds of steps / tokens / examples
                      to threshold, AULC, final score, and the speed-up against the baseline

A run that never reached the threshold is *censored*: it is shown as such and
never enters a mean. When every seed of the baseline is censored but a recipe
reached the threshold, the speed-up is a lower bound (`>x`), not a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from diffmix.errors import DiffmixError
from diffmix.mixers.recipe import Recipe, load_recipe
from diffmix.pipelines.io import check_output_dir, foreign_entries, read_json, sha256_file, sha256_json, write_parquet_frame
from diffmix.pipelines.shards import MANIFEST

AXES = ("steps", "tokens", "examples", "unique_examples")
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class RunSpec:
    recipe: str  # recipe name (unique within a comparison)
    recipe_path: str
    recipe_key: str  # hash of the resolved recipe and its sources' manifests
    seed: int
    mixture_dir: str
    run_dir: str

    @property
    def run_id(self) -> str:
        return f"{self.recipe}-s{self.seed}"


def recipe_key(recipe: Recipe) -> str:
    """Hash of a recipe's content and of the manifests of the datasets it reads."""
    body = recipe.model_dump(mode="json")
    manifests = []
    for source in recipe.sources:
        path = recipe.source_path(source) / MANIFEST
        manifests.append(sha256_file(path) if path.is_file() else f"missing:{path}")
    return sha256_json({"recipe": body, "manifests": manifests})


def plan_comparison(
    recipe_paths: list[str], out: str | Path, seeds: int, baseline: str | None = None, train_digest: str = "", first_seed: int = 0
) -> tuple[list[Recipe], list[RunSpec]]:
    """Load every recipe (failing in one line on the first bad one, or on a `baseline` that
    is none of them) and lay out the runs: seeds `first_seed` (the training config's) onwards.

    A run's directory is named by its recipe's key and the training config's digest
    (`train_digest`), as a mixture's is by its recipe's key: a rerun after an edit to a
    recipe, a source or the training config trains anew beside the old runs instead of
    reusing or colliding with them; an unchanged rerun reuses its finished runs.
    """
    if not recipe_paths:
        raise DiffmixError("compare needs at least one recipe")
    if seeds < 1:
        raise DiffmixError(f"--seeds must be at least 1, got {seeds}")
    recipes = [load_recipe(path) for path in recipe_paths]
    names = [r.name for r in recipes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DiffmixError(f"recipe names must differ within a comparison: {', '.join(duplicates)}")
    if baseline is not None and baseline not in names:
        raise DiffmixError(f"--baseline {baseline!r} is not one of the recipes ({', '.join(names)})")
    root = Path(out)
    check_output_dir(root)
    if foreign := foreign_entries(root, _is_comparison_file):
        raise DiffmixError(f"{root}: not empty and not a diffmix comparison ({', '.join(foreign[:5])}); use another --out")
    runs = []
    for path, recipe in zip(recipe_paths, recipes):
        key = recipe_key(recipe)
        mixture = root / "mixtures" / f"{recipe.name}-{key[:12]}"
        for seed in range(first_seed, first_seed + seeds):
            run_key = sha256_json({"recipe": key, "train": train_digest})[:12]
            runs.append(RunSpec(recipe.name, str(path), key, seed, str(mixture), str(root / "runs" / f"{recipe.name}-{run_key}-s{seed}")))
    return recipes, runs


def _is_comparison_file(path: Path) -> bool:
    """What a comparison writes into its folder (its mixtures and runs, the tables, the report)."""
    if path.is_dir():
        return path.name in ("mixtures", "runs")
    return path.name in ("comparison.parquet", "report.md", "report.html") or path.suffix == ".png"


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def run_row(run: RunSpec, recipe: Recipe, status: str, error: str | None = None) -> dict[str, Any]:
    """One comparison row: what was run, and every metric of its summary.json (if it finished)."""
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "recipe": run.recipe,
        "recipe_path": run.recipe_path,
        "recipe_key": run.recipe_key,
        "schedule": json.dumps(recipe.model_dump(mode="json")["schedule"], sort_keys=True),
        "sources": json.dumps([s.name for s in recipe.sources]),
        "seed": run.seed,
        "status": status,
        "error": error,
        "run_dir": run.run_dir,
    }
    summary_path = Path(run.run_dir) / "summary.json"
    if status == "ok" and summary_path.is_file():
        summary = read_json(summary_path)
        for skill, entry in summary.get("skills", {}).items():
            for name in (*AXES, "censored", "left_censored", "aulc", "final", "best", "steps_lower_bound", "tokens_lower_bound"):
                row[f"skill/{skill}/{name}"] = entry.get(name)
        row["model"] = json.dumps(summary.get("model", {}), sort_keys=True)
        row["params"] = summary.get("model", {}).get("params")
        for key in ("steps", "tokens", "examples", "unique_examples", "final_loss_ema"):
            row[f"run/{key}"] = summary.get(key)
        for source, loss in summary.get("final_loss_ema_by_source", {}).items():
            row[f"loss_ema/{source}"] = loss
        for source, loss in summary.get("heldout_loss", {}).items():
            row[f"heldout_loss/{source}"] = loss
        eff = summary.get("effective_params") or {}
        row["effective_params"] = eff.get("effective_params")
        row["plateaus"] = len(summary.get("plateaus", []))
    return row


def with_common_aulc(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, tuple[float, float]]]:
    """Each skill's AULC again, on the token span every finished run measuring it covers
    (`skill/S/aulc_common`), and the spans: a run's own AULC spans its own evals, so a run stopped
    early by `stop_when`, or paying more tokens per step, would not compare on the same axis."""
    from diffmix.training.metrics import aulc

    curves: dict[str, pl.DataFrame | None] = {}
    spans: dict[str, tuple[float, float]] = {}
    for skill in skills_of(frame):
        probe, series = f"probe/{skill}", {}
        for row in frame.filter(pl.col("status") == "ok").iter_rows(named=True):
            if row["run_dir"] not in curves:
                path = Path(row["run_dir"]) / "metrics.parquet"
                curves[row["run_dir"]] = pl.read_parquet(path).filter(pl.col("kind") == "eval") if path.is_file() else None
            evals = curves[row["run_dir"]]
            if evals is None or probe not in evals.columns:
                continue
            tokens = evals["tokens"].cast(pl.Float64).to_numpy()
            if np.count_nonzero(tokens > 0) >= 2:
                series[row["run_id"]] = (tokens, evals[probe].cast(pl.Float64).fill_null(np.nan).to_numpy())
        if not series:
            continue
        lo = max(float(t[t > 0][0]) for t, _ in series.values())
        hi = min(float(t[-1]) for t, _ in series.values())
        values = {run: aulc(t, y, (lo, hi)) if hi > lo else None for run, (t, y) in series.items()}
        frame = frame.with_columns(pl.col("run_id").replace_strict(values, default=None, return_dtype=pl.Float64).alias(f"skill/{skill}/aulc_common"))
        if hi > lo:
            spans[skill] = (lo, hi)
    return frame, spans


def comparison_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows of `run_row` -> a frame with one column per metric (missing ones null)."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pl.DataFrame({name: [row.get(name) for row in rows] for name in names}, strict=False)


def skills_of(frame: pl.DataFrame) -> list[str]:
    return sorted({c.removeprefix("skill/").removesuffix("/censored") for c in frame.columns if c.startswith("skill/") and c.endswith("/censored")})


def _mean_spread(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def speedup(baseline: list[float | None], treatment: list[float | None], seed: int = 0) -> dict[str, Any]:
    """Baseline / treatment ratio of the mean steps (or tokens) to threshold, with a seed-bootstrap
    95% interval.

    None entries are censored runs. Censoring is never averaged away: with a
    censored run on either side there is no ratio (kind `censored` or
    `baseline_censored`; `skill_table` turns a fully censored baseline into a
    lower bound from where its runs last stood below the threshold).
    """
    base = [b for b in baseline if b is not None]
    treat = [t for t in treatment if t is not None]
    if len(treat) < len(treatment) or not treat:
        return {"kind": "censored", "text": "n/a (censored)"}
    if len(base) < len(baseline):
        return {"kind": "baseline_censored", "text": "n/a (baseline censored)"}
    ratio = float(np.mean(base) / np.mean(treat))
    if len(base) < 2 or len(treat) < 2:
        return {"kind": "point", "ratio": ratio, "text": f"{ratio:.2f}x (1 seed: no interval)"}
    rng = np.random.default_rng(seed)
    b = rng.choice(np.asarray(base), size=(BOOTSTRAP_SAMPLES, len(base))).mean(axis=1)
    t = rng.choice(np.asarray(treat), size=(BOOTSTRAP_SAMPLES, len(treat))).mean(axis=1)
    lo, hi = np.percentile(b / t, [2.5, 97.5])
    return {"kind": "interval", "ratio": ratio, "low": float(lo), "high": float(hi), "text": f"{ratio:.2f}x [{lo:.2f}, {hi:.2f}]"}


def skill_table(frame: pl.DataFrame, skill: str, baseline: str) -> pl.DataFrame:
    """Per recipe: runs, censored runs, mean +- sd per axis (all runs reached), AULC, final, speed-ups.

    Speed-ups are baseline / recipe on two axes, steps and tokens: a format that
    needs fewer steps can still need more tokens.
    """
    ok = frame.filter(pl.col("status") == "ok")
    col = f"skill/{skill}"
    if f"{col}/censored" not in ok.columns:
        raise DiffmixError(f"no run measured skill {skill!r}")
    base_rows = ok.filter(pl.col("recipe") == baseline)
    rows = []
    recipes = list(dict.fromkeys(frame["recipe"].to_list()))
    for recipe in sorted(recipes, key=lambda r: r != baseline):  # the baseline first
        runs = ok.filter(pl.col("recipe") == recipe)
        failed = frame.filter((pl.col("recipe") == recipe) & (pl.col("status") != "ok")).height
        measured = [c for c in runs[f"{col}/censored"].to_list() if c is not None] if runs.height else []
        censored = int(sum(bool(c) for c in measured))
        row: dict[str, Any] = {"recipe": recipe, "runs": runs.height, "failed": failed, "censored": censored}
        if not runs.height or not measured:  # no finished run, or its sources have no such probe
            missing = "no run" if not runs.height else "not measured"
            rows.append({**row, **{f"{a}_to_tau": missing for a in AXES}, "aulc": "n/a", "final": "n/a", "speedup_steps": "n/a", "speedup_tokens": "n/a"})
            continue
        early = _left_censored(runs, col)
        for axis in AXES:
            values = [v for v in _axis(runs, col, axis) if v is not None]
            text = f"censored ({censored}/{runs.height})" if censored else _pm(values)
            if censored and values:  # the runs that did reach tau are shown, never averaged with the censored
                text += f"; reached: {', '.join(f'{v:,.0f}' for v in values)}"
            if early and not censored:  # held tau at the first eval: no measurement, only an upper bound
                flags = _left_censored_runs(runs, col)
                if all(flags):
                    text = f"≤{max(values):,.0f} (at the first eval)"
                else:  # each run's own value, the bounds marked: no mean of bounds and measurements
                    each = [f"{'≤' if flag else ''}{v:,.0f}" for v, flag in zip(_axis(runs, col, axis), flags) if v is not None]
                    text = f"{', '.join(each)} (≤: at the first eval)"
            row[f"{axis}_to_tau"] = text
        aulc_column = f"{col}/aulc_common" if f"{col}/aulc_common" in runs.columns else f"{col}/aulc"
        for metric, column in (("aulc", aulc_column), ("final", f"{col}/final")):
            values = [v for v in runs[column].to_list() if v is not None]
            row[metric] = _pm(values, digits=3) if values else "n/a"
        for axis, run_length in (("steps", "run/steps"), ("tokens", "run/tokens")):
            row[f"speedup_{axis}"] = "baseline" if recipe == baseline else _speedup_text(base_rows, runs, col, axis, run_length)
        rows.append(row)
    return pl.DataFrame(rows)


def _speedup_text(base_rows: pl.DataFrame, runs: pl.DataFrame, col: str, axis: str, run_length: str) -> str:
    """The speed-up on one axis, or a lower bound from the baseline's run length when it never got there."""
    base, treat = _axis(base_rows, col, axis), _axis(runs, col, axis)
    if not base:
        return "n/a (no baseline run)"
    if f"{col}/censored" not in base_rows.columns or base_rows[f"{col}/censored"].null_count() == base_rows.height:
        return "n/a (the baseline does not measure it)"  # its sources have no such probe: nothing to compare
    if _left_censored(base_rows, col) or _left_censored(runs, col):
        return "n/a (reached by the first eval)"
    result = speedup(base, treat)
    reached = [v for v in treat if v is not None]
    if result["kind"] == "baseline_censored" and all(v is None for v in base) and len(reached) == len(treat):
        # Where each baseline run's last eval below tau stood (older summaries: the run's length).
        bound = f"{col}/{axis}_lower_bound"
        column = bound if bound in base_rows.columns and base_rows[bound].null_count() == 0 else run_length
        lasts = [float(v) for v in base_rows[column].to_list() if v is not None] if column in base_rows.columns else []
        if lasts:
            return f">{min(lasts) / max(reached):.2f}x (baseline censored)"
    return result["text"]


def _left_censored(runs: pl.DataFrame, col: str) -> bool:
    """Some run already held tau at its first eval (its steps to tau are an upper bound)."""
    return any(_left_censored_runs(runs, col))


def _left_censored_runs(runs: pl.DataFrame, col: str) -> list[bool]:
    """Per run: it already held tau at its first eval."""
    name = f"{col}/left_censored"
    return [bool(v) for v in runs[name].to_list()] if name in runs.columns else [False] * runs.height


def _axis(runs: pl.DataFrame, col: str, axis: str) -> list[float | None]:
    name = f"{col}/{axis}"
    if name not in runs.columns or not runs.height:
        return []
    censored = runs[f"{col}/censored"].to_list()
    return [None if c else (float(v) if v is not None else None) for v, c in zip(runs[name].to_list(), censored)]


def _pm(values: list[float], digits: int = 0) -> str:
    """Mean ± sample sd over seeds; a single run is shown as its value (no spread to claim)."""
    mean, sd = _mean_spread(values)
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}" if digits else f"{mean:,.0f}"
    if len(values) == 1:
        return f"{text} (1 seed)"
    return f"{text} ± {sd:.{digits}f}" if digits else f"{text} ± {sd:,.0f}"


def _as_run(rows: list[dict[str, Any]], field: str, default: Any) -> str:
    """A training setting as the runs resolved it (steps and batch size come from each mixture's
    plan unless given), e.g. `60`, or `60–120` when the recipes' mixtures differ."""
    values = set()
    for row in rows:
        recorded = Path(row["run_dir"]) / "config.json"
        if recorded.is_file():
            values.add(read_json(recorded)["config"][field])
    if not values:
        return str(default)
    return str(min(values)) if len(values) == 1 else f"{min(values)}–{max(values)}"


def write_comparison(
    root: Path,
    rows: list[dict[str, Any]],
    baseline: str | None,
    train_config: Any,
    title: str,
    mixture_dirs: dict[str, str],
) -> dict[str, Any]:
    """comparison.parquet, one table per skill, report.md / report.html; a JSON-able summary back."""
    from diffmix import report
    from diffmix.mixers.mixture import source_proportions

    frame, spans = with_common_aulc(comparison_frame(rows))
    write_parquet_frame(root / "comparison.parquet", frame)
    recipes = list(dict.fromkeys(frame["recipe"].to_list()))
    base = baseline or recipes[0]
    if base not in recipes:
        raise DiffmixError(f"--baseline {base!r} is not one of the recipes ({', '.join(recipes)})")
    tables = {skill: skill_table(frame, skill, base) for skill in skills_of(frame)}
    proportions = {}
    for recipe, directory in mixture_dirs.items():
        if (Path(directory) / MANIFEST).is_file():
            proportions[recipe] = source_proportions(directory)
    setup = {
        "title": title,
        "recipes": ", ".join(recipes),
        "baseline": base,
        "seeds per recipe": f"{frame.group_by('recipe').len()['len'].max()} (a seed sets the model's initialisation, dropout and "
        "probe sample; the data order is the recipe's own seed, the same for every run of it)",
        "threshold": f"tau = {train_config.skills.tau}, held for k = {train_config.skills.k} evals",
        "model": f"{train_config.model.n_layer} layers, d={train_config.model.d_model}, {train_config.model.n_head} heads, context {train_config.model.block_size}",
        "training": f"{_as_run(rows, 'steps', train_config.steps)} steps max, batch {_as_run(rows, 'batch_size', train_config.batch_size)}, "
        f"lr {train_config.lr} ({train_config.schedule}), eval every {train_config.eval_interval}",
        "AULC over tokens": "; ".join(f"{skill} {lo:,.0f}–{hi:,.0f}" for skill, (lo, hi) in spans.items()) or "n/a",
    }
    md_path, html_path = report.write_report(root, frame, tables, proportions, train_config.skills.tau, setup)
    return {
        "comparison": str(root / "comparison.parquet"),
        "report_md": str(md_path),
        "report_html": str(html_path),
        "baseline": base,
        "runs": frame.select("run_id", "status", "error").to_dicts(),
        "tables": {skill: table.to_dicts() for skill, table in tables.items()},
    }
