"""Fixtures of the training tests: a copy-task mixture on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.mixtures import COPY_URI, synthetic_source, write_corpus, write_mixture


@pytest.fixture
def copy_mixture(tmp_path: Path) -> Path:
    """The copy task as a corpus directory (train + test) mixed alone, in shards of about 8 KiB."""
    docs = synthetic_source(COPY_URI)
    source = write_corpus(tmp_path / "copy-src", docs)
    return write_mixture(tmp_path / "mix", {"copy": (source, docs)}, shard_bytes=8 << 10)
