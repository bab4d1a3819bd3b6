"""Learning-rate multipliers of each schedule at crafted steps."""

from __future__ import annotations

import math

import pytest

from diffmix.training.config import TrainConfig
from diffmix.training.schedule import lr_multiplier


def _config(schedule: str, **kw: object) -> TrainConfig:
    return TrainConfig(schedule=schedule, steps=1000, warmup_steps=100, min_lr_ratio=0.1, **kw)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 1 / 101),
        ("constant", 49, 50 / 101),
        ("constant", 100, 1.0),
        ("constant", 999, 1.0),
        ("cosine", 0, 1 / 101),
        ("cosine", 100, 1.0),
        ("cosine", 999, 0.1),  # the last step reaches min_lr_ratio
        ("cosine", 100 + 899 // 2, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (899 // 2) / 899))),
        # 1cycle: from 1/25 up to the peak over 25% of the run, then down to 1/25/1e4
        ("onecycle", 0, 1 / 25),
        ("onecycle", 250, 1.0),
        ("onecycle", 125, 1 / 25 + (1 - 1 / 25) * 0.5),
        ("onecycle", 999, 1 / 25 / 1e4),
        # cyclic with 200 steps per epoch: restarts at each epoch start (after warmup)
        ("cyclic", 200, 1.0),
        ("cyclic", 300, 0.55),
        ("cyclic", 400, 1.0),
        ("cyclic", 399, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 199 / 200))),
        ("cyclic", 50, 51 / 101 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 200)))),
    ],
)
def test_lr_multiplier(schedule: str, step: int, expected: float) -> None:
    assert lr_multiplier(step, _config(schedule), steps_per_epoch=200.0) == pytest.approx(expected)
