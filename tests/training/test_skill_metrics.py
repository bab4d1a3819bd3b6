"""Skill-speed metrics on synthetic curves whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffmix.training.metrics import (
    aulc,
    debiased_ema,
    effective_params,
    epoch_boundary_gaps,
    find_plateaus,
    merge_plateaus,
    plateau_drops,
    skill_speed,
    threshold_crossing,
)

STEPS = np.array([100, 200, 300, 400, 500, 600])


@pytest.mark.parametrize(
    ("scores", "tau", "k", "expected_step"),
    [
        # crosses between evals 2 and 3: 0.5 -> 1.0 passes 0.9 at 80% of the way (300 + 0.8 * 100)
        ([0.0, 0.2, 0.5, 1.0, 1.0, 1.0], 0.9, 2, 380.0),
        # dips after the first crossing and recovers: the held crossing is the second one
        ([0.1, 0.95, 0.7, 0.8, 1.0, 1.0], 0.9, 2, 450.0),
        # k=1 takes the first crossing even though it does not hold
        ([0.1, 0.95, 0.7, 0.8, 1.0, 1.0], 0.9, 1, 200.0 - 100.0 * (0.95 - 0.9) / (0.95 - 0.1)),
        # above tau from the first eval: the first eval, no interpolation before it
        ([0.95, 0.97, 0.99, 1.0, 1.0, 1.0], 0.9, 2, 100.0),
        # exactly tau counts as reached
        ([0.0, 0.9, 0.9, 0.9, 0.9, 0.9], 0.9, 2, 200.0),
        # reaches tau at the last eval only: the hold is unconfirmed -> censored
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.95], 0.9, 2, None),
        # never reaches tau -> censored
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 0.9, 2, None),
        # a missing eval (NaN) counts as below tau
        ([0.0, 0.95, math.nan, 0.95, 0.95, 0.95], 0.9, 2, 400.0),
    ],
)
def test_threshold_crossing_on_steps(scores: list[float], tau: float, k: int, expected_step: float | None) -> None:
    crossing = threshold_crossing(np.array(scores), tau, k)
    if expected_step is None:
        assert crossing.censored
        assert crossing.at(STEPS) is None
    else:
        assert not crossing.censored
        assert crossing.at(STEPS) == pytest.approx(expected_step)


def test_skill_speed_reads_every_axis_at_the_same_crossing() -> None:
    axes = {
        "steps": STEPS,
        "tokens": STEPS * 1000,
        "unique_examples": np.array([64, 128, 192, 200, 200, 200]),
    }
    speed = skill_speed(axes, np.array([0.0, 0.2, 0.5, 1.0, 1.0, 1.0]), tau=0.9, k=2)
    assert speed["steps"] == pytest.approx(380.0)
    assert speed["tokens"] == pytest.approx(380_000.0)
    # unique examples saturate (a repeated dataset): 192 + 0.8 * 8
    assert speed["unique_examples"] == pytest.approx(198.4)
    assert speed["censored"] is False and speed["crossing_eval"] == 3 and speed["left_censored"] is False

    never = skill_speed(axes, np.zeros(6), tau=0.9, k=2)
    bounds = {"steps_lower_bound": float(STEPS[-1]), "tokens_lower_bound": float(STEPS[-1] * 1000), "unique_examples_lower_bound": 200.0}
    assert never == {"steps": None, "tokens": None, "unique_examples": None, "censored": True, "crossing_eval": None, "left_censored": False, **bounds}
    # only the last eval held tau (k = 2 unconfirmed): a crossing lies past the eval before it, not past the run's end
    late = skill_speed(axes, np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), tau=0.9, k=2)
    assert late["censored"] and late["steps_lower_bound"] == float(STEPS[4])
    # already above tau at the first eval: the value is an upper bound
    early = skill_speed(axes, np.ones(6), tau=0.9, k=2)
    assert early["left_censored"] is True and early["steps"] == float(STEPS[0])


@pytest.mark.parametrize(
    ("tokens", "scores", "expected"),
    [
        ([10, 100, 1000], [1.0, 1.0, 1.0], 1.0),
        ([10, 100, 1000], [0.0, 0.0, 0.0], 0.0),
        # linear in log tokens from 0 to 1: half the area
        ([10, 100, 1000], [0.0, 0.5, 1.0], 0.5),
        # the eval at 0 tokens has no log position and is left out
        ([0, 10, 1000], [0.3, 0.0, 1.0], 0.5),
        ([0, 10], [0.0, 1.0], None),
    ],
)
def test_aulc(tokens: list[int], scores: list[float], expected: float | None) -> None:
    result = aulc(np.array(tokens), np.array(scores))
    assert result == (None if expected is None else pytest.approx(expected))


def test_aulc_on_a_common_token_span() -> None:
    """Compared on one span, a run that pays more tokens per step, or stopped early, is not flattered."""
    steps = np.arange(1, 11) * 100
    curve = np.minimum(1.0, steps / 600)  # reaches 1.0 at step 600
    cheap, dear = steps * 50, steps * 100
    assert aulc(cheap, curve) == pytest.approx(aulc(dear, curve))  # on its own evals: the token cost vanishes
    span = (10_000.0, 50_000.0)  # what both cover
    assert aulc(cheap, curve, span) > aulc(dear, curve, span)
    # a run stopped once it was perfect, against a slower one that ran on: the faster wins on a shared span
    fast = aulc(steps[:7] * 50, np.minimum(1.0, steps[:7] / 600), (5_000.0, 35_000.0))
    slow = aulc(steps * 50, np.minimum(1.0, steps / 900), (5_000.0, 35_000.0))
    assert fast > slow
    assert aulc(cheap, curve, (1_000.0, 50_000.0)) is None  # before its first eval: not covered
    assert aulc(cheap, curve, (10_000.0, 50_001.0)) is None  # past its last eval: not covered either
    assert aulc(cheap, curve, (5_000.0, 50_000.0)) is not None  # exactly its first and last evals
    flat = aulc(np.array([10, 100, 1000]), np.array([0.5, 0.5, 0.5]), (20.0, 500.0))
    assert flat == pytest.approx(0.5)


def test_debiased_ema_starts_at_the_first_value_and_skips_gaps() -> None:
    ema = debiased_ema(np.array([math.nan, 4.0, 4.0, math.nan, 2.0]), beta=0.5)
    assert math.isnan(ema[0])
    assert ema[1] == pytest.approx(4.0)  # no bias towards 0
    assert ema[2] == pytest.approx(4.0)
    assert ema[3] == pytest.approx(4.0)  # a gap carries the last value
    # third observation: s = 0.5*(0.5*(0.5*0+0.5*4)+0.5*4)+0.5*2 = 2.5; / (1 - 0.125)
    assert ema[4] == pytest.approx(2.5 / 0.875)


def test_two_plateaus_and_the_drop_between_them() -> None:
    steps = np.arange(1000)
    loss = np.where(steps < 300, 3.0, np.where(steps < 320, 3.0 - (steps - 300) * 0.1, 1.0))
    loss = loss + 0.001 * np.sin(steps)  # noise far below the threshold
    plateaus = find_plateaus(steps, loss, threshold=0.02, mode="rel", patience=100)
    assert len(plateaus) == 2
    first, second = plateaus
    assert first.start_step <= 5 and 295 <= first.end_step <= 301 and not first.open
    assert first.mean_loss == pytest.approx(3.0, abs=0.01)
    assert 315 <= second.start_step <= 320 and second.end_step == 999 and second.open
    assert second.mean_loss == pytest.approx(1.0, abs=0.01)
    (drop,) = plateau_drops(plateaus)
    assert drop["drop"] == pytest.approx(2.0, abs=0.02)
    assert drop["from_step"] == first.end_step and drop["to_step"] == second.start_step


@pytest.mark.parametrize(
    ("threshold", "mode", "patience", "count"),
    [
        (0.02, "rel", 100, 2),
        (0.02, "rel", 400, 1),  # only the final 680-step stretch is long enough
        (2.5, "abs", 100, 1),  # a 2.0 drop is no improvement at an absolute threshold of 2.5
        (0.0, "rel", 100, 2),
    ],
)
def test_plateau_parameters(threshold: float, mode: str, patience: int, count: int) -> None:
    steps = np.arange(1000)
    loss = np.where(steps < 300, 3.0, np.where(steps < 320, 3.0 - (steps - 300) * 0.1, 1.0))
    assert len(find_plateaus(steps, loss, threshold=threshold, mode=mode, patience=patience)) == count


def test_small_drops_merge_into_one_plateau() -> None:
    """A slow power-law tail and a noisy plateau are not landmarks; the 2-nat drop between two levels is."""
    steps = np.arange(1, 4001)
    tail = find_plateaus(steps, 1 + 4 * steps**-0.5, threshold=0.02, patience=200)
    assert len(tail) > 2 and len(merge_plateaus(tail, 0.1)) == 1  # each step down is about 0.02
    levels = np.where(steps < 1500, 3.0, np.where(steps < 1520, 3.0 - (steps - 1500) * 0.1, 1.0))
    levels[:1500] -= np.where(steps[:1500] > 700, 0.05, 0.0)  # a spurious 0.05 step inside the high plateau
    found = find_plateaus(steps, levels, threshold=0.01, patience=100)
    assert len(found) == 3
    merged = merge_plateaus(found, 0.1)
    assert len(merged) == 2 and merged[0].start_step == 1 and merged[0].end_step == found[1].end_step
    (drop,) = plateau_drops(merged)
    assert drop["drop"] == pytest.approx(2.0, abs=0.05)


def test_steadily_falling_loss_has_no_plateau() -> None:
    steps = np.arange(1000)
    assert find_plateaus(steps, 3.0 * 0.99**steps, threshold=0.02, patience=100) == []


def test_epoch_start_drops_against_validation_change() -> None:
    # 3 epochs of 100 steps: train loss steps down by 0.5 at each epoch start,
    # held-out loss rises by 0.1 after each boundary (memorisation).
    steps = np.arange(300)
    epochs = steps / 100.0
    train = 3.0 - 0.5 * np.floor(epochs)
    eval_steps = np.arange(0, 300, 25)
    eval_loss = 2.0 + 0.1 * np.floor(eval_steps / 100.0)
    gaps = epoch_boundary_gaps(steps, epochs, train, eval_steps, eval_loss, window=20)
    assert [g["step"] for g in gaps] == [100, 200]
    assert [g["epoch"] for g in gaps] == [1, 2]
    for g in gaps:
        assert g["train_step"] == pytest.approx(-0.5)
        assert g["val_change"] == pytest.approx(0.1)
        assert g["gap"] == pytest.approx(0.6)


def test_a_shared_trend_is_no_memorisation_gap() -> None:
    """Train and held-out loss falling together: the two differences span the same stretch and cancel."""
    steps = np.arange(300)
    trend = 3.0 - 0.002 * steps
    eval_steps = np.arange(0, 300, 25)
    gaps = epoch_boundary_gaps(steps, steps / 100.0, trend, eval_steps, 3.0 - 0.002 * eval_steps, window=20)
    assert [g["gap"] for g in gaps] == pytest.approx([0.0, 0.0], abs=0.003)


def test_epoch_gap_without_an_eval_after_the_window() -> None:
    steps = np.arange(120)
    gaps = epoch_boundary_gaps(steps, steps / 100.0, np.ones(120), np.array([0, 50]), np.array([2.0, 2.0]), window=30)
    assert len(gaps) == 1 and gaps[0]["val_change"] is None and gaps[0]["gap"] is None
    assert gaps[0]["train_step"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("loss", "clamped", "expected"),
    [
        (4.0, False, 8.8e13 / 4.0 ** (1 / 0.076)),
        (2.0, False, 8.8e13 / 2.0 ** (1 / 0.076)),
        # under the floor: clamped to it, never an exploding estimate
        (0.05, True, 8.8e13),
    ],
)
def test_effective_params(loss: float, clamped: bool, expected: float) -> None:
    est = effective_params(loss, alpha_n=0.076, n_c=8.8e13, loss_floor=1.0)
    assert est.clamped is clamped
    assert est.effective_params == pytest.approx(expected)
    assert est.to_dict()["ema_loss"] == loss


def test_effective_params_rejects_a_missing_loss() -> None:
    with pytest.raises(ValueError):
        effective_params(math.nan)
