"""The blend index: Hamilton counts, the within-one-sample interleave, seeded reuse, repetition caps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix.errors import DiffmixError
from diffmix.mixers.blend import (
    BlendIndex,
    blend,
    check_repetition,
    constant_run,
    epoch_permutation,
    hamilton,
    interleave,
    source_rows,
    stepped_run,
)


def prefix_deviation(sources: np.ndarray, targets: np.ndarray) -> float:
    """max over prefixes P and sources i of |c_i(P) - T_i(P)| (targets: (P+1, k) from Run.targets())."""
    k = targets.shape[1]
    counts = np.vstack([np.zeros((1, k)), np.cumsum(sources[:, None] == np.arange(k)[None, :], axis=0)])
    return float(np.abs(counts - targets).max())


# --- reference rules the issue names, to show why they are not used ------------------


def megatron_greedy(counts: list[int]) -> np.ndarray:
    """Megatron's build_blending_indices: each position to the largest error w_i * max(p, 1) - c_i."""
    w = np.array(counts) / sum(counts)
    taken = np.zeros(len(counts))
    out = []
    for p in range(sum(counts)):
        i = int(np.argmax(w * max(p, 1) - taken))
        taken[i] += 1
        out.append(i)
    return np.array(out)


def ideal_position_sort(counts: list[int]) -> np.ndarray:
    """Sort every sample by its ideal position (k + 1/2) / w_i."""
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts])
    ids = np.concatenate([np.full(n, i) for i, n in enumerate(counts)])
    return ids[np.argsort(keys, kind="stable")]


@pytest.mark.parametrize(
    ("rule", "counts", "worst"),
    [
        (megatron_greedy, [1, 1, 9], 1.0909),
        (megatron_greedy, [10, 360, 1, 2, 18], 1.6752),
        (ideal_position_sort, [1, 1, 1, 5], 1.125),
        (ideal_position_sort, [6, 28, 1, 1, 1, 191, 24, 1, 1], 2.5157),
    ],
)
def test_simpler_rules_overshoot_where_the_quota_rule_does_not(rule, counts, worst) -> None:
    run = constant_run(0, np.array(counts))
    assert prefix_deviation(rule(counts), run.targets()) == pytest.approx(worst, abs=1e-3)
    sources, _ = interleave(run)
    assert prefix_deviation(sources, run.targets()) < 1


# --- Hamilton apportionment ---------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "total", "expected"),
    [
        ([1, 1, 1], 10, [4, 3, 3]),  # equal remainders: the earlier source first
        ([0.1, 0.9], 20000, [2000, 18000]),
        ([0.5, 0.3, 0.2], 7, [4, 2, 1]),  # quotas 3.5 2.1 1.4: remainders .5 .1 .4
        ([0.0, 1.0, 1.0], 3, [0, 2, 1]),  # a zero weight never gets a seat
        ([1e-9, 1.0], 5, [0, 5]),
        ([2, 3], 0, [0, 0]),
        ([1 / 3, 1 / 3, 1 / 3], 2**32, [1431655766, 1431655765, 1431655765]),
    ],
)
def test_hamilton(weights, total, expected) -> None:
    counts = hamilton(np.array(weights), total)
    assert counts.tolist() == expected
    assert counts.sum() == total


def test_hamilton_rows_match_single_calls() -> None:
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(5), size=50)
    weights[rng.random(weights.shape) < 0.2] = 0
    weights[:, 0] += 1e-3
    totals = rng.integers(1, 1000, size=50)
    rows = hamilton(weights, totals)
    for w, t, r in zip(weights, totals, rows):
        assert r.tolist() == hamilton(w, int(t)).tolist()
        assert np.all(np.abs(r - w / w.sum() * t) < 1)


# --- the interleave: every prefix within one sample ---------------------------------

weight_vectors = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-4, max_value=1.0)), min_size=2, max_size=7
).filter(lambda w: sum(w) > 0)


