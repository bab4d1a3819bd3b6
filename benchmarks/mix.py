"""Mixture benchmarks (issue 5): the blend index, and writing a mixed dataset vs the pyarrow floor.

    .venv/bin/python benchmarks/mix.py [--out benchmarks/results/mix.md] [--repeat 3] [--work DIR]

1. Blend index: 10,000,000 positions over 5 sources with 3 stages (target <= 2 s):
   plan + Hamilton counts + the within-one-sample interleave + per-epoch rows.
   The one-off numba compile (cached on disk after the first run) is start-up,
   reported on its own line.
2. Writing a mixture from the dev corpus (../shared/data/commits-dev.parquet,
   made into four document sources, one per repository) at >= 50 % of the
   bandwidth of pyarrow writing the same rows as one IPC stream, measured in
   the same run: the floor reads the same source shards (memory-mapped), takes
   the mixture's rows in training order and writes them with
   `pa.ipc.new_stream` (no hashes, no fsync, no manifest). `build_mixture` is
   timed end to end (source sha256 checks, selection, index, gather, shards
   written atomically with fsync, sha256 of every shard, manifest).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import yaml

from diffmix.mixers.blend import blend, runs_for_plan, source_rows
from diffmix.mixers.mixture import MixtureReader, build_mixture
from diffmix.mixers.recipe import parse_recipe, plan_schedule
from diffmix.pipelines.io import read_ipc_stream, sha256_json
from diffmix.pipelines.shards import (
    load_table,
    shard_paths,
    write_manifest,
    write_table_shards,
)
from diffmix.schemas.manifest import Counts, Manifest

ROOT = Path(__file__).resolve().parents[1]
DEV_PARQUET = ROOT.parent / "shared" / "data" / "commits-dev.parquet"


def index_recipe(n: int) -> dict:
    names = ["code", "docs", "arith", "copy", "edit"]
    return {
        "name": "bench-index",
        "seed": 0,
        "global_batch_size": 32,
        "budget": {"samples": n},
        "sources": [{"name": s, "path": s, "max_repetition": 100} for s in names],
        "schedule": {
            "type": "stages",
            "stages": [
                {"start": 0, "weights": {"code": 0.5, "docs": 0.2, "arith": 0.2, "copy": 0.05, "edit": 0.05}},
                {"start": 0.4, "weights": "uniform"},
                {"start": 0.8, "weights": {"temperature": 0.5}},
            ],
        },
    }


def time_index(n: int, sizes: np.ndarray) -> dict[str, float]:
    recipe = parse_recipe(index_recipe(n))
    t0 = time.perf_counter()
    plan = plan_schedule(recipe, sizes)
    runs = runs_for_plan(plan)
    t1 = time.perf_counter()
    index = blend(runs, len(sizes))
    t2 = time.perf_counter()
    rows = source_rows(index, plan.names, sizes, recipe.seed)
    t3 = time.perf_counter()
    assert len(rows) == n
    return {"plan": t1 - t0, "interleave": t2 - t1, "rows": t3 - t2, "total": t3 - t0}


def dev_sources(work: Path) -> dict[str, Path]:
    """The dev commits as four document sources (one per repository), like a built corpus."""
    commits = pl.read_parquet(DEV_PARQUET).filter(pl.col("old_contents").is_not_null() & pl.col("new_contents").is_not_null())
    prompt = pl.concat_str(
        [pl.lit("<NME> "), pl.col("new_file"), pl.lit("\n<BEF> "), pl.col("old_contents"),
         pl.lit("\n<MSG> "), pl.col("message").fill_null(""), pl.lit("\n<DFF> ")]
    )
    documents = commits.select(
        pl.concat_str([pl.col("commit"), pl.lit(":"), pl.col("new_file")]).alias("doc_id"),
        pl.concat_str([prompt, pl.col("new_contents")]).alias("text"),
        pl.lit("whole_file_v0").alias("format"),
        prompt.str.len_chars().cast(pl.Int32).alias("target_start"),
        pl.lit("train").alias("split"),
        pl.col("repos").str.split("/").list.last().str.replace_all("[^A-Za-z0-9]", "").alias("source"),
        pl.col("lang"),
    )
    out = {}
    for (name,), part in documents.group_by("source", maintain_order=True):
        table = part.to_arrow().cast(
            pa.schema([pa.field(f.name, pa.large_string() if f.name == "text" else f.type) for f in part.to_arrow().schema])
        )
        directory = work / "sources" / name
        entries = write_table_shards(directory, "data", table)
        write_manifest(
            directory,
            Manifest(
                kind="corpus", config={"bench": name}, config_hash=sha256_json({"bench": name}), inputs=[],
                counts=Counts.model_validate({"in": table.num_rows, "kept": table.num_rows}),
                columns=table.column_names, shards=entries,
            ),
        )
        out[name] = directory
    return out


def write_recipe(work: Path, sources: dict[str, Path], samples: int) -> Path:
    names = sorted(sources)
    data = {
        "name": "bench-write",
        "seed": 0,
        "global_batch_size": 32,
        "budget": {"samples": samples},
        "sources": [{"name": n, "path": str(sources[n]), "max_repetition": 3} for n in names],
        "schedule": {
            "type": "stages",
            "stages": [
                {"start": 0, "weights": "proportional"},
                {"start": 0.5, "weights": "uniform"},
                {"start": 0.9, "weights": {"temperature": 0.5}},
            ],
        },
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def floor_write(sources: list[Path], order: pa.Table, path: Path) -> int:
    """pyarrow alone: read the source shards, take the mixture's rows in order, write one IPC stream."""
    tables = []
    for directory in sources:
        tables.append(pa.concat_tables([read_ipc_stream(p, ["doc_id", "text", "format", "target_start"]) for p in shard_paths(directory)]))
    combined = pa.concat_tables(tables).combine_chunks()
    gathered = combined.take(order.column("row"))
    table = pa.Table.from_arrays(
        [order.column("position"), order.column("source"), order.column("phase"), order.column("source_row"), *gathered.columns],
        names=["position", "source", "phase", "source_row", *gathered.column_names],
    )
    with pa.OSFile(str(path), "wb") as f:
        with pa.ipc.new_stream(f, table.schema) as writer:
            writer.write_table(table, max_chunksize=1024)
    return path.stat().st_size


