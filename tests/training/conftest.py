"""Fixtures of the training tests: a copy-task corpus and its mixture, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.mixtures import COPY_URI, mix, synthetic_corpus


@pytest.fixture(scope="session")
def copy_mixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The copy task (1,000 train documents, 64 test) mixed alone, one pass, in shards of about 8 KiB."""
    root = tmp_path_factory.mktemp("copy")
    source = synthetic_corpus(COPY_URI, root / "copy-src")
    return mix(root / "mix", {"copy": source}, samples=1000)
