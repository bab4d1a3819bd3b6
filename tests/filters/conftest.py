"""Helpers for the filter tests: crafted commit rows, one-rule verdicts, and the build's stages on Dask."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffmix.filters import engine
from diffmix.filters.base import Filter
from diffmix.formats.base import get_format
from diffmix.formats.edit import EditRecord
from diffmix.pipelines import build
from diffmix.pipelines.diff import diff_texts
from diffmix.pipelines.io import read_ipc_stream
from diffmix.pipelines.shards import read_manifest
from diffmix.schemas.columns import DOCUMENT_SCHEMA
from diffmix.schemas.config import BuildConfig
from diffmix.schemas.manifest import Manifest

BEFORE = "".join(f"def handler_{i}(request):\n    return respond(request, {i})\n\n" for i in range(8))
AFTER = BEFORE.replace("return respond(request, 3)", "return respond(request, 3, cache=True)")


def row(**fields: Any) -> dict[str, Any]:
    """One commit row of a good document (every rule keeps it), with `fields` changed."""
    base: dict[str, Any] = {
        "doc_id": "0123456789abcdef",
        "repo": "acme/app",
        "commit": "a" * 40,
        "path": "src/app/handlers.py",
        "lang": "Python",
        "license": "MIT",
        "change_type": "M",
        "author_date": "2024-01-01T00:00:00Z",
        "author_name": "Ada Lovelace",
        "message": "Cache the third handler's response",
        "old_contents": BEFORE,
        "new_contents": AFTER,
        "f_secrets": 0,
        "f_pii": 0,
        "f_secret_in_change": False,
        "input_row": 0,
    }
    base.update(fields)
    return base


def scoring_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The frame `engine.score` sees: commit fields + the rendered diff and document."""
    fmt = get_format("openelm_v1")
    out = []
    for r in rows:
        r = dict(r)
        diff = diff_texts(r["old_contents"], r["new_contents"])
        doc = fmt.render(EditRecord(r["path"], r["old_contents"], r["message"], r["new_contents"], diff, new_file=r["change_type"] == "A"))
        r.setdefault("old_original", r["old_contents"])
        r.setdefault("new_original", r["new_contents"])
        r.update(
            diff=diff.text, text=doc.text, target_start=doc.target_start, format=fmt.name, split="train", source="test",
            parent=None, old_path=r["path"], old_chars=len(r["old_contents"]), new_chars=len(r["new_contents"]),
            diff_chars=len(diff.text), n_hunks=diff.hunks, lines_added=diff.added, lines_deleted=diff.deleted,
            bef_start=doc.sections.get("bef_start"), msg_start=doc.sections.get("msg_start"), dff_start=doc.sections.get("dff_start"),
        )  # fmt: skip
        out.append(r)
    frame = pl.DataFrame(out, infer_schema_length=None)
    return frame.with_columns(pl.col(c).cast(pl.String) for c, t in frame.schema.items() if t == pl.Null)


def scored(rows: list[dict[str, Any]], config: BuildConfig | None = None) -> pl.DataFrame:
    """Rows with every score column, as the build stores them (lazy scores not filled)."""
    config = config or BuildConfig()
    frame = scoring_frame(rows)
    return pl.concat([frame.select(DOCUMENT_SCHEMA.names), engine.score(frame, config)], how="horizontal")


def verdict(rule: Filter, **fields: Any) -> str | None:
    """The reason `rule` gives a crafted row (its scores computed the way the build does)."""
    frame = scoring_frame([row(**fields)])
    frame = frame.with_columns(subject=pl.col("message").str.split_exact("\n", 1).struct.field("field_0"))
    frame = frame.with_columns(**rule.scores(frame))
    return engine.first_reason(frame, [rule])[0]


def engine_verdict(config: BuildConfig | None = None, **fields: Any) -> str | None:
    """The reason the whole configured rule chain gives a crafted row."""
    config = config or BuildConfig()
    table, reasons = engine.decide_rows(scored([row(**fields)], config), config)
    return reasons[0]


# --- crafted inputs and builds ----------------------------------------------------------


def commit_id(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def write_commits(path: Path, rows: list[dict[str, Any]], row_group_size: int = 1000) -> Path:
    """A CommitPack-style Parquet file of commit rows (missing columns are derived by ingest)."""
    keys = ["commit", "old_file", "new_file", "old_contents", "new_contents", "message", "license", "repos", "author_date", "change_type", "lang"]
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def commit_row(key: str, old: str, new: str, message: str = "Cache the third handler's response", **fields: Any) -> dict[str, Any]:
    out = {
        "commit": commit_id(key), "old_file": "src/app/handlers.py", "new_file": "src/app/handlers.py",
        "old_contents": old, "new_contents": new, "message": message, "license": "mit", "repos": "acme/app",
        "author_date": "2024-01-01T00:00:00Z", "change_type": "M", "lang": "Python",
    }  # fmt: skip
    out.update(fields)
    return out


def run_build(inputs: list[str], out: Path, config: BuildConfig, workers: int = 1) -> Manifest:
    """The build's stages as `build_corpus` runs them, fanned out on an in-process Dask cluster."""
    from distributed import Client, LocalCluster

    plan = build.prepare_build(inputs, out, config)
    if plan.complete:
        return read_manifest(out)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        streams = build.stream_source_indices(plan)
        staged = dict(zip(streams, client.gather(client.map(build.stage_source, [plan] * len(streams), streams, pure=False))))
        parts = build.plan_partitions(plan, staged)
        stats = client.gather(client.map(build.process_partition, [plan] * len(parts), parts, pure=False))
        groups = build.prepare_dedup(plan, parts)
        edges = client.gather(client.map(build.near_dedup_group, [plan] * len(groups), [parts] * len(groups), groups, pure=False))
        specs = build.decide(plan, parts, edges)
        build.prepare_tokenizer(plan, specs)
        shards = client.gather(client.map(build.write_data_shard, [plan] * len(specs), specs, pure=False))
        reject_specs = build.plan_reject_shards(plan, parts)
        rejected = client.gather(client.map(build.write_reject_shard, [plan] * len(reject_specs), reject_specs, pure=False))
    return build.finalize(plan, parts, stats, shards, rejected)


def data(out: Path) -> pl.DataFrame:
    manifest = read_manifest(out)
    tables = [read_ipc_stream(out / e.path) for e in manifest.shards]
    return pl.from_arrow(pa.concat_tables(tables))  # type: ignore[return-value]


def rejects(out: Path) -> pl.DataFrame:
    manifest = read_manifest(out)
    tables = [read_ipc_stream(out / e.path) for e in manifest.rejects]
    return pl.from_arrow(pa.concat_tables(tables))  # type: ignore[return-value]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def permissive() -> BuildConfig:
    """The default config with small partitions (several per test input)."""
    return BuildConfig(partition_rows=4)
