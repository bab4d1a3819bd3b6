"""Corpus build of the whole dev Parquet against the I/O floor, measured in one run.

    python benchmarks/build.py [--workers 1 2] [--repeat N] [--skip-diff] [--skip-one-group] [--skip-ceiling] [--config FILE]

Prints (Markdown tables):
* the floor: pyarrow reading the Parquet and writing the same rows as one Arrow IPC stream,
  to a new file each time (as a build writes its outputs) and to the same file each time
  (faster on this VM, which takes freed memory back: see `floor`);
* `diffmix build` with 1 and 2 Dask workers: wall time of the full input and of a
  tiny input (50 rows: the fixed start-up of the CLI, the Dask cluster and the
  flow), data work = T(full) - T(tiny), its ratio to both floors, peak RSS of any
  process, and the 2-worker speed-up; with `--repeat N` every build runs N times (the
  repeats outermost, so 1 and 2 workers share each sitting), each full run paired with
  the tiny run just before it, and the table gives the best of the N data works (as the
  floor is the best of 5) and their median;
* the memory bus at the start and at the end: one numpy copy stream alone, and each of two at
  once (on a VM the share two busy cores get changes by the minute: a record of the host's state);
* the ceiling of the 2-vs-1 ratio in the same sitting: the build's partitions alone, no Prefect
  and no Dask, in 1 and 2 plain processes set up as the workers are (`partition_ceiling`);
* where the time of the last full build on each worker count went, from the flow's own task
  runs as Prefect recorded them: each phase's span and its tasks' summed run time;
* the same build of the same rows rewritten as one row group (what pyarrow's and
  pandas' writers give below 1M rows: every partition is a slice of that group),
  on the most workers, against its own floor;
* the diff engine (git's xdiff, vendored and compiled) against libgit2's own call of the
  same xdiff (`pygit2.Patch.create_from`, which hashes both texts first) and
  `difflib.unified_diff`, per pair, with a count of the pairs where diffmix and libgit2 differ.

One Prefect server is started for the whole run (its start-up is printed on its own line).
Targets (issue 2): data work <= 4x the floor (new files) on 2 workers, peak RSS <= 2 GB, 2 workers >= 1.6x faster than 1.
"""

from __future__ import annotations

import argparse
import difflib
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, memory_bus, require_dev_data, run_measured, table, timed  # noqa: E402


def floor(parquet: Path, scratch: Path) -> dict[str, tuple[float, float]]:
    """Best and median of 5 reads of the Parquet, each written as one IPC stream: to the same file
    each time, then, after a pause, to a new file each time (the new files kept until all 5 are done).

    They differ by page-cache pages, not by work. This VM hands freed memory back to its host
    (virtio-balloon free page reporting: free 2 MB blocks, about 2 s after they are freed), and
    touching such a page again is dear: 500 MB written into a new file took 0.38-1.27 s here, the
    same again within a second of deleting the first 0.09 s. Rewriting one file reuses the pages
    its truncation has just freed; a build writes new files (its staged documents, then its
    shards), as the new-file floor does. The same-file floor is this script's floor up to
    2026-11-23; the pause keeps its freed pages out of the new-file runs.
    """
    result = {}
    for kind in ("same file", "new file"):
        seconds = []
        for i in range(5):
            target = scratch / (f"floor-{i}.arrow" if kind == "new file" else "floor.arrow")
            start = time.perf_counter()
            data = pq.read_table(parquet)
            with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, data.schema) as writer:
                writer.write_table(data)
            seconds.append(time.perf_counter() - start)
            del data
        for target in scratch.glob("floor*.arrow"):
            target.unlink()
        time.sleep(3)
        result[kind] = (min(seconds), statistics.median(seconds))
    return result


