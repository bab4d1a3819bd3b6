"""Small source datasets for the mixture tests, written with the real shard and manifest helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from diffmix.pipelines.io import sha256_file, sha256_json
from diffmix.pipelines.shards import write_manifest, write_table_shards
from diffmix.schemas.columns import DOCUMENT_SCHEMA, TOKEN_FIELDS
from diffmix.schemas.manifest import Counts, Manifest

LANGS = ("Python", "Markdown", "JavaScript")


def document_table(name: str, n: int, test_every: int = 0, tokenized: bool = False, fmt: str = "plain_v1") -> pa.Table:
    """`n` documents of a source called `name`: every `test_every`-th row in the test split."""
    i = np.arange(n)
    texts = [f"{name} prompt {k}\n" + "body line\n" * int(k % 7) + f"answer {k}\n" for k in range(n)]
    prompt_lengths = [len(f"{name} prompt {k}\n") for k in range(n)]
    split = np.where((i % test_every == test_every - 1) if test_every else np.zeros(n, bool), "test", "train")
    columns: dict[str, Any] = {
        "doc_id": pa.array([f"{name}-{k:06d}" for k in range(n)]),
        "text": pa.array(texts, pa.large_string()),
        "format": pa.array([fmt] * n),
        "target_start": pa.array(prompt_lengths, pa.int32()),
        "split": pa.array(split.tolist()),
        "source": pa.array([name] * n),
        "lang": pa.array([LANGS[k % len(LANGS)] for k in range(n)]),
    }
    table = pa.table(columns)
    table = table.cast(pa.schema([DOCUMENT_SCHEMA.field(c) for c in table.column_names]))
    if tokenized:
        lengths = [len(t) // 4 + 1 for t in texts]
        ids = [list(range(k % 50, k % 50 + m)) for k, m in zip(range(n), lengths)]
        table = table.append_column(TOKEN_FIELDS[0], pa.array(ids, TOKEN_FIELDS[0].type))
        table = table.append_column(TOKEN_FIELDS[1], pa.array([1] * n, pa.int32()))
        table = table.append_column(TOKEN_FIELDS[2], pa.array(lengths, pa.int32()))
    return table


def write_source(
    directory: Path,
    table: pa.Table,
    shard_bytes: int = 4096,
    tokenizer: str | None = None,
) -> Path:
    """Write `table` as a corpus directory (shards + manifest), as `diffmix build` would."""
    entries = write_table_shards(directory, "data", table, target_bytes=shard_bytes)
    if tokenizer:  # a stand-in file; the manifest names it by its real sha256, as a build does
        (directory / "tokenizer.json").write_text('{"test": "%s"}\n' % tokenizer)
    manifest = Manifest(
        kind="corpus",
        config={"test": directory.name},
        config_hash=sha256_json({"test": directory.name}),
        inputs=[],
        counts=Counts.model_validate({"in": table.num_rows, "kept": table.num_rows}),
        columns=table.column_names,
        shards=entries,
        tokenizer={"sha256": sha256_file(directory / "tokenizer.json"), "name": tokenizer} if tokenizer else None,
    )
    write_manifest(directory, manifest)
    return directory


@pytest.fixture
def make_source(tmp_path: Path) -> Callable[..., Path]:
    """`make_source(name, n, test_every=0, tokenized=False, tokenizer='tok-a')` -> dataset directory."""

    def make(name: str, n: int, test_every: int = 0, tokenized: bool = False, tokenizer: str = "tok-a", **kw: Any) -> Path:
        table = document_table(name, n, test_every=test_every, tokenized=tokenized)
        return write_source(tmp_path / "sources" / name, table, tokenizer=tokenizer if tokenized else None, **kw)

    return make


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """`write_recipe(mapping, name='recipe.yaml')` -> path of the YAML file (source paths relative to it)."""

    def write(data: dict[str, Any], name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def source_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three pre-tokenised sources (same tokenizer), built once per test module.

    code: 300 rows, every 10th in the test split, languages cycling Python / Markdown / JavaScript;
    arith: 200 rows; copy: 50 rows.
    """
    root = tmp_path_factory.mktemp("sources")
    return {
        "code": write_source(root / "code", document_table("code", 300, test_every=10, tokenized=True), tokenizer="tok-a"),
        "arith": write_source(root / "arith", document_table("arith", 200, tokenized=True), tokenizer="tok-a"),
        "copy": write_source(root / "copy", document_table("copy", 50, tokenized=True), tokenizer="tok-a"),
    }


@pytest.fixture
def dataset_writer() -> Callable[..., Path]:
    """`write_source(directory, table, shard_bytes=4096, tokenizer=None)` for tests with their own tables."""
    return write_source
