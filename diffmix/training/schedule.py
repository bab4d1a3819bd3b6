"""Learning-rate schedules as pure multipliers of the peak rate.

`lr_multiplier(step, ...)` is what `torch.optim.lr_scheduler.LambdaLR` calls
(step = optimiser steps taken so far), so the scheduler's state is one integer
and a resumed run gets exactly the same rates.

* constant: linear warmup, then 1;
* cosine: linear warmup, then cosine down to `min_lr_ratio` at the last step;
* onecycle: Smith's 1cycle as `torch.optim.lr_scheduler.OneCycleLR` shapes it
  (cosine up from 1/div over `onecycle_pct` of the run, cosine down to
  1/(div * final_div)); momentum is not cycled;
* cyclic: linear warmup, then a cosine from 1 to `min_lr_ratio` over every
  epoch, restarting at each epoch start (the schedule whose epoch-boundary
  jumps confound the memorisation gap: compare against constant).
"""

from __future__ import annotations

import math

from diffmix.training.config import TrainConfig


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def lr_multiplier(step: int, config: TrainConfig, steps_per_epoch: float) -> float:
    total = config.steps
    if config.schedule == "onecycle":
        up = max(1.0, config.onecycle_pct * total)
        low = 1.0 / config.onecycle_div
        if step < up:
            return _cosine(low, 1.0, step / up)
        return _cosine(1.0, low / config.onecycle_final_div, (step - up) / max(1.0, total - 1 - up))
    warm = config.warmup_steps
    warmup = (step + 1) / (warm + 1) if step < warm else 1.0
    if config.schedule == "constant":
        return warmup
    if config.schedule == "cosine":
        if step < warm:
            return warmup
        return _cosine(1.0, config.min_lr_ratio, (step - warm) / max(1, total - 1 - warm))
    # cyclic: one cosine per epoch
    within = (step / steps_per_epoch) % 1.0 if steps_per_epoch > 0 else 0.0
    return warmup * _cosine(1.0, config.min_lr_ratio, within)