def diff_engines(parquet: Path) -> list[list[object]]:
    import pygit2
    from pygit2.enums import DiffOption

    from diffmix.pipelines.diff import diff_texts

    data = pq.read_table(parquet, columns=["old_contents", "new_contents"]).to_pylist()
    pairs = [(r["old_contents"], r["new_contents"]) for r in data if r["old_contents"] is not None and r["new_contents"] is not None and r["old_contents"] != r["new_contents"] and "\x00" not in r["old_contents"] + r["new_contents"]]

    def xdiff() -> list[str]:
        return [diff_texts(old, new).text for old, new in pairs]

    def libgit2() -> list[str]:
        out = []
        for old, new in pairs:
            data = pygit2.Patch.create_from(old, new, context_lines=3, flag=DiffOption.INDENT_HEURISTIC).data
            out.append(data[data.find(b"\n@@ -") + 1 :].decode())
        return out

    def python_difflib() -> None:
        for old, new in pairs:
            "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), n=3))

    t_x, ours = timed(xdiff)
    t_g, theirs = timed(libgit2)
    t_d, _ = timed(python_difflib)
    n = len(pairs)
    differing = sum(a != b for a, b in zip(ours, theirs, strict=True))
    return [
        ["git's xdiff, vendored (diffmix)", n, t_x, 1e3 * t_x / n, 1.0, "-"],
        ["libgit2 via pygit2 (same xdiff, hashes both texts)", n, t_g, 1e3 * t_g / n, t_g / t_x, differing],
        ["difflib.unified_diff", n, t_d, 1e3 * t_d / n, t_d / t_x, "-"],
    ]


def _ceiling_process(plan: Any, parts: list[Any], order: list[int], warm: tuple[Any, list[Any]], taken: Any, barrier: Any, ends: Any) -> None:
    """One process of `partition_ceiling`: set up as `dask_setup` sets up a Dask worker, warmed on
    the 50-row input, then taking partitions from the shared counter in `order` until none is left."""
    try:
        from diffmix.memory import keep_freed_memory

        keep_freed_memory()
        import diffmix.flows  # noqa: F401  (what each Dask worker preloads)
        from diffmix.pipelines import build as corpus

        for part in warm[1]:
            corpus.process_partition(warm[0], part)
        barrier.wait()
        cpu = time.process_time()
        while True:
            with taken.get_lock():
                index, taken.value = taken.value, taken.value + 1
            if index >= len(order):
                break
            corpus.process_partition(plan, parts[order[index]])
        ends.put((time.monotonic(), time.process_time() - cpu))
    except BaseException as exc:  # the parent reports it in one line instead of waiting on the barrier
        barrier.abort()
        ends.put(f"{type(exc).__name__}: {exc}")


def _results(ends: Any, children: list[Any]) -> list[Any]:
    """One result from each child; a child that died without one (killed, crashed) is a one-line exit."""
    results: list[Any] = []
    while len(results) < len(children):
        try:
            results.append(ends.get(timeout=1))
        except queue.Empty:
            if not any(child.is_alive() for child in children) and ends.empty():
                codes = ", ".join(str(child.exitcode) for child in children)
                raise SystemExit(f"the partitions alone (the 2-vs-1 ceiling): a process ended without a result (exit codes {codes})") from None
    return results


