"""The blend index: which source's sample sits at each position of the training stream.

A mixture is a stream of positions `0 .. N-1` (position = step * global_batch_size + i).
The index is built in three exact, deterministic steps:

1. **Counts** (`hamilton`). A phase of `L` positions with weights `w` gets integer
   counts by largest-remainder (Hamilton) apportionment: `floor(w_i L)` each, then
   the seats left over to the largest remainders (ties to the earlier source).
   Each count is within one of `w_i L`; they sum to `L`.

2. **Order** (`interleave`). A *run* is a stretch of positions whose cumulative
   target `T_i(P)` (the sum of source `i`'s weight over the first `P` positions of
   the run) starts at zero. Positions are given to sources so that for every
   prefix `P` and every source, the count `c_i(P)` is `floor(T_i(P))` or
   `ceil(T_i(P))`: every prefix is within one sample of the weights,
   `|c_i(P) - T_i(P)| < 1`. A constant phase is one run with `T_i(P) = n_i P / L`
   (so it ends exactly on its Hamilton counts); a linear schedule is one run
   whose weights change every step.

   Megatron's greedy rule (give each position to the source with the largest
   error `w_i P - c_i`) and the sort by ideal position `(k + 1/2) / w_i` can
   both overshoot by more than one sample (three sources are enough for the
   first, four for the second; `tests/mixers/test_blend.py` has
   counterexamples). The rule here is the
   quota method (Balinski & Young 1975; Tijdeman's chairman assignment, 1980, for
   weights that change over time): sample `k` of source `i` is *released* at
   the first position `q` with `k < T_i(q + 1)` (taking it earlier would
   overshoot) and *due* before the first prefix `P` with `T_i(P) >= k + 1`
   (taking it later would fall a whole sample behind). Each position takes the
   released sample that is due first (earliest deadline first, ties to the
   earlier source). Tijdeman proved a sequence within one sample always exists,
   and earliest-deadline-first meets every deadline of unit jobs whenever any
   order does, so the rule never gets stuck (it is checked anyway).

   The windows are exact integer arithmetic (targets in units of `1/denominator`);
   the choice itself is sequential, so it is the one compiled loop here (numba,
   a few nanoseconds per position, like Megatron's C++ helper); all the rest is
   NumPy over arrays.

3. **Rows** (`source_rows`). The `g`-th sample drawn from a source over the whole
   stream is row `perm_e[g mod size]` of its selection, `e = g // size`, where
   `perm_e` is a permutation seeded by (seed, source name, epoch `e`): a fresh
   shuffle on each reuse, and earlier epochs do not depend on the budget.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from diffmix.errors import DiffmixError

if TYPE_CHECKING:
    from diffmix.mixers.recipe import Plan

# Integer targets reach denominator * run length; this keeps them inside int64.
MAX_RUN_POSITIONS = 1 << 30
NO_DEADLINE = np.iinfo(np.int64).max


def hamilton(weights: np.ndarray, totals: int | np.ndarray) -> np.ndarray:
    """Largest-remainder apportionment of `totals` seats by `weights`.

    `weights` is `(k,)` or `(rows, k)` (non-negative, each row with a positive
    sum); `totals` is an int or one per row. A zero weight never gets a seat.
    """
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)
    total = np.broadcast_to(np.asarray(totals, dtype=np.int64), (w.shape[0],))
    quotas = w / w.sum(axis=1, keepdims=True) * total[:, None]
    counts = np.floor(quotas).astype(np.int64)
    remainders = np.where(w > 0, quotas - counts, -1.0)
    left = total - counts.sum(axis=1)
    # Rank sources by remainder, largest first; ties go to the earlier source.
    order = np.argsort(-remainders, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(w.shape[1])[None, :].repeat(w.shape[0], axis=0), axis=1)
    counts += ranks < left[:, None]
    # Float rounding can floor one quota up past an integer: take a seat back from the smallest remainder.
    over = -np.minimum(left, 0)
    if over.any():
        order = np.argsort(np.where(counts > 0, remainders, np.inf), axis=1, kind="stable")
        np.put_along_axis(ranks, order, np.arange(w.shape[1])[None, :].repeat(w.shape[0], axis=0), axis=1)
        counts -= ranks < over[:, None]
    return counts[0] if single else counts


@dataclass(frozen=True)
class Run:
    """Positions `[start, start + length)` whose cumulative targets start at zero.

    Within `[bounds[s], bounds[s+1])` (relative to `start`) every position adds
    `numerators[s, i] / denominator` to source `i`'s target; rows of `numerators`
    sum to `denominator`, so the targets of all sources add up to the position.
    """

    start: int
    bounds: np.ndarray  # (S + 1,) int64, bounds[0] == 0, bounds[-1] == length
    numerators: np.ndarray  # (S, k) int64
    denominator: int

    @property
    def length(self) -> int:
        return int(self.bounds[-1])

    @property
    def n_sources(self) -> int:
        return int(self.numerators.shape[1])

    def boundary_targets(self) -> np.ndarray:
        """`(S + 1, k)` cumulative targets at the bounds, in units of `1/denominator` (exact)."""
        widths = np.diff(self.bounds)
        steps = self.numerators * widths[:, None]
        return np.vstack([np.zeros((1, self.n_sources), dtype=np.int64), np.cumsum(steps, axis=0)])

    def targets(self) -> np.ndarray:
        """`(length + 1, k)` cumulative targets `T_i(P)` as floats (for audits and tests)."""
        positions = np.arange(self.length + 1)
        segment = np.clip(np.searchsorted(self.bounds, positions, side="right") - 1, 0, len(self.bounds) - 2)
        base = self.boundary_targets()[segment]
        exact = base + self.numerators[segment] * (positions - self.bounds[segment])[:, None]
        return exact / self.denominator


def constant_run(start: int, counts: np.ndarray) -> Run:
    """A phase with constant weights `counts / sum(counts)` that ends exactly on `counts`."""
    counts = np.asarray(counts, dtype=np.int64)
    length = int(counts.sum())
    _check_length(length)
    return Run(start, np.array([0, length], dtype=np.int64), counts[None, :], max(length, 1))


def stepped_run(start: int, widths: np.ndarray, weights: np.ndarray) -> Run:
    """A run whose weights change every step: `weights[s]` (normalised) over the next `widths[s]` positions.

    The real cumulative targets at step boundaries are rounded to multiples of
    `1/unit` (`_round_targets`: exact sums, never decreasing, a source with no
    weight in a step gains nothing) and spread evenly over the step's
    positions. So there is no drift, and a target that is a whole number of
    samples at a boundary stays exactly that number.
    """
    widths = np.asarray(widths, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum(axis=1, keepdims=True)
    length = int(widths.sum())
    _check_length(length)
    width = int(widths.max())
    unit = _unit(width, length)
    positions = np.concatenate([[0], np.cumsum(widths)])
    real = np.vstack([np.zeros((1, weights.shape[1])), np.cumsum(weights * widths[:, None], axis=0)])
    targets = np.empty(real.shape, dtype=np.int64)
    failed = _round_targets(real * unit, weights, positions * unit, targets)
    if failed >= 0:  # impossible: a step's largest source gains far more than any rounding
        raise RuntimeError(f"blend: rounding the targets made one decrease at step {failed}")
    increments = np.diff(targets, axis=0)  # per step, in units of 1/unit
    # Per position, in units of 1/(unit * width): a full step spreads its increments evenly;
    # a shorter one (the last step) over single positions, its remainders dealt round-robin.
    bounds, numerators = [0], []
    for s, w in enumerate(widths.tolist()):
        if w == width:
            numerators.append(increments[s][None, :])
            bounds.append(bounds[-1] + w)
            continue
        base, extra = np.divmod(increments[s] * width, w)
        rows = np.repeat(base[None, :], w, axis=0)
        units = np.repeat(np.arange(len(extra)), extra)  # one entry per remainder unit, source by source
        np.add.at(rows, (np.arange(units.size) % w, units), 1)
        numerators.append(rows)
        bounds.extend(bounds[-1] + np.arange(1, w + 1))
    return Run(start, np.array(bounds, dtype=np.int64), np.vstack(numerators), unit * width)


@numba.njit(cache=True, nogil=True)
def _round_targets(scaled, weights, totals, out):  # pragma: no cover - compiled
    """Integer cumulative targets at step boundaries: rint of the real ones, summing to `totals` exactly.

    A source with no weight in a step keeps its value; every other source takes
    the rounded real target (never below its previous value); the step's
    largest source absorbs the difference. Returns -1, or the step where a
    value would decrease.
    """
    k = scaled.shape[1]
    out[0, :] = 0
    for s in range(1, scaled.shape[0]):
        largest = 0
        total = 0
        for i in range(k):
            if weights[s - 1, i] > weights[s - 1, largest]:
                largest = i
            if weights[s - 1, i] > 0:
                out[s, i] = max(np.int64(np.rint(scaled[s, i])), out[s - 1, i])
            else:
                out[s, i] = out[s - 1, i]
            total += out[s, i]
        out[s, largest] += totals[s] - total
        if out[s, largest] < out[s - 1, largest]:
            return s - 1
    return -1


def _unit(width: int, length: int) -> int:
    """The rounding unit of stepped runs: fine, yet with exact int64 targets and exact float rounding."""
    bits = min(24, 61 - (width * length).bit_length(), 50 - length.bit_length())
    if bits < 8:
        raise DiffmixError(f"budget: {length} samples in batches of {width} is too long for a linear schedule")
    return 1 << bits


def _check_length(length: int) -> None:
    if length > MAX_RUN_POSITIONS:
        raise DiffmixError(f"budget: {length} samples in one run; at most {MAX_RUN_POSITIONS} are supported")


@numba.njit(cache=True, nogil=True)
def _earliest_deadline_first(bounds, numerators, targets, q, step_div, step_mod, first, out_source, out_ordinal):  # pragma: no cover
    """Give each position the released sample that is due first; return -1, or the position where that fails.

    Source i's next sample k is released at the first position p with
    k < T_i(p + 1) and due at the position before the first prefix P with
    T_i(P) >= k + 1. T_i is piecewise linear with exact integer values (units
    of 1/q): within segment s, position bounds[s] + t has T = targets[s] +
    numerators[s] * t. The quotients giving release and deadline advance by
    step_div = q // a and step_mod = q % a (plus a carry) per sample: a
    division only when a segment changes (64-bit division is slow).
    A sample's ordinal is written as `first[i]` plus its number within the run.
    """
    k = numerators.shape[1]
    last = numerators.shape[0]
    job = np.zeros(k, np.int64)
    release = np.empty(k, np.int64)
    due = np.empty(k, np.int64)
    # Per source: segment, quotient and remainder of (k*q - targets[seg]) / a (release) and of ((k+1)*q - targets[seg]) / a (deadline).
    rs = np.zeros(k, np.int64)
    rq = np.zeros(k, np.int64)
    rr = np.zeros(k, np.int64)
    ds = np.zeros(k, np.int64)
    dq = np.zeros(k, np.int64)
    dr = np.zeros(k, np.int64)
    for i in range(k):
        _locate(i, 0, bounds, numerators, targets, q, release, due, rs, rq, rr, ds, dq, dr, last)
    for position in range(out_source.shape[0]):
        best = -1
        for i in range(k):
            if release[i] <= position and (best < 0 or due[i] < due[best]):
                best = i
        if best < 0 or due[best] < position:
            return position
        out_source[position] = best
        out_ordinal[position] = first[best] + job[best]
        job[best] += 1
        i = best
        x = job[i] * q
        if x >= targets[last, i]:  # no further sample of this source in the run
            release[i] = NO_DEADLINE
            due[i] = NO_DEADLINE
            continue
        s = rs[i]
        if x < targets[s + 1, i]:  # same segment: advance the quotient without dividing
            rq[i] += step_div[s, i]
            rr[i] += step_mod[s, i]
            if rr[i] >= numerators[s, i]:
                rr[i] -= numerators[s, i]
                rq[i] += 1
            release[i] = bounds[s] + rq[i]
        else:
            _locate_release(i, x, bounds, numerators, targets, release, rs, rq, rr)
        y = x + q
        if y > targets[last, i]:  # the run may end between two whole samples of a source
            due[i] = NO_DEADLINE
            continue
        s = ds[i]
        if y <= targets[s + 1, i] and due[i] != NO_DEADLINE:
            dq[i] += step_div[s, i]
            dr[i] += step_mod[s, i]
            if dr[i] >= numerators[s, i]:
                dr[i] -= numerators[s, i]
                dq[i] += 1
            due[i] = bounds[s] + dq[i] + (1 if dr[i] > 0 else 0) - 1
        else:
            _locate_due(i, y, bounds, numerators, targets, due, ds, dq, dr)
    return -1


@numba.njit(cache=True, nogil=True)
def _locate(i, x, bounds, numerators, targets, q, release, due, rs, rq, rr, ds, dq, dr, last):  # pragma: no cover
    if x >= targets[last, i]:
        release[i] = NO_DEADLINE
        due[i] = NO_DEADLINE
        return
    _locate_release(i, x, bounds, numerators, targets, release, rs, rq, rr)
    if x + q > targets[last, i]:
        due[i] = NO_DEADLINE
    else:
        _locate_due(i, x + q, bounds, numerators, targets, due, ds, dq, dr)


@numba.njit(cache=True, nogil=True)
def _locate_release(i, x, bounds, numerators, targets, release, rs, rq, rr):  # pragma: no cover
    """Segment with targets[s] <= x < targets[s + 1]; release = bounds[s] + (x - targets[s]) // a."""
    s = rs[i]
    while targets[s + 1, i] <= x:
        s += 1
    rs[i] = s
    rq[i], rr[i] = divmod(x - targets[s, i], numerators[s, i])
    release[i] = bounds[s] + rq[i]