def mixture_order(out: Path, sources: dict[str, Path]) -> pa.Table:
    """The mixture's rows as (position, source, phase, source_row, row of the concatenated sources)."""
    index = MixtureReader(out).rows(0, len(MixtureReader(out)), ["position", "source", "phase", "source_row"])
    names = [s.name for s in MixtureReader(out).sources]
    sizes = [load_table(sources[n], ["doc_id"]).num_rows for n in names]
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ids = pa.compute.index_in(index.column("source"), pa.array(names)).to_numpy()
    rows = base[ids] + index.column("source_row").to_numpy()
    return index.append_column("row", pa.array(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the Markdown here (the committed write-up is benchmarks/results/mix.md)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20_000, help="mixture size for the write benchmark")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    lines = [
        "# Mixture benchmarks (`benchmarks/mix.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other "
        f"engineers while measuring: timings are noisy), no GPU; Python {platform.python_version()}, "
        f"pyarrow {pa.__version__}, numpy {np.__version__}.",
        "",
    ]

    # 1. blend index -------------------------------------------------------------------
    sizes = np.array([4_000_000, 1_000_000, 500_000, 200_000, 100_000])
    t0 = time.perf_counter()
    time_index(1000, sizes)  # numba compile (or load from its on-disk cache)
    startup = time.perf_counter() - t0
    runs = [time_index(10_000_000, sizes) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["total"])
    median = statistics.median(r["total"] for r in runs)
    lines += [
        "## Blend index: 10,000,000 positions, 5 sources, 3 stages (target <= 2 s)",
        "",
        "| part | best of %d (s) |" % args.repeat,
        "|---|---|",
        f"| plan (schedule, Hamilton counts) | {best['plan']:.3f} |",
        f"| interleave (windows + earliest-deadline-first) | {best['interleave']:.3f} |",
        f"| rows (per-epoch seeded permutations) | {best['rows']:.3f} |",
        f"| **total** | **{best['total']:.3f}** (median {median:.3f}) |",
        f"| start-up: numba compile / cache load (once per process) | {startup:.3f} |",
        "",
    ]
    print("\n".join(lines[-11:]), flush=True)

    # 2. writing a mixture vs the pyarrow floor ---------------------------------------------
    if not DEV_PARQUET.is_file():
        lines += ["## Writing a mixture", "", f"skipped: {DEV_PARQUET} not present", ""]
    else:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="diffmix-bench-mix-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            sources = dev_sources(work)
            recipe = write_recipe(work, sources, args.samples)
            build_mixture(recipe, work / "warm")  # warm the page cache and the compile cache
            order = mixture_order(work / "warm", sources)
            floor_times, build_times, index_times = [], [], []
            floor_bytes = 0
            for j in range(args.repeat):
                t0 = time.perf_counter()
                floor_bytes = floor_write([sources[n] for n in sorted(sources)], order, work / "floor.arrow")
                floor_times.append(time.perf_counter() - t0)
                (work / "floor.arrow").unlink()
                t0 = time.perf_counter()
                manifest = build_mixture(recipe, work / f"mix{j}")
                build_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                build_mixture(recipe, work / f"index{j}", index_only=True)
                index_times.append(time.perf_counter() - t0)
                shutil.rmtree(work / f"mix{j}")
                shutil.rmtree(work / f"index{j}")
            mix_bytes = sum(s.bytes for s in manifest.shards)
            input_bytes = sum(p.stat().st_size for d in sources.values() for p in (d / "data").glob("*.arrow"))
            floor_bw = floor_bytes / min(floor_times) / 1e6
            build_bw = mix_bytes / min(build_times) / 1e6
            lines += [
                f"## Writing a mixture from the dev corpus ({args.samples:,} samples, 4 sources, 3 stages)",
                "",
                f"Input: {len(sources)} sources, {input_bytes / 1e6:,.0f} MB of shards; output {mix_bytes / 1e6:,.0f} MB "
                f"in {len(manifest.shards)} shards. Best of {args.repeat} (all runs: floor "
                + ", ".join(f"{t:.2f}" for t in floor_times)
                + " s; build "
                + ", ".join(f"{t:.2f}" for t in build_times)
                + " s).",
                "",
                "| what | time (s) | MB/s written |",
                "|---|---|---|",
                f"| floor: pyarrow read + take + one IPC stream | {min(floor_times):.2f} | {floor_bw:,.0f} |",
                f"| `build_mixture` end to end | {min(build_times):.2f} | {build_bw:,.0f} |",
                f"| `build_mixture(index_only=True)` | {min(index_times):.2f} | |",
                "",
                f"**Bandwidth ratio build / floor: {build_bw / floor_bw:.0%}** best of each (target >= 50 %); "
                f"{statistics.median(floor_times) / statistics.median(build_times):.0%} from the medians.",
                "",
                "The floor memory-maps the same source shards, gathers the mixture's rows in training order "
                "(one `take` over the sources' columns, made contiguous) and writes one IPC stream: no hashes, "
                "no fsync. `build_mixture` adds the sha256 of every source shard (inputs are verified before "
                "use), `where`/split selection, planning and the blend index, shards written atomically "
                "(temporary file, fsync, rename) with their sha256, the audit and the manifest. Both gather "
                "through one contiguous copy of the sources' document columns, so peak memory is about the "
                "sources' size plus one output shard.",
                "",
            ]
        finally:
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
