"""Prefect flows: thin orchestration over the stage functions in the packages.

Data stages fan out on Dask through prefect-dask's `DaskTaskRunner` (a
`LocalCluster` sized by `workers`, or an existing scheduler at `dask_address`).
Every task is a plain function call; the functions know nothing of Prefect.

With no `PREFECT_API_URL`, `prefect_api()` starts one local Prefect server for
the whole command (SQLite under PREFECT_HOME) and hands its URL to the Dask
workers; otherwise each worker process would start a temporary server of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from diffmix.errors import DiffmixError
from diffmix.pipelines import build as corpus
from diffmix.schemas.config import load_build_config

RETRIES = 2


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed task unless its input is bad (a DiffmixError will fail again)."""
    try:
        state.result()
    except DiffmixError:
        return False
    except Exception:
        return True
    return False


def dask_runner(workers: int = 2, dask_address: str | None = None) -> DaskTaskRunner:
    """A LocalCluster of `workers` single-threaded processes, or an existing scheduler."""
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"},
    )


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Use the configured Prefect API, or run one local server for this process and its workers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _flush_run_logs()  # send buffered run logs while the server is still up
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def _flush_run_logs() -> None:
    import logging

    from prefect.logging.handlers import APILogHandler

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, APILogHandler):
                handler.flush()


def _progress(futures: list[Any], label: str) -> list[Any]:
    """Wait for futures with a progress bar; return their results in submission order."""
    results: dict[int, Any] = {}
    order = {id(f): i for i, f in enumerate(futures)}
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, disable=not os.isatty(2)) as bar:
        job = bar.add_task(label, total=len(futures))
        for future in as_completed(futures):
            results[order[id(future)]] = future.result()
            bar.advance(job)
    return [results[i] for i in range(len(futures))]


# --- corpus build ---------------------------------------------------------------

stage_source_task = task(corpus.stage_source, name="stage_source", retries=RETRIES, retry_condition_fn=_transient, cache_policy=NO_CACHE)
process_partition_task = task(corpus.process_partition, name="process_partition", retries=RETRIES, retry_condition_fn=_transient, cache_policy=NO_CACHE)
write_shard_task = task(corpus.write_data_shard, name="write_shard", retries=RETRIES, retry_condition_fn=_transient, cache_policy=NO_CACHE)


@flow(name="build_corpus", task_runner=ThreadPoolTaskRunner(max_workers=1))
def build_corpus(
    inputs: list[str],
    out: str,
    config_path: str | None = None,
    overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Commits -> filtered, formatted documents -> sharded Arrow dataset with a manifest."""
    config = load_build_config(config_path, **(config_overrides or {}))
    plan = corpus.prepare_build(inputs, out, config, overwrite=overwrite)
    if plan.complete:
        return corpus.read_manifest(plan.out).to_json_dict()
    try:
        if plan.synthetic:
            return corpus.build_synthetic(plan).to_json_dict()
        streams = corpus.stream_source_indices(plan)
        staged_futures = [stage_source_task.submit(plan, i) for i in streams]
        staged = dict(zip(streams, _progress(staged_futures, "ingest")))
        parts = corpus.plan_partitions(plan, staged)
        stats = _progress([process_partition_task.submit(plan, p) for p in parts], "documents")
        specs = corpus.decide(plan, parts)
        shards = _progress([write_shard_task.submit(plan, s) for s in specs], "shards")
        return corpus.finalize(plan, parts, stats, shards).to_json_dict()
    except DiffmixError:
        corpus.discard_incomplete(plan)
        raise


def run_build_corpus(
    inputs: list[str],
    out: str,
    config_path: str | None = None,
    workers: int = 2,
    dask_address: str | None = None,
    overwrite: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the `build_corpus` flow on Dask (the CLI's and the demo's entry point).

    Inputs are checked before any server or cluster starts, so bad input fails at once.
    """
    config = load_build_config(config_path, **(config_overrides or {}))
    corpus.check_inputs(inputs, out, config)
    runner = dask_runner(workers, dask_address)
    with prefect_api():
        return build_corpus.with_options(task_runner=runner)(
            inputs, str(Path(out)), config_path, overwrite, config_overrides
        )
