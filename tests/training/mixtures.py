"""Small real mixtures for the training tests: synthetic corpora built and mixed by the project's own stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffmix.mixers.mixture import build_mixture
from diffmix.mixers.recipe import parse_recipe
from diffmix.pipelines.build import build_synthetic, prepare_build
from diffmix.schemas.config import load_build_config
from diffmix.training.config import TrainConfig, load_train_config

# Two context lines, the answer always the second: a 0.1M-parameter model learns it in ~300 steps.
COPY_URI = "synthetic:copy?lines=2&length=2..3&n=1000&test=64&seed=0"


def synthetic_corpus(uri: str, out: Path, **config: Any) -> Path:
    """`diffmix build --input URI --out OUT` for a synthetic source (train and test splits)."""
    build_synthetic(prepare_build([uri], out, load_build_config(None, **config)))
    return out


def mix(
    out: Path,
    sources: dict[str, Path],
    samples: int,
    weights: Any = "uniform",
    global_batch_size: int = 16,
    max_repetition: float = 1,
    shard_bytes: int = 8 << 10,
    index_only: bool = False,
    where: dict[str, str] | None = None,
) -> Path:
    """`diffmix mix` of the sources' train splits (those rows `where` selects, per source) under a constant schedule."""
    recipe = parse_recipe(
        {
            "name": out.name,
            "seed": 0,
            "global_batch_size": global_batch_size,
            "budget": {"samples": samples},
            "sources": [
                {"name": name, "path": str(path), "max_repetition": max_repetition, **({"where": where[name]} if where and name in where else {})}
                for name, path in sources.items()
            ],
            "schedule": {"type": "constant", "weights": weights},
        },
        base_dir=out.parent,
    )
    build_mixture(recipe, out, index_only=index_only, shard_bytes=shard_bytes)
    return out


def tiny_config(**overrides: Any) -> TrainConfig:
    """A ~0.1M-parameter model, one thread (the 2 cores are shared), no progress bar."""
    base = {
        "steps": 40,
        "batch_size": 16,
        "lr": 3e-3,
        "eval_interval": 20,
        "checkpoint_interval": 20,
        "warmup_steps": 10,
        "progress": False,
        "device": "cpu",
        "threads": 1,
        "model.n_layer": 2,
        "model.d_model": 64,
        "model.n_head": 4,
        "model.block_size": 48,
        "probes.samples": 32,
        "probes.batch_size": 32,
        "skills.plateau_patience": 20,
        "skills.epoch_window": 5,
        "max_eval_fraction": 1.0,  # tiny runs: fixed eval costs dominate, no warning
    }
    base.update(overrides)
    return load_train_config(None, **base)
