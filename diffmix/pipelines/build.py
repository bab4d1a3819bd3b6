"""The corpus build as plain stage functions (the Prefect flow composes them).

    prepare_build      validate inputs and the output directory, decide what is already done
    stage_source       stream a git / JSONL / HF source into Arrow chunks (one task per source)
    plan_partitions    fixed row ranges of the inputs: the unit of parallel work and of resume
    process_partition  rows -> structural rejects + rendered documents with filter scores
    decide             global decisions (quality filters, dedup) and the shard plan
    write_data_shard   one output shard from the kept rows, in input order
    finalize           rejects, manifest (written last), clean-up

Partitions depend only on the inputs and the config, never on the number of
workers, and each writes its own files under `DIR/.work/` (atomically, its stats
file last), so a killed build resumes where it stopped and gives the same bytes.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from diffmix.errors import DiffmixError
from diffmix.formats.base import get_format
from diffmix.pipelines.document import (
    RENDERED_SCHEMA,
    doc_ids,
    normalized_message,
    render_rows,
    split_expr,
    structural_reason,
)
from diffmix.pipelines.ingest import ParquetSource, Source, StreamSource, SyntheticSource, resolve_source
from diffmix.pipelines.io import read_ipc_stream, read_json, remove_stale_temporaries, write_ipc_stream, write_json
from diffmix.pipelines.shards import (
    DATA_DIR,
    MANIFEST,
    REJECTS_DIR,
    plan_shards,
    read_manifest,
    shard_name,
    verify_files,
    write_manifest,
    write_shard,
    write_table_shards,
)
from diffmix.schemas.columns import COMMIT_SCHEMA, DOCUMENT_SCHEMA, reject_schema
from diffmix.schemas.config import BuildConfig
from diffmix.schemas.manifest import Counts, FileEntry, InputEntry, Manifest

WORK_DIR = ".work"
# Rejects keep ids and metadata; only filter/dedup rejects keep their text (for --refilter).
_REJECT_SCHEMA = reject_schema(DOCUMENT_SCHEMA)


@dataclass(frozen=True)
class Partition:
    """A fixed slice of one input."""

    index: int
    source: int
    path: str  # the Parquet file, or a staged Arrow chunk
    row_group: int | None
    start: int
    stop: int

    @property
    def key(self) -> str:
        return f"p-{self.index:05d}"


@dataclass
class BuildPlan:
    out: Path
    config: BuildConfig
    config_hash: str
    inputs: list[InputEntry]
    uris: list[str]
    complete: bool = False  # the directory already holds this exact build
    synthetic: bool = False  # generated documents: no diffing, no filters

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR

    def sources(self) -> list[Source]:
        return [resolve_source(uri) for uri in self.uris]


@dataclass
class PartitionStats:
    key: str
    rows_in: int
    dropped: dict[str, int] = field(default_factory=dict)
    documents: int = 0


@dataclass
class ShardSpec:
    index: int
    count: int
    pieces: list[tuple[str, list[int]]]  # (partition key, staged row indices kept)


# --- prepare ---------------------------------------------------------------------


def check_inputs(uris: list[str], out: str | Path, config: BuildConfig) -> list[Source]:
    """Every cheap check on the inputs and `--out`, writing nothing."""
    if not uris:
        raise DiffmixError("no --input given")
    sources = [resolve_source(uri) for uri in uris]
    for source in sources:
        source.validate()
    if len({isinstance(s, SyntheticSource) for s in sources}) > 1:
        raise DiffmixError("synthetic inputs cannot be mixed with commit inputs in one build: build them apart, then mix them with a recipe")
    get_format(config.format)  # fail early on an unknown format name
    if Path(out).exists() and not Path(out).is_dir():
        raise DiffmixError(f"{out}: --out exists and is not a directory")
    return sources


def prepare_build(uris: list[str], out: str | Path, config: BuildConfig, overwrite: bool = False) -> BuildPlan:
    """Validate every input and the output directory, then claim `out/.work` for this build."""
    sources = check_inputs(uris, out, config)
    out = Path(out)
    plan = BuildPlan(out, config, config.digest(), [s.input_entry() for s in sources], list(uris))
    plan.synthetic = all(isinstance(s, SyntheticSource) for s in sources)
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        same = manifest.config_hash == plan.config_hash and manifest.inputs == plan.inputs
        if same:
            verify_files(out, manifest.shards + manifest.rejects, check_hashes=False)
            plan.complete = True
            return plan
        if not overwrite:
            raise DiffmixError(f"{out}: holds a different build (config or inputs differ); pass --overwrite or choose another --out")
        shutil.rmtree(out)
    elif out.is_dir() and any(out.iterdir()) and not (out / WORK_DIR).is_dir():
        raise DiffmixError(f"{out}: directory is not empty and is not a diffmix build")
    _reset_work_if_stale(plan)
    return plan


def _reset_work_if_stale(plan: BuildPlan) -> None:
    marker = plan.work / "plan.json"
    identity = {"config_hash": plan.config_hash, "inputs": [i.model_dump() for i in plan.inputs]}
    if marker.is_file() and read_json(marker) != identity:
        shutil.rmtree(plan.work)
    plan.work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(plan.out)
    write_json(marker, identity)


def discard_incomplete(plan: BuildPlan) -> None:
    """After bad input: remove what this unfinished build wrote (a finished one has a manifest)."""
    if not (plan.out / MANIFEST).is_file():
        shutil.rmtree(plan.out, ignore_errors=True)


# --- ingest ----------------------------------------------------------------------


def stream_source_indices(plan: BuildPlan) -> list[int]:
    """Inputs that must be streamed into staged chunks first (all but Parquet)."""
    return [i for i, s in enumerate(plan.sources()) if isinstance(s, StreamSource)]


def stage_source(plan: BuildPlan, source_index: int) -> list[str]:
    """Stream one git / JSONL / HF source into Arrow chunks of `partition_rows` rows."""
    source = plan.sources()[source_index]
    assert isinstance(source, StreamSource)
    folder = plan.work / "ingest" / f"s{source_index:03d}"
    done = folder / "done.json"
    if done.is_file():
        return read_json(done)["chunks"]
    chunks: list[str] = []
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> None:
        path = folder / f"chunk-{len(chunks):05d}.arrow"
        write_ipc_stream(path, pa.concat_tables(tables).combine_chunks())
        chunks.append(str(path))

    for table in source.iter_tables(plan.config):
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= plan.config.partition_rows:
            whole = pa.concat_tables(pending)
            flush([whole.slice(0, plan.config.partition_rows)])
            rest = whole.slice(plan.config.partition_rows)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows or not chunks:
        flush(pending or [COMMIT_SCHEMA.empty_table()])
    write_json(done, {"chunks": chunks})
    return chunks


def plan_partitions(plan: BuildPlan, staged: dict[int, list[str]]) -> list[Partition]:
    """Fixed slices of every input, numbered in input order."""
    partitions: list[Partition] = []
    for i, source in enumerate(plan.sources()):
        if isinstance(source, ParquetSource):
            for piece in source.slices(plan.config.partition_rows):
                partitions.append(Partition(len(partitions), i, str(source.path), piece.row_group, piece.start, piece.stop))
        else:
            for chunk in staged[i]:
                n = _ipc_rows(chunk)
                partitions.append(Partition(len(partitions), i, chunk, None, 0, n))
    return partitions


def _ipc_rows(path: str) -> int:
    with pa.memory_map(path) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def _read_partition(plan: BuildPlan, part: Partition) -> pa.Table:
    source = plan.sources()[part.source]
    if isinstance(source, ParquetSource):
        from diffmix.pipelines.ingest import RowGroupSlice

        assert part.row_group is not None
        return source.read_slice(RowGroupSlice(part.row_group, part.start, part.stop))
    return read_ipc_stream(part.path).slice(part.start, part.stop - part.start)


# --- map -------------------------------------------------------------------------


def _partition_files(plan: BuildPlan, key: str) -> tuple[Path, Path, Path]:
    return (
        plan.work / "docs" / f"{key}.arrow",
        plan.work / "rejects" / f"{key}.arrow",
        plan.work / "stats" / f"{key}.json",
    )


def process_partition(plan: BuildPlan, part: Partition) -> PartitionStats:
    """Turn one slice of commit rows into documents and structural rejects (skipped when done)."""
    docs_path, rejects_path, stats_path = _partition_files(plan, part.key)
    if stats_path.is_file():
        return PartitionStats(**read_json(stats_path))
    table = _read_partition(plan, part)
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(
        pl.Series("doc_id", doc_ids(frame["repos"].to_list(), frame["commit"].to_list(), frame["new_file"].to_list())),
        normalized_message(pl.col("message")).alias("message"),
        pl.col("repos").alias("repo"),
        pl.col("new_file").alias("path"),
        pl.col("old_file").alias("old_path"),
    )
    frame = frame.with_columns(structural_reason(plan.config.max_file_bytes).alias("reason"))
    alive = frame.filter(pl.col("reason").is_null())
    rendered, failures = render_rows(alive, get_format(plan.config.format))
    alive = alive.with_columns(pl.Series("reason", failures, dtype=pl.String))
    ok = [r for r in rendered if r is not None]
    documents = _documents(alive.filter(pl.col("reason").is_null()), ok, plan, source_label(plan.inputs[part.source]))
    rejected = pl.concat([frame.filter(pl.col("reason").is_not_null()), alive.filter(pl.col("reason").is_not_null())])
    write_ipc_stream(docs_path, documents)
    write_ipc_stream(rejects_path, _structural_rejects(rejected))
    stats = PartitionStats(part.key, table.num_rows, dict(sorted(Counter(rejected["reason"].to_list()).items())), documents.num_rows)
    write_json(stats_path, asdict(stats))  # last: marks the partition complete
    return stats


def source_label(entry: InputEntry) -> str:
    """`kind:name` of an input, e.g. `git:diffmix`, `parquet:commits-dev` (the documents' `source`)."""
    name = Path(entry.uri.rstrip("/")).name.split(".")[0] if entry.kind in ("git", "parquet", "jsonl") else entry.uri.split(":", 1)[-1]
    return f"{entry.kind}:{name}"


def _documents(frame: pl.DataFrame, rendered: list[dict[str, Any]], plan: BuildPlan, source: str) -> pa.Table:
    """Commit rows + their rendered columns -> DOCUMENT_SCHEMA (plus filter score columns)."""
    parts = pl.from_arrow(pa.Table.from_pylist(rendered, schema=RENDERED_SCHEMA))
    assert isinstance(parts, pl.DataFrame)
    base = frame.drop("lines_added", "lines_deleted").with_columns(
        pl.lit(plan.config.format).alias("format"),
        pl.lit(source).alias("source"),
        pl.col("old_contents").str.len_chars().cast(pl.Int32).alias("old_chars"),
        pl.col("new_contents").str.len_chars().cast(pl.Int32).alias("new_chars"),
    )
    base = pl.concat([base, parts], how="horizontal")
    split_on = "repo" if plan.config.split.by == "repo" else "commit"
    base = base.with_columns(split_expr(pl.col(split_on), plan.config.split, base[split_on].unique().to_list()).alias("split"))
    return base.select(DOCUMENT_SCHEMA.names).to_arrow().cast(DOCUMENT_SCHEMA)


def _structural_rejects(frame: pl.DataFrame) -> pa.Table:
    ids = frame.select(
        "doc_id", "repo", "commit", "path", "change_type", "lang",
        pl.lit("structural").alias("stage"), "reason", pl.lit(None, dtype=pl.String).alias("detail"),
    )  # fmt: skip
    return _as_rejects(ids.to_arrow())


def _as_rejects(table: pa.Table) -> pa.Table:
    columns = {name: table.column(name) if name in table.column_names else pa.nulls(table.num_rows, _REJECT_SCHEMA.field(name).type) for name in _REJECT_SCHEMA.names}
    return pa.table(columns).cast(_REJECT_SCHEMA)


# --- reduce ----------------------------------------------------------------------


def decide(plan: BuildPlan, parts: list[Partition]) -> list[ShardSpec]:
    """Global decisions over every staged document, then the output shard plan.

    Kept rows stay in input order; shards are cut at about `shard_bytes`.
    """
    owners, rows, sizes = [], [], []
    for number, part in enumerate(parts):
        docs_path, _, _ = _partition_files(plan, part.key)
        lengths = read_ipc_stream(docs_path, ["text"]).column("text")
        kept = np.flatnonzero(np.ones(len(lengths), dtype=bool))
        owners.append(np.full(len(kept), number, dtype=np.int64))
        rows.append(kept)
        sizes.append(pc.binary_length(lengths).to_numpy(zero_copy_only=False)[kept] + 256)
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    size = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    ranges = plan_shards(size, plan.config.shard_bytes)
    specs = []
    for index, (start, stop) in enumerate(ranges):
        # Runs of consecutive rows from the same partition become one piece.
        cuts = [start, *(start + 1 + np.flatnonzero(np.diff(owner[start:stop]))).tolist(), stop]
        pieces = [(parts[int(owner[a])].key, row[a:b].tolist()) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        specs.append(ShardSpec(index, len(ranges), pieces))
    return specs


def write_data_shard(plan: BuildPlan, spec: ShardSpec) -> FileEntry:
    """Gather the shard's rows from the staged partitions and write it atomically."""
    tables = []
    for key, rows in spec.pieces:
        docs_path, _, _ = _partition_files(plan, key)
        tables.append(read_ipc_stream(docs_path).take(pa.array(rows, pa.int64())))
    table = pa.concat_tables(tables).combine_chunks() if tables else DOCUMENT_SCHEMA.empty_table()
    return write_shard(plan.out, f"{DATA_DIR}/{shard_name(spec.index, spec.count)}", table)


def finalize(plan: BuildPlan, parts: list[Partition], stats: list[PartitionStats], shards: list[FileEntry]) -> Manifest:
    """Write rejects and the manifest (last), then drop the work directory."""
    rejects = pa.concat_tables([read_ipc_stream(_partition_files(plan, p.key)[1]) for p in parts]).combine_chunks()
    reject_entries = write_table_shards(plan.out, REJECTS_DIR, rejects, plan.config.shard_bytes)
    rows_in = sum(s.rows_in for s in stats)
    structural = Counter[str]()
    for s in stats:
        structural.update(s.dropped)
    kept = sum(e.rows for e in shards)
    counts = Counts(
        rows_in=rows_in,
        kept=kept,
        dropped=dict(sorted(structural.items())),
        by_stage={"structural": {"in": rows_in, "kept": sum(s.documents for s in stats), "dropped": dict(sorted(structural.items()))}},
    )
    if not counts.balanced():
        raise AssertionError(f"accounting identity broken: {counts}")
    splits = Counter[str]()
    for entry in shards:
        splits.update(read_ipc_stream(plan.out / entry.path, ["split"]).column("split").to_pylist())
    manifest = Manifest(
        kind="corpus",
        config=plan.config.model_dump(mode="json"),
        config_hash=plan.config_hash,
        inputs=plan.inputs,
        counts=counts,
        columns=DOCUMENT_SCHEMA.names,
        shards=shards,
        rejects=reject_entries,
        splits=dict(sorted(splits.items())),
        formats={plan.config.format: kept},
    )
    write_manifest(plan.out, manifest)
    shutil.rmtree(plan.work, ignore_errors=True)
    return manifest


# --- synthetic sources -----------------------------------------------------------


def build_synthetic(plan: BuildPlan) -> Manifest:
    """Generated documents -> shards + manifest (nothing to diff, filter or reject)."""
    sources = plan.sources()
    table = pa.concat_tables([s.documents() for s in sources if isinstance(s, SyntheticSource)]).combine_chunks()
    table = table.cast(DOCUMENT_SCHEMA)
    shards = write_table_shards(plan.out, DATA_DIR, table, plan.config.shard_bytes)
    n = table.num_rows
    counts = Counts(rows_in=n, kept=n, by_stage={"generate": {"in": n, "kept": n, "dropped": {}}})
    manifest = Manifest(
        kind="corpus",
        config=plan.config.model_dump(mode="json"),
        config_hash=plan.config_hash,
        inputs=plan.inputs,
        counts=counts,
        columns=table.column_names,
        shards=shards,
        splits=dict(sorted(Counter(table.column("split").to_pylist()).items())),
        formats=dict(sorted(Counter(table.column("format").to_pylist()).items())),
    )
    write_manifest(plan.out, manifest)
    shutil.rmtree(plan.work, ignore_errors=True)
    return manifest