@settings(max_examples=150, deadline=None)
@given(weights=weight_vectors, length=st.integers(min_value=1, max_value=600))
def test_constant_phase_prefixes_within_one_sample(weights, length) -> None:
    counts = hamilton(np.array(weights), length)
    run = constant_run(0, counts)
    sources, ordinals = interleave(run)
    assert prefix_deviation(sources, run.targets()) < 1
    # The phase ends exactly on its Hamilton counts, each source's samples numbered 0, 1, 2, ...
    assert np.bincount(sources, minlength=len(weights)).tolist() == counts.tolist()
    for i in range(len(weights)):
        assert ordinals[sources == i].tolist() == list(range(counts[i]))


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(min_value=2, max_value=6),
    data=st.data(),
)
def test_changing_weights_prefixes_within_one_sample(k, data) -> None:
    """Weights that change every step (a linear schedule, or anything else) keep the cumulative bound."""
    n_steps = data.draw(st.integers(min_value=1, max_value=40))
    widths = np.array(data.draw(st.lists(st.integers(1, 16), min_size=n_steps, max_size=n_steps)))
    raw = np.array(
        data.draw(
            st.lists(
                st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=k, max_size=k),
                min_size=n_steps,
                max_size=n_steps,
            )
        )
    )
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    run = stepped_run(0, widths, raw)
    sources, _ = interleave(run)
    assert len(sources) == widths.sum()
    assert prefix_deviation(sources, run.targets()) < 1