@numba.njit(cache=True, nogil=True)
def _locate_due(i, y, bounds, numerators, targets, due, ds, dq, dr):  # pragma: no cover
    """Segment with targets[s] < y <= targets[s + 1]; deadline = bounds[s] + ceil((y - targets[s]) / a) - 1."""
    s = ds[i]
    while targets[s + 1, i] < y:
        s += 1
    ds[i] = s
    dq[i], dr[i] = divmod(y - targets[s, i], numerators[s, i])
    due[i] = bounds[s] + dq[i] + (1 if dr[i] > 0 else 0) - 1


def interleave(
    run: Run,
    first: np.ndarray | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Source id (int16) and sample ordinal (`first[source]` + its number within the run) for each position of `run`.

    `out` receives them in place when given (two arrays of the run's length).
    """
    sources, ordinals = out if out is not None else (np.empty(run.length, np.int16), np.empty(run.length, np.int64))
    first = np.zeros(run.n_sources, np.int64) if first is None else np.asarray(first, np.int64)
    numerators = np.ascontiguousarray(run.numerators)
    step_div, step_mod = np.divmod(run.denominator, np.maximum(numerators, 1))
    failed = _earliest_deadline_first(
        run.bounds, numerators, run.boundary_targets(), run.denominator, step_div, step_mod, first, sources, ordinals
    )
    if failed >= 0:  # impossible by Tijdeman's theorem; a bug if it happens
        raise RuntimeError(f"blend: no source can take position {run.start + failed} within one sample")
    return sources, ordinals


def runs_for_plan(plan: Plan) -> list[Run]:
    """Constant phases: one run each (exact Hamilton counts); a linear schedule: one run."""
    if plan.linear:
        widths = plan.step_widths()
        return [stepped_run(0, widths, plan.step_weights())]
    runs = []
    for phase in plan.phases:
        runs.append(constant_run(phase.start, hamilton(phase.weights, phase.stop - phase.start)))
    return runs


@dataclass(frozen=True)
class BlendIndex:
    """Per position: source id and the source's running sample number over the whole stream."""

    sources: np.ndarray  # int16
    ordinals: np.ndarray  # int64: the g-th sample drawn from this source (0-based)

    def counts(self, n_sources: int) -> np.ndarray:
        return np.bincount(self.sources, minlength=n_sources).astype(np.int64)


def blend(runs: list[Run], n_sources: int) -> BlendIndex:
    """Interleave every run and number each source's samples across runs."""
    total = sum(run.length for run in runs)
    sources = np.empty(total, dtype=np.int16)
    ordinals = np.empty(total, dtype=np.int64)
    drawn = np.zeros(n_sources, dtype=np.int64)
    for run in runs:
        span = slice(run.start, run.start + run.length)
        interleave(run, drawn, (sources[span], ordinals[span]))
        end = run.boundary_targets()[-1]
        if np.all(end % run.denominator == 0):  # whole samples at the end: the counts are the targets
            drawn += end // run.denominator
        else:
            drawn += np.bincount(sources[span], minlength=n_sources)
    return BlendIndex(sources, ordinals)


def check_repetition(names: list[str], needed: np.ndarray, available: np.ndarray, max_repetition: np.ndarray) -> None:
    """Fail (naming every source over its cap) when a source must be reused more than `max_repetition` times."""
    allowed = np.floor(np.asarray(available, dtype=np.float64) * np.asarray(max_repetition, dtype=np.float64))
    over = np.flatnonzero(np.asarray(needed) > allowed)
    if over.size == 0:
        return
    rows = "; ".join(
        f"{names[i]} | {int(needed[i]):,} | {int(available[i]):,} | {max_repetition[i]:g} | {int(allowed[i]):,}"
        for i in over
    )
    raise DiffmixError(
        "the schedule needs more samples than max_repetition allows "
        f"(source | asked | available | max_repetition | allowed: {rows}); "
        "raise max_repetition, lower the budget or the weight, or widen the source"
    )


def _name_key(name: str) -> list[int]:
    digest = hashlib.sha256(name.encode()).digest()
    return [int.from_bytes(digest[j : j + 4], "little") for j in range(0, 16, 4)]


def epoch_permutation(seed: int, name: str, epoch: int, size: int) -> np.ndarray:
    """The order of a source's rows in one pass (epoch) over it, seeded by (seed, source name, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, *_name_key(name), epoch]))
    return rng.permutation(size)


def source_rows(index: BlendIndex, names: list[str], sizes: np.ndarray, seed: int) -> np.ndarray:
    """For each position, the row (0 .. size-1) of its source's selection it shows.

    A source's g-th sample (in stream order) is row `perm_e[g mod size]`,
    `e = g // size`: whole epochs are whole permutations.
    """
    counts = np.bincount(index.sources, minlength=len(names))
    parts = []
    for i, name in enumerate(names):
        count, size = int(counts[i]), int(sizes[i])
        epochs, rest = divmod(count, size)
        parts += [epoch_permutation(seed, name, e, size) for e in range(epochs)]
        if rest:
            parts.append(epoch_permutation(seed, name, epochs, size)[:rest])
    drawn = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    where = drawn[index.sources]
    where += index.ordinals
    return np.concatenate(parts).take(where)