def partition_ceiling(parquet: Path, tiny: Path, scratch: Path, config: str | None, processes: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of all processes) of the build's partitions alone, no
    Prefect and no Dask: `processes` plain processes with a Dask worker's environment and set-up
    take them heaviest first from a shared counter, as the flow submits them. Each first runs the
    50-row input's partition, as the start-up run that the build's data work subtracts does, so
    what is timed is the partitions themselves, heap growth included. The ratio of 1 process to 2
    is what the two cores give this code with no orchestration at all: the ceiling of the build's
    2-vs-1 in the same sitting."""
    import multiprocessing

    import dask

    from diffmix.flows import local_worker_env
    from diffmix.pipelines import build as corpus
    from diffmix.schemas.config import load_build_config

    settings = load_build_config(config)

    def planned(source: Path, out: Path) -> tuple[Any, list[Any]]:
        plan = corpus.prepare_build([corpus.resolve_source(str(source)).canonical_uri()], out, settings)
        return plan, corpus.plan_partitions(plan, {})

    outs = [scratch / "ceiling", *(scratch / f"ceiling-warm-{k}" for k in range(processes))]
    plan, parts = planned(parquet, outs[0])
    order = [parts.index(part) for part in corpus.heaviest_first(parts)]
    context = multiprocessing.get_context("spawn")
    taken, barrier, ends = context.Value("i", 0), context.Barrier(processes + 1), context.Queue()
    env = {**{k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}, **local_worker_env(processes)}
    with mock.patch.dict(os.environ, env):  # a spawned process starts with the parent's environment
        children = [context.Process(target=_ceiling_process, args=(plan, parts, order, planned(tiny, out), taken, barrier, ends), daemon=True) for out in outs[1:]]
        for child in children:
            child.start()
    passed = threading.Event()

    def abort_if_one_dies() -> None:  # a process killed while warming up cannot abort the barrier itself
        while not passed.wait(0.5):
            if not all(child.is_alive() for child in children):
                barrier.abort()
                return

    threading.Thread(target=abort_if_one_dies, daemon=True).start()
    try:
        try:
            barrier.wait(timeout=600)
        except threading.BrokenBarrierError:
            pass  # a process failed or died: `_results` reports it
        passed.set()
        start = time.monotonic()
        results = _results(ends, children)
        failed = [result for result in results if isinstance(result, str)]
        if failed:
            raise SystemExit(f"the partitions alone (the 2-vs-1 ceiling) failed: {failed[0]}")
    finally:
        for child in children:
            child.join(timeout=60)
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
    return max(end for end, _ in results) - start, sum(cpu for _, cpu in results)


PHASES = (("documents", "documents "), ("near-dedup", "near-dedup "), ("shards", "data shard "), ("shards", "rejects shard "), ("ingest", "stage input "))


def flow_phases(workers: int) -> list[list[object]]:
    """The latest flow run's timeline (seconds from its start): the span and summed run time of
    each phase's tasks, and what lies between them (planning in the flow, Prefect's hand-offs).
    Read once the benchmark's server has written the last task-run events it received (it
    writes them in batches, `RECORDER_WRITTEN_WITHIN_SECONDS`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    from diffmix.prefect_server import RECORDER_WRITTEN_WITHIN_SECONDS

    time.sleep(RECORDER_WRITTEN_WITHIN_SECONDS)
    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    t0 = run.start_time
    spans: dict[str, list[tuple[float, float, float]]] = {}
    for task in tasks:
        phase = next((name for name, prefix in PHASES if task.name.startswith(prefix)), "other")
        spans.setdefault(phase, []).append(((task.start_time - t0).total_seconds(), (task.end_time - t0).total_seconds(), task.total_run_time.total_seconds()))
    rows, last = [], 0.0
    for phase, runs in sorted(spans.items(), key=lambda item: min(r[0] for r in item[1])):
        first, end = min(r[0] for r in runs), max(r[1] for r in runs)
        rows.append([workers, f"(flow, between) before {phase}", "-", last, first, first - last, "-"])
        rows.append([workers, phase, len(runs), first, end, end - first, sum(r[2] for r in runs)])
        last = end
    flow_end = (run.end_time - t0).total_seconds()
    rows.append([workers, "(flow) after the last task", "-", last, flow_end, flow_end - last, "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs of every build: the table shows the best and the median")
    parser.add_argument("--skip-diff", action="store_true")
    parser.add_argument("--skip-one-group", action="store_true", help="skip the build of the same rows rewritten as one row group")
    parser.add_argument("--skip-ceiling", action="store_true", help="skip the partitions alone in plain processes (the 2-vs-1 ceiling)")
    parser.add_argument("--config", help="a build config (default: the built-in one, every filter on); e.g. benchmarks/configs/filters-off.yaml")
    args = parser.parse_args()
    parquet = require_dev_data()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from diffmix.flows import prefect_api

    print(f"machine: {machine()}")
    print(f"at start, {memory_bus()}")
    print(f"config: {args.config or 'built-in default (every filter, dedup and redaction on)'}\n")
    scratch = Path(tempfile.mkdtemp(prefix="diffmix-bench-"))
    try:
        tiny = scratch / "tiny.parquet"
        pq.write_table(pq.ParquetFile(parquet).read_row_group(0).slice(0, 50), tiny)
        inputs = {"dev Parquet": parquet}
        if not args.skip_one_group:
            # The same rows as one row group: what pyarrow's and pandas' writers give below 1M rows.
            inputs["same rows, one row group"] = scratch / "one-group.parquet"
            pq.write_table(pq.read_table(parquet), inputs["same rows, one row group"], compression="zstd")
        floors = {label: floor(path, scratch) for label, path in inputs.items()}
        rows = pq.ParquetFile(parquet).metadata.num_rows
        row_groups = {label: pq.ParquetFile(path).metadata.num_row_groups for label, path in inputs.items()}
        floor_rows = [[label, rows, row_groups[label], kind, *t] for label, by_kind in floors.items() for kind, t in by_kind.items()]
        print(table(["floor: pyarrow read Parquet + write IPC stream", "rows", "row groups", "written to", "best of 5 s", "median s"], floor_rows))

        start = time.perf_counter()
        with prefect_api() as url:
            print(f"\nstart-up (own line, not in any throughput): local Prefect server {time.perf_counter() - start:.1f} s")
            # No flow-run heartbeats: the flow engine joins their thread, which sleeps in 1 s steps, at
            # each flow end; the wait (0-1 s, set by the flow's length modulo a second) would land in one
            # run and not the other. `diffmix build` on its own server sends none either.
            env = {**os.environ, "PREFECT_API_URL": str(url), "DIFFMIX_FLOW_HEARTBEATS": "0"}
            # Repeats outermost, each build's 50-row and full runs back to back: every data work is
            # a full run less the start-up run just before it, and 1 and 2 workers share each sitting.
            results: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {}
            timelines: dict[int, list[list[object]]] = {}
            ceilings: dict[int, list[tuple[float, float]]] = {}
            for _ in range(args.repeat):
                for label, path in inputs.items():
                    for workers in args.workers if path == parquet else [max(args.workers)]:
                        runs = results.setdefault((label, workers), {"tiny": [], "full": []})
                        for name, source in (("tiny", tiny), ("full", path)):
                            out = scratch / f"out-{name}-{workers}"
                            cmd = [sys.executable, "-m", "diffmix", "build", "--input", str(source), "--out", str(out), "--workers", str(workers)]
                            cmd += ["--config", args.config] if args.config else []
                            runs[name].append(run_measured(cmd, env))
                            shutil.rmtree(out)
                        if path == parquet:
                            timelines[workers] = flow_phases(workers)
                if not args.skip_ceiling:
                    for workers in args.workers:
                        ceilings.setdefault(workers, []).append(partition_ceiling(parquet, tiny, scratch, args.config, workers))
        bench_rows = []
        best: dict[tuple[str, int], float] = {}
        median: dict[tuple[str, int], float] = {}
        for (label, workers), runs in results.items():
            paired = [full - tiny for (full, _), (tiny, _) in zip(runs["full"], runs["tiny"], strict=True)]
            best[label, workers], median[label, workers] = min(paired), statistics.median(paired)
            (best_floor, median_floor), (best_rewrite, median_rewrite) = floors[label]["new file"], floors[label]["same file"]
            rss = max(r for name in runs for _, r in runs[name])
            t_full, t_tiny = (min(t for t, _ in runs[name]) for name in ("full", "tiny"))
            ratios = [best[label, workers] / best_floor, median[label, workers] / median_floor, best[label, workers] / best_rewrite, median[label, workers] / median_rewrite]
            bench_rows.append([label, workers, t_full, t_tiny, best[label, workers], median[label, workers], *ratios, rss])
        print(f"\n{args.repeat} run(s) of each build; data work = each full run less the 50-row run just before it; best of them against the best floor, median against the median floor")
        headers = ["input", "workers", "T(full) best s", "T(tiny) best s = start-up", "data work best s", "median data work s"]
        headers += ["x floor (new file), best", "median", "x floor (same file), best", "median", "peak RSS MB (any process)"]
        print(table(headers, bench_rows))
        if ("dev Parquet", 1) in best and ("dev Parquet", 2) in best:
            one, two = ("dev Parquet", 1), ("dev Parquet", 2)
            print(f"\n2 workers vs 1 on the data work: {best[one] / best[two]:.2f}x (best), {median[one] / median[two]:.2f}x (median)")
        if ceilings:
            print("\nthe partitions alone (no Prefect, no Dask): plain processes set up as the workers are, each warmed on the 50-row input, taking the partitions heaviest first")
            spans = {w: [wall for wall, _ in runs] for w, runs in ceilings.items()}
            cpus = {w: statistics.median(cpu for _, cpu in runs) for w, runs in ceilings.items()}
            print(table(["processes", "best s", "median s", "median CPU s (all threads)"], [[w, min(spans[w]), statistics.median(spans[w]), cpus[w]] for w in sorted(spans)]))
            if 1 in spans and 2 in spans:
                print(
                    f"2 processes vs 1 on the partitions alone: {min(spans[1]) / min(spans[2]):.2f}x (best), "
                    f"{statistics.median(spans[1]) / statistics.median(spans[2]):.2f}x (median): the ceiling of the build's 2 workers vs 1 in this sitting"
                )
        print("\nwhere the last full build's time went (the flow's task runs as Prefect recorded them; seconds from the flow's start)")
        print(table(["workers", "phase", "tasks", "from s", "to s", "wall s", "tasks' summed run s"], [row for w in sorted(timelines) for row in timelines[w]]))
        print(f"\nat the end, {memory_bus()}")
        if not args.skip_diff:
            print()
            print(table(["diff engine", "pairs", "seconds", "ms / pair", "x slower than diffmix", "pairs differing from diffmix"], diff_engines(parquet)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
