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
   error `w_i P - c_i`) and the sort by ideal position `(k + 1/2) / w_i` both
   overshoot by more than one sample once there are three or more sources
   (`tests/mixers/test_blend.py` has counterexamples). The rule here is the
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

# Weights that change per step are quantised to multiples of 1/2**32: the drift
# against the real-valued weights is below N / 2**32 samples over a whole run.
STEP_DENOMINATOR = 1 << 32
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
    """A run whose weights change at every step: `weights[s]` over the next `widths[s]` positions."""
    widths = np.asarray(widths, dtype=np.int64)
    _check_length(int(widths.sum()))
    numerators = hamilton(weights, STEP_DENOMINATOR)
    bounds = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    return Run(start, bounds, numerators, STEP_DENOMINATOR)


def _check_length(length: int) -> None:
    if length > MAX_RUN_POSITIONS:
        raise DiffmixError(f"budget: {length} samples in one run; at most {MAX_RUN_POSITIONS} are supported")


def job_windows(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Release and deadline (run-relative positions) of every sample each source may take.

    Returns `(release, deadline, offsets)`: source `i`'s samples are
    `offsets[i]:offsets[i+1]`, in order. A sample due after the run ends (the
    run may end between two integers of the target) has deadline `NO_DEADLINE`.
    """
    q = run.denominator
    bounds = run.bounds
    n_segments = len(bounds) - 1
    targets = run.boundary_targets()
    releases, deadlines, sizes = [], [], []
    for i in range(run.n_sources):
        v = targets[:, i]
        a = run.numerators[:, i]
        n_jobs = int(-(-int(v[-1]) // q))
        k = np.arange(n_jobs, dtype=np.int64)
        # Release: first prefix P with T(P) > k, then q = P - 1.
        x = k * q
        seg = np.searchsorted(v, x, side="right") - 1
        release = bounds[seg] + (x - v[seg]) // a[seg]
        # Deadline: first prefix P with T(P) >= k + 1, minus one.
        y = x + q
        seg = np.searchsorted(v, y, side="left") - 1
        due = seg < n_segments
        seg = np.minimum(seg, n_segments - 1)
        step = np.where(due, a[seg], 1)
        deadline = np.where(due, bounds[seg] + (-((v[seg] - y) // step)) - 1, NO_DEADLINE)
        releases.append(release)
        deadlines.append(deadline)
        sizes.append(n_jobs)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return np.concatenate(releases), np.concatenate(deadlines), offsets


@numba.njit(cache=True, nogil=True)
def _earliest_deadline_first(release, deadline, offsets, out_source, out_ordinal):  # pragma: no cover - compiled
    """Give each position the released sample due first; return -1, or the position where that fails."""
    k = offsets.shape[0] - 1
    pointer = offsets[:-1].copy()
    for position in range(out_source.shape[0]):
        best = -1
        best_deadline = 0
        for i in range(k):
            j = pointer[i]
            if j < offsets[i + 1] and release[j] <= position and (best < 0 or deadline[j] < best_deadline):
                best = i
                best_deadline = deadline[j]
        if best < 0 or best_deadline < position:
            return position
        out_source[position] = best
        out_ordinal[position] = pointer[best] - offsets[best]
        pointer[best] += 1
    return -1


def interleave(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Source id (int16) and the source's sample ordinal within the run, for each position of `run`."""
    release, deadline, offsets = job_windows(run)
    sources = np.empty(run.length, dtype=np.int16)
    ordinals = np.empty(run.length, dtype=np.int64)
    failed = _earliest_deadline_first(release, deadline, offsets, sources, ordinals)
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
        s, o = interleave(run)
        span = slice(run.start, run.start + run.length)
        sources[span] = s
        ordinals[span] = o + drawn[s]
        drawn += np.bincount(s, minlength=n_sources)
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
    """For each position, the row (0 .. size-1) of its source's selection it shows."""
    rows = np.empty(len(index.sources), dtype=np.int64)
    for i, name in enumerate(names):
        where = np.flatnonzero(index.sources == i)
        if where.size == 0:
            continue
        size = int(sizes[i])
        drawn = index.ordinals[where]
        epochs = drawn // size
        perms = np.stack([epoch_permutation(seed, name, e, size) for e in range(int(epochs.max()) + 1)])
        rows[where] = perms[epochs, drawn - epochs * size]
    return rows
