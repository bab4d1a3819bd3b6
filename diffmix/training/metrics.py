"""Skill-acquisition metrics: pure functions over learning curves.

* **Speed to threshold**: the first eval from which a skill's score stays
  >= tau for k consecutive evals, with the crossing interpolated linearly
  between that eval and the one before it, read on any axis (steps, tokens,
  unique examples). Never reached: `censored`, and no number.
* **AULC**: area under score vs log10(tokens), normalised by the log-token
  range, so it lies in [0, 1] and ranks runs that never cross the threshold.
* **Debiased EMA** (TensorBoard's smoothing): s_t = b*s_{t-1} + (1-b)*x_t,
  reported as s_t / (1 - b^n) after n observations.
* **Plateaus** of the EMA loss with `ReduceLROnPlateau` semantics, and the drops
  between them (the training landmarks of DESIGN.md).
* **Epoch-boundary memorisation gap**: the train-loss step at each epoch start
  against the held-out loss change over the same stretch.
* **Effective parameters**: Kaplan et al. 2020's L(N) = (N_c / N)^alpha_N
  inverted on the (EMA, never single-batch) loss, with a floor clamp.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import polars as pl


@dataclass(frozen=True, slots=True)
class Crossing:
    """Where a curve crossed tau for good: between evals `index - 1` and `index`."""

    index: int | None  # None: censored (never held for k evals)
    fraction: float  # 0..1 of the way from eval index-1 to eval index (1.0 at index 0)

    @property
    def censored(self) -> bool:
        return self.index is None

    def at(self, axis: np.ndarray) -> float | None:
        """The crossing read on an axis sampled at the evals (steps, tokens, ...)."""
        if self.index is None:
            return None
        if self.index == 0:
            return float(axis[0])
        lo, hi = float(axis[self.index - 1]), float(axis[self.index])
        return lo + self.fraction * (hi - lo)


def threshold_crossing(scores: np.ndarray, tau: float, k: int) -> Crossing:
    """First eval i with scores[i : i + k] all >= tau (k evals must exist), interpolated back to tau.

    NaN scores count as below tau. A run that ends less than k evals after its
    last upward crossing is censored: the hold was never confirmed.
    """
    y = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    above = y >= tau
    if len(above) < k:
        return Crossing(None, 0.0)
    # held[i]: evals i .. i+k-1 are all above tau.
    held = np.lib.stride_tricks.sliding_window_view(above, k).all(axis=1)
    hits = np.flatnonzero(held)
    if len(hits) == 0:
        return Crossing(None, 0.0)
    i = int(hits[0])
    if i == 0:
        return Crossing(0, 1.0)
    lo, hi = y[i - 1], y[i]
    fraction = 1.0 if not np.isfinite(lo) or hi == lo else float((tau - lo) / (hi - lo))
    return Crossing(i, min(1.0, max(0.0, fraction)))


def skill_speed(axes: dict[str, np.ndarray], scores: np.ndarray, tau: float, k: int) -> dict[str, Any]:
    """Steps / tokens / examples (any axes given) to tau held for k evals; `censored` when never.

    Censored: `{axis}_lower_bound` is where the last eval below tau stood (any later crossing
    lies past it; the run length would overstate it when the last evals were already above).
    `left_censored`: the first eval already held tau, so the value is an upper bound.
    """
    crossing = threshold_crossing(scores, tau, k)
    out: dict[str, Any] = {name: crossing.at(values) for name, values in axes.items()}
    out["censored"] = crossing.censored
    out["crossing_eval"] = crossing.index
    out["left_censored"] = crossing.index == 0
    if crossing.censored and len(scores):
        below = np.flatnonzero(~(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf) >= tau))
        last_below = int(below[-1]) if len(below) else 0
        for name, values in axes.items():
            out[f"{name}_lower_bound"] = float(values[last_below])
    return out


def aulc(tokens: np.ndarray, scores: np.ndarray, span: tuple[float, float] | None = None) -> float | None:
    """Trapezoid area of score over log10(tokens), divided by the log10 width: 1.0 is perfect throughout.

    `span` (lo, hi) in tokens integrates over that range (scores interpolated at its ends), so that
    runs of different lengths and token costs compare on the same axis (`compare` passes the range
    every run covers); None if the run does not cover it. Without it: the run's own evals (tokens > 0).
    """
    x = np.asarray(tokens, dtype=np.float64)
    y = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    keep = x > 0
    x, y = np.log10(x[keep]), y[keep]
    if len(x) < 2 or x[-1] <= x[0]:
        return None
    if span is None:
        return float(np.trapezoid(y, x) / (x[-1] - x[0]))
    lo, hi = np.log10(span[0]), np.log10(span[1])
    if not (x[0] <= lo < hi <= x[-1]):
        return None
    grid = np.concatenate([[lo], x[(x > lo) & (x < hi)], [hi]])
    return float(np.trapezoid(np.interp(grid, x, y), grid) / (hi - lo))


def debiased_ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected EMA; NaN inputs (a source absent from a batch) are skipped and carry the last value.

    Positions before the first observation are NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.full(len(x), np.nan)
    s, n = 0.0, 0
    for t, value in enumerate(x):  # a recurrence: inherently sequential
        if not math.isnan(value):
            s = beta * s + (1.0 - beta) * value
            n += 1
        if n:
            out[t] = s / (1.0 - beta**n)
    return out


@dataclass(frozen=True, slots=True)
class Plateau:
    start_step: int  # the step of the best value the plateau could not beat
    end_step: int  # the last step before the next improvement (or the end of the run)
    start_loss: float
    end_loss: float
    mean_loss: float
    open: bool  # still on it when the run ended


def find_plateaus(
    steps: np.ndarray,
    values: np.ndarray,
    threshold: float = 0.02,
    mode: Literal["rel", "abs"] = "rel",
    patience: int = 200,
) -> list[Plateau]:
    """Stretches of at least `patience` steps in which `values` never improved on its best.

    Improvement follows `torch.optim.lr_scheduler.ReduceLROnPlateau` (mode
    "min"): x < best * (1 - threshold) for "rel", x < best - threshold for
    "abs". NaN values are ignored.
    """
    s = np.asarray(steps)
    v = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(v))
    if len(finite) == 0:
        return []
    s, v = s[finite], v[finite]
    plateaus: list[Plateau] = []
    best, best_i = math.inf, 0

    def close(end: int, is_open: bool) -> None:
        if int(s[end]) - int(s[best_i]) >= patience:
            seg = v[best_i : end + 1]
            plateaus.append(
                Plateau(int(s[best_i]), int(s[end]), float(v[best_i]), float(v[end]), float(seg.mean()), is_open)
            )

    for i, x in enumerate(v):  # ReduceLROnPlateau's best/num_bad bookkeeping, one value at a time
        better = x < best * (1.0 - threshold) if mode == "rel" else x < best - threshold
        if best == math.inf or better:
            if i > 0:
                close(i - 1, False)
            best, best_i = x, i
    close(len(v) - 1, True)
    return plateaus


def merge_plateaus(plateaus: list[Plateau], min_drop: float) -> list[Plateau]:
    """Consecutive plateaus whose mean levels differ by less than `min_drop` are one plateau:
    a landmark is a drop of at least that much (noise or a slow power-law tail is not)."""
    merged: list[Plateau] = []
    for plateau in plateaus:
        last = merged[-1] if merged else None
        if last is not None and last.mean_loss - plateau.mean_loss < min_drop:
            a, b = last.end_step - last.start_step + 1, plateau.end_step - plateau.start_step + 1
            mean = (last.mean_loss * a + plateau.mean_loss * b) / (a + b)  # by the steps each covered
            merged[-1] = Plateau(last.start_step, plateau.end_step, last.start_loss, plateau.end_loss, mean, plateau.open)
        else:
            merged.append(plateau)
    return merged


def plateau_drops(plateaus: list[Plateau]) -> list[dict[str, float | int]]:
    """The drop between consecutive plateaus: mean level before minus mean level after."""
    return [
        {
            "from_step": a.end_step,
            "to_step": b.start_step,
            "from_loss": a.mean_loss,
            "to_loss": b.mean_loss,
            "drop": a.mean_loss - b.mean_loss,
        }
        for a, b in zip(plateaus, plateaus[1:])
    ]


def epoch_boundary_gaps(
    steps: np.ndarray,
    epochs: np.ndarray,
    train_loss: np.ndarray,
    eval_steps: np.ndarray,
    eval_loss: np.ndarray,
    window: int = 50,
) -> list[dict[str, Any]]:
    """Train-loss step at each epoch start against the held-out loss change over the same stretch.

    A boundary is the first step whose epoch number (integer part of `epochs`)
    is higher than the step before. `val_change` = held-out loss at the first
    eval at or after `window` steps past the boundary minus at the last eval
    before it (positive: worse). `train_step` = mean train loss over the
    `window` steps up to that later eval minus the mean over the `window` steps
    up to the earlier one (negative: a drop): both span the same stretch, so a
    trend they share cancels. `gap = val_change - train_step` is positive when
    training loss fell more than held-out loss did: the memorisation signature.
    Without an eval on both sides, `train_step` compares the `window` steps on
    either side of the boundary and there is no gap.
    """
    s = np.asarray(steps)
    e = np.floor(np.asarray(epochs, dtype=np.float64)).astype(np.int64)
    loss = np.asarray(train_loss, dtype=np.float64)
    es, el = np.asarray(eval_steps), np.asarray(eval_loss, dtype=np.float64)
    out: list[dict[str, Any]] = []
    for j in np.flatnonzero(np.diff(e) > 0) + 1:
        before, after = loss[max(0, j - window) : j], loss[j : j + window]
        if len(before) == 0 or len(after) == 0:
            continue
        boundary = int(s[j])
        end = int(s[min(j + window, len(s)) - 1])
        pre = np.flatnonzero((es < boundary) & np.isfinite(el))
        post = np.flatnonzero((es >= end) & np.isfinite(el))
        val_change = float(el[post[0]] - el[pre[-1]]) if len(pre) and len(post) else None
        if val_change is not None:  # the train windows that end at the two evals
            j_pre, j_post = (int(np.searchsorted(s, es[i], side="right")) for i in (pre[-1], post[0]))
            before, after = loss[max(0, j_pre - window) : j_pre], loss[max(j, j_post - window) : j_post]
        train_step = float(np.nanmean(after) - np.nanmean(before))
        out.append(
            {
                "epoch": int(e[j]),
                "step": boundary,
                "train_step": train_step,
                "val_change": val_change,
                "gap": None if val_change is None else val_change - train_step,
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class EffectiveParams:
    ema_loss: float
    loss_used: float  # after the floor clamp
    clamped: bool
    effective_params: float
    alpha_n: float
    n_c: float
    loss_floor: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def effective_params(ema_loss: float, alpha_n: float = 0.076, n_c: float = 8.8e13, loss_floor: float = 1.0) -> EffectiveParams:
    """Invert L(N) = (N_c / N)^alpha_N: N = N_c / L^(1/alpha_N), with L clamped to >= `loss_floor`.

    Feed it a smoothed loss (the debiased EMA): a single batch can dip below
    anything the law allows. The constants are Kaplan et al.'s, in nats per
    token of their tokenizer: across tokenizers the number is only indicative.
    """
    if not math.isfinite(ema_loss) or ema_loss <= 0:
        raise ValueError(f"ema_loss must be a positive number, got {ema_loss}")
    used = max(ema_loss, loss_floor)
    return EffectiveParams(
        ema_loss=float(ema_loss),
        loss_used=float(used),
        clamped=used != ema_loss,
        effective_params=float(n_c / used ** (1.0 / alpha_n)),
        alpha_n=alpha_n,
        n_c=n_c,
        loss_floor=loss_floor,
    )


# --- a run's metric frame and summary ---------------------------------------------------

KAPLAN_NOTE = (
    "Kaplan et al. 2020 L(N) = (N_c/N)^alpha_N inverted on the final debiased EMA of the training loss; "
    "their constants are in nats per token of their BPE tokenizer and web text, so across tokenizers and "
    "tasks the estimate is only indicative (compare runs that share a tokenizer)."
)


def metrics_frame(rows: list[dict[str, Any]], evals: list[dict[str, Any]], ema_beta: float) -> pl.DataFrame:
    """One row per step (`kind` "train", with debiased EMA losses) and per eval (`kind` "eval")."""
    train = _frame(rows).with_columns(pl.lit("train").alias("kind"))
    for column in [c for c in train.columns if c == "loss" or c.startswith("loss/")]:
        name = column.replace("loss", "loss_ema", 1)
        train = train.with_columns(pl.Series(name, debiased_ema(train[column].to_numpy(), ema_beta)))
    frames = [train]
    if evals:
        frames.append(_frame(evals).with_columns(pl.lit("eval").alias("kind")))
    frame = pl.concat(frames, how="diagonal_relaxed")
    frame = frame.sort(["step", "kind"], descending=[False, True], maintain_order=True)
    return frame.select("step", "kind", pl.exclude("step", "kind"))


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pl.DataFrame({name: [row.get(name) for row in rows] for name in names}, strict=False, nan_to_null=False)


def summarize(frame: pl.DataFrame, skills: Any) -> dict[str, Any]:
    """Skill speeds, AULC, final scores, plateaus, epoch-boundary gaps and N_eff from a metric frame.

    `skills` is a `SkillConfig` (tau, k, ema_beta, plateau_*, epoch_window, kaplan_*).
    """
    train = frame.filter(pl.col("kind") == "train")
    evals = frame.filter(pl.col("kind") == "eval")
    axis_names = {"steps": "step", "tokens": "tokens", "examples": "examples", "unique_examples": "unique_examples"}
    axes = {name: evals[column].to_numpy() for name, column in axis_names.items()}
    out_skills: dict[str, Any] = {}
    for column in [c for c in evals.columns if c.startswith("probe/")]:
        scores = evals[column].cast(pl.Float64).fill_null(np.nan).to_numpy()
        entry = skill_speed(axes, scores, skills.tau, skills.k)
        finite = scores[np.isfinite(scores)]
        entry["aulc"] = aulc(axes["tokens"], scores)
        entry["final"] = float(scores[-1]) if len(scores) and np.isfinite(scores[-1]) else None
        entry["best"] = float(finite.max()) if len(finite) else None
        out_skills[column.removeprefix("probe/")] = entry
    heldout_columns = [c for c in evals.columns if c.startswith("heldout_loss/")]
    heldout = {c.removeprefix("heldout_loss/"): _last(evals[c]) for c in heldout_columns}

    steps = train["step"].to_numpy()
    ema = train["loss_ema"].to_numpy()
    plateaus = find_plateaus(steps, ema, skills.plateau_threshold, skills.plateau_threshold_mode, skills.plateau_patience)
    plateaus = merge_plateaus(plateaus, skills.plateau_min_drop)
    if heldout_columns and len(evals):
        eval_loss = evals.select(pl.mean_horizontal(heldout_columns)).to_series().cast(pl.Float64).fill_null(np.nan).to_numpy()
    else:
        eval_loss = np.full(len(evals), np.nan)
    gaps = epoch_boundary_gaps(steps, train["epoch"].to_numpy(), train["loss"].to_numpy(), evals["step"].to_numpy(), eval_loss, skills.epoch_window)
    final_ema = _last(train["loss_ema"])
    eff = (
        effective_params(final_ema, skills.kaplan_alpha_n, skills.kaplan_n_c, skills.kaplan_loss_floor).to_dict()
        if final_ema is not None and final_ema > 0
        else None
    )
    if eff is not None:
        eff["note"] = KAPLAN_NOTE
    last = train.tail(1).to_dicts()[0] if len(train) else {}
    return {
        "threshold": {"tau": skills.tau, "k": skills.k},
        "skills": out_skills,
        "heldout_loss": heldout,
        "final_loss_ema": final_ema,
        "final_loss_ema_by_source": {c.removeprefix("loss_ema/"): _last(train[c]) for c in train.columns if c.startswith("loss_ema/")},
        "tokens": last.get("tokens"),
        "examples": last.get("examples"),
        "unique_examples": last.get("unique_examples"),
        "plateau_detection": {
            "on": "loss_ema",
            "threshold": skills.plateau_threshold,
            "threshold_mode": skills.plateau_threshold_mode,
            "patience_steps": skills.plateau_patience,
            "min_drop": skills.plateau_min_drop,
        },
        "plateaus": [asdict(p) for p in plateaus],
        "plateau_drops": plateau_drops(plateaus),
        "epoch_boundaries": gaps,
        "epoch_gap_mean": _mean_gaps(gaps),
        "effective_params": eff,
    }


def _mean_gaps(gaps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Means over the epoch boundaries that have a held-out measurement on both sides."""
    measured = [g for g in gaps if g["gap"] is not None]
    if not measured:
        return None
    return {
        "boundaries": len(measured),
        "train_step": float(np.mean([g["train_step"] for g in measured])),
        "val_change": float(np.mean([g["val_change"] for g in measured])),
        "gap": float(np.mean([g["gap"] for g in measured])),
    }


def _last(series: pl.Series) -> float | None:
    values = series.cast(pl.Float64).fill_null(np.nan).to_numpy()
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else None
