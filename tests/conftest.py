"""Test-session settings: offline, quiet, isolated Prefect home; shared fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

# Before anything imports prefect / datasets: no network, no telemetry, no ~ state.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="diffmix-tests-"))
# Removed at exit, after the session's Prefect server has stopped (each run would leave ~5 MB in /tmp).
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
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
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

# A suite started in the background of a non-interactive shell (`cmd &`, `nohup`) inherits Ctrl-C
# ignored, and Python keeps it so; the Ctrl-C tests need what a terminal gives, Python's own handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

# Beside the checkout (../shared, as CI has it), or wherever DIFFMIX_DEV_PARQUET says (a clone elsewhere).
DEV_PARQUET = Path(os.environ.get("DIFFMIX_DEV_PARQUET") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "commits-dev.parquet")


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
        pytest.skip(f"{DEV_PARQUET} not present (set DIFFMIX_DEV_PARQUET to its path)")
    return DEV_PARQUET


def git(cwd: Path, *args: str) -> str:
    """Run the real git CLI (tests build repositories with real commits)."""
    import subprocess

    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "Test Author",
        "GIT_COMMITTER_EMAIL": "author@example.com",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return result.stdout


def commit_files(repo: Path, files: dict[str, str | bytes | None], message: str) -> str:
    """Write (str/bytes) or delete (None) files, commit them all, return the commit id."""
    for name, content in files.items():
        path = repo / name
        if content is None:
            git(repo, "rm", "-q", name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode())
        git(repo, "add", name)
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """An empty git repository with a configured identity."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "core.autocrlf", "false")
    return repo


def damage_first_page(path: Path, column: str) -> None:
    """Overwrite the header of `column`'s first data page in row group 0 (footer left intact)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    offset = next(meta.column(i).data_page_offset for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