@pytest.mark.parametrize("widths", [[8] * 25, [8] * 24 + [3]])
def test_stepped_run_keeps_whole_number_targets_and_zero_weights(widths) -> None:
    """A ramp whose real totals are whole numbers ends exactly on them; a weight of 0 gets no sample."""
    n = len(widths)
    ramp = np.arange(n) / n
    weights = np.stack([1 - ramp, ramp, np.where(np.arange(n) < n // 2, 0.0, 0.5)], axis=1)
    run = stepped_run(0, np.array(widths), weights)
    sources, _ = interleave(run)
    assert prefix_deviation(sources, run.targets()) < 1
    norm = weights / weights.sum(axis=1, keepdims=True)
    real = (norm * np.array(widths)[:, None]).sum(axis=0)
    counts = np.bincount(sources, minlength=3)
    assert np.all(np.abs(counts - real) < 1)
    exact = np.isclose(real, np.rint(real), atol=1e-9)
    assert np.array_equal(counts[exact], np.rint(real[exact]))
    steps = np.repeat(np.arange(n), widths)
    assert not np.any((sources == 2) & (steps < n // 2)) and not np.any((sources == 1) & (steps == 0))


def reference_windows(run) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per source, (release, deadline) of its k-th sample from the exact per-position targets (NumPy, small runs)."""
    exact = np.rint(run.targets() * run.denominator).astype(np.int64)  # (P + 1, k), integers
    windows = []
    for i in range(run.n_sources):
        jobs = np.arange(-(-int(exact[-1, i]) // run.denominator))
        release = np.searchsorted(exact[:, i], jobs * run.denominator, side="right") - 1
        deadline = np.searchsorted(exact[:, i], (jobs + 1) * run.denominator, side="left") - 1
        windows.append((release, deadline))
    return windows


@pytest.mark.parametrize(
    "run",
    [
        constant_run(0, np.array([5, 17, 3, 40])),
        constant_run(0, np.array([1, 1, 9])),
        stepped_run(0, np.array([4, 4, 4, 4, 2]), np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 1], [0.2, 0.3, 0.5], [1, 1, 1]])),
    ],
)
def test_each_position_takes_the_released_sample_due_first(run) -> None:
    sources, ordinals = interleave(run)
    again = interleave(run)
    assert np.array_equal(sources, again[0]) and np.array_equal(ordinals, again[1])
    windows = reference_windows(run)
    taken = np.zeros(run.n_sources, dtype=int)
    for position, (i, k) in enumerate(zip(sources, ordinals)):
        release, deadline = windows[i]
        assert k == taken[i] and release[k] <= position <= deadline[k]
        for j in range(run.n_sources):  # no other released sample was due earlier (ties: lower source first)
            if taken[j] < len(windows[j][0]) and windows[j][0][taken[j]] <= position:
                assert (deadline[k], i) <= (windows[j][1][taken[j]], j) or deadline[k] == windows[j][1][taken[j]] and i <= j
        taken[i] += 1


def test_runs_number_samples_across_phases() -> None:
    first = constant_run(0, np.array([6, 2]))
    second = constant_run(8, np.array([1, 7]))
    index = blend([first, second], 2)
    assert index.counts(2).tolist() == [7, 9]
    for i in range(2):
        assert index.ordinals[index.sources == i].tolist() == list(range(index.counts(2)[i]))


# --- rows within a source: a seeded permutation, reshuffled on every reuse ----------


def test_each_epoch_is_a_fresh_permutation() -> None:
    size, drawn = 50, 175  # three full passes and half of a fourth
    index = BlendIndex(np.zeros(drawn, dtype=np.int16), np.arange(drawn, dtype=np.int64))
    rows = source_rows(index, ["code"], np.array([size]), seed=7)
    epochs = [rows[e * size : (e + 1) * size] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(size))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert len(set(rows[150:].tolist())) == 25  # the partial epoch repeats nothing
    assert np.array_equal(rows, source_rows(index, ["code"], np.array([size]), seed=7))
    assert not np.array_equal(rows, source_rows(index, ["code"], np.array([size]), seed=8))
    # Epoch e does not depend on how many epochs the budget needs.
    assert np.array_equal(rows[50:100], epoch_permutation(7, "code", 1, size))


def test_sources_with_the_same_seed_shuffle_differently() -> None:
    assert not np.array_equal(epoch_permutation(0, "code", 0, 100), epoch_permutation(0, "arith", 0, 100))


# --- repetition caps ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("needed", "available", "cap", "fails"),
    [
        ([100, 50], [100, 50], [1, 1], None),
        ([101, 50], [100, 50], [1, 1], "code | 101 | 100 | 1 | 100"),
        ([400, 50], [100, 50], [4, 1], None),
        ([400, 51], [100, 50], [4, 1], "arith | 51 | 50 | 1 | 50"),
        ([150, 10], [100, 4], [1.5, 2], "arith | 10 | 4 | 2 | 8"),
    ],
)
def test_repetition_cap(needed, available, cap, fails) -> None:
    check = lambda: check_repetition(["code", "arith"], np.array(needed), np.array(available), np.array(cap))  # noqa: E731
    if fails is None:
        check()
        return
    with pytest.raises(DiffmixError) as err:
        check()
    message = str(err.value)
    assert "\n" not in message and fails in message and "asked | available | max_repetition" in message


# --- whole schedules: recipe -> plan -> runs -> stream ------------------------------


def _recipe(k: int, batch: int, samples: int, schedule: dict):
    from diffmix.mixers.recipe import parse_recipe

    return parse_recipe(
        {
            "name": "h",
            "global_batch_size": batch,
            "budget": {"samples": samples},
            "sources": [{"name": f"s{i}", "path": f"s{i}"} for i in range(k)],
            "schedule": schedule,
        }
    )


def _weights(draw, k: int) -> dict:
    values = draw(st.lists(st.one_of(st.just(0), st.integers(1, 20)), min_size=k, max_size=k).filter(any))
    return {f"s{i}": v for i, v in enumerate(values)}


@st.composite
def schedules(draw):
    k = draw(st.integers(2, 5))
    batch = draw(st.integers(1, 12))
    samples = draw(st.integers(1, 400))
    n_steps = -(-samples // batch)
    kind = draw(st.sampled_from(["constant", "stages", "linear"]))
    if kind == "constant" or n_steps < 2:
        return k, batch, samples, {"type": "constant", "weights": _weights(draw, k)}
    starts = sorted(draw(st.sets(st.integers(1, n_steps - 1), max_size=3)))
    key, field = ("start", "stages") if kind == "stages" else ("at", "points")
    entries = [{key: s, "weights": _weights(draw, k)} for s in [0, *starts]]
    return k, batch, samples, {"type": kind, field: entries}


@settings(max_examples=120, deadline=None)
@given(spec=schedules())
def test_random_schedules_keep_every_prefix_within_one_sample(spec) -> None:
    from diffmix.mixers.blend import runs_for_plan
    from diffmix.mixers.recipe import plan_schedule

    k, batch, samples, schedule = spec
    plan = plan_schedule(_recipe(k, batch, samples, schedule), np.full(k, 100))
    runs = runs_for_plan(plan)
    index = blend(runs, k)
    assert len(index.sources) == samples
    starts = [s.get("start", s.get("at", 0)) for s in schedule.get("stages", schedule.get("points", [{}]))]
    assert [p.start for p in plan.phases] == [s * batch for s in starts]  # boundaries land on the stated step
    for run in runs:
        span = index.sources[run.start : run.start + run.length]
        assert prefix_deviation(span, run.targets()) < 1
    if schedule["type"] != "linear":  # each phase ends on its Hamilton counts
        for phase in plan.phases:
            counts = np.bincount(index.sources[phase.start : phase.stop], minlength=k)
            assert counts.tolist() == hamilton(phase.weights, phase.stop - phase.start).tolist()
    else:  # one run: the realised counts are within one of the requested totals
        assert np.all(np.abs(index.counts(k) - plan.requested().sum(axis=0)) < 1 + 1e-6)
