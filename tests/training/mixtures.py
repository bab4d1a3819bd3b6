"""Small on-disk mixtures for the training tests (models under 1M parameters learn the copy task in seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from diffmix.mixers.synthetic import parse_synthetic_uri, synthetic_documents
from diffmix.pipelines.io import sha256_json
from diffmix.pipelines.shards import write_manifest, write_table_shards
from diffmix.schemas.manifest import Counts, Manifest
from diffmix.training.config import TrainConfig, load_train_config

COPY_URI = "synthetic:copy?lines=2&length=2..3&n=1000&test=64&seed=0"


def synthetic_source(uri: str) -> pa.Table:
    """A synthetic source's documents (train and test splits), from the shared generators."""
    return synthetic_documents(parse_synthetic_uri(uri))


def _manifest(kind: str, table: pa.Table, entries, config: dict) -> Manifest:
    return Manifest(
        kind=kind,
        config=config,
        config_hash=sha256_json(config),
        inputs=[],
        counts=Counts.model_validate({"in": table.num_rows, "kept": table.num_rows}),
        columns=table.column_names,
        shards=entries,
    )


def write_corpus(directory: Path, table: pa.Table) -> Path:
    entries = write_table_shards(directory, "data", table, target_bytes=1 << 20)
    write_manifest(directory, _manifest("corpus", table, entries, {"test": True}))
    return directory


def write_mixture(directory: Path, sources: dict[str, tuple[Path | str, pa.Table]], repeat: int = 1, shard_bytes: int = 1 << 20) -> Path:
    """Interleave each source's train documents round-robin (`repeat` passes) as a mixture directory.

    A source is (dataset directory or `synthetic:` URI, its documents).
    """
    parts = []
    for name, (_, docs) in sorted(sources.items()):
        train = docs.filter(pa.compute.equal(docs.column("split"), "train"))
        n = train.num_rows
        parts.append(
            pa.table(
                {
                    "source": [name] * n,
                    "phase": pa.array([0] * n, pa.int32()),
                    "source_row": pa.array(np.arange(n), pa.int64()),
                    "doc_id": train.column("doc_id"),
                    "text": train.column("text"),
                    "format": train.column("format"),
                    "target_start": train.column("target_start"),
                }
            )
        )
    # round-robin over sources by index within source, repeated
    interleaved = pa.concat_tables(parts)
    order = np.argsort(np.concatenate([np.arange(p.num_rows) * len(parts) + i for i, p in enumerate(parts)]), kind="stable")
    table = interleaved.take(np.tile(order, repeat))
    table = table.add_column(0, "position", pa.array(np.arange(table.num_rows), pa.int64()))
    entries = write_table_shards(directory, "data", table, target_bytes=shard_bytes)
    config = {"sources": {name: {"path": str(path)} for name, (path, _) in sources.items()}}
    write_manifest(directory, _manifest("mixture", table, entries, config))
    return directory


def tiny_config(**overrides) -> TrainConfig:
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
