"""Test-session settings: offline, quiet, isolated Prefect home; shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports prefect / datasets: no network, no telemetry, no ~ state.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="diffmix-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HOME", str(_SESSION_TMP / "hf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

DEV_PARQUET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "commits-dev.parquet"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (only for tests that run flows)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def dev_parquet() -> Path:
    """The real commit sample beside the checkout; tests that need it skip where it is absent."""
    if not DEV_PARQUET.is_file():
        pytest.skip(f"{DEV_PARQUET} not present")
    return DEV_PARQUET
