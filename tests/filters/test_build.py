"""Filters inside the corpus build: counts per stage and rule, rejects, score columns, real data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffmix.filters.engine import CORPUS_SCHEMA
from diffmix.formats.base import get_format
from diffmix.pipelines.shards import read_manifest
from diffmix.schemas.config import BuildConfig
from tests.filters.conftest import data, rejects, run_build, tree_bytes, write_commits
from tests.filters.test_refilter import mixed_rows


@pytest.mark.parametrize("shard_bytes", [128 << 20, 4096], ids=["one-shard", "many-shards"])
def test_counts_rejects_and_columns(tmp_path: Path, shard_bytes: int) -> None:
    parquet = write_commits(tmp_path / "in.parquet", mixed_rows(), row_group_size=4)
    out = tmp_path / "out"
    manifest = run_build([str(parquet)], out, BuildConfig(partition_rows=5, shard_bytes=shard_bytes), workers=2)
    if shard_bytes == 4096:  # rejects shards cut across partitions still hold every dropped row once, in input order
        assert len(manifest.rejects) > 2 and len(manifest.shards) > 1
    counts = manifest.counts
    stages = counts.by_stage
    assert counts.rows_in == len(mixed_rows()) == counts.kept + sum(counts.dropped.values())
    # Each stage takes what the one before kept, and the last one's kept is the corpus.
    assert stages["structural"]["in"] == counts.rows_in
    assert stages["filter"]["in"] == stages["structural"]["kept"]
    assert stages["dedup"]["in"] == stages["filter"]["kept"] and stages["cap"]["in"] == stages["dedup"]["kept"]
    assert stages["cap"]["kept"] == counts.kept
    rules = stages["filter"]["rules"]
    assert list(rules)[0] == "decontaminate" and list(rules)[-1] == "token_budget"
    assert sum(sum(r["dropped"].values()) for r in rules.values()) == sum(stages["filter"]["dropped"].values())
    assert all(r["kept"] == r["in"] - sum(r["dropped"].values()) for r in rules.values())

    docs, dropped = data(out), rejects(out)
    assert docs.columns == CORPUS_SCHEMA.names == manifest.columns
    assert docs["input_row"].is_sorted() and dropped["input_row"].is_sorted()
    assert sorted(docs["input_row"].to_list() + dropped["input_row"].to_list()) == list(range(counts.rows_in))
    # Structural rejects keep ids only; the others keep their document and scores.
    structural = dropped.filter(dropped["stage"] == "structural")
    assert structural.height and structural["text"].null_count() == structural.height
    later = dropped.filter(dropped["stage"] != "structural")
    assert later.height and later["text"].null_count() == 0
    assert set(later["stage"].to_list()) <= {"filter", "dedup", "cap"}
    # Signatures are lazy: only documents that reach dedup have one.
    assert later.filter(later["stage"] == "filter")["f_minhash"].null_count() == later.filter(later["stage"] == "filter").height
    assert later.filter(later["stage"] != "filter")["f_minhash"].null_count() == 0 and docs["f_minhash"].null_count() == 0
    assert counts.dropped == dict(sorted(Counter(dropped["reason"].to_list()).items()))


def test_real_data_slice(tmp_path: Path, dev_parquet: Path) -> None:
    """A slice of real commits: every kept document round-trips, nothing planted-looking leaks."""
    source = pq.ParquetFile(dev_parquet)
    table = pa.concat_tables([source.read_row_group(g).slice(0, 60) for g in range(source.num_row_groups)])
    sliced = tmp_path / "slice.parquet"
    pq.write_table(table, sliced)
    out = tmp_path / "out"
    manifest = run_build([str(sliced)], out, BuildConfig(partition_rows=100), workers=2)
    assert "diff_roundtrip_failed" not in manifest.counts.dropped
    assert manifest.counts.kept > 0
    docs = data(out)
    fmt = get_format("openelm_v1")
    for text, start in zip(docs["text"].to_list(), docs["target_start"].to_list()):
        fmt.parse(text[:start], text[start:])
    # Within the budget: counted, or too short to need counting.
    assert (docs["f_tokens"].fill_null(0) <= 2048).all()
    assert ((docs["text"].str.len_bytes() <= 2048) | docs["f_tokens"].is_not_null()).all()
    import datasets

    loaded = datasets.Dataset.from_file(str(out / read_manifest(out).shards[0].path))
    assert loaded.num_rows == read_manifest(out).shards[0].rows and "f_minhash" in loaded.column_names
    # Rejects are written with zstd buffers: smaller than the texts they hold, and still read by `datasets`.
    (reject_shard,) = read_manifest(out).rejects
    dropped = datasets.Dataset.from_file(str(out / reject_shard.path))
    assert dropped.num_rows == reject_shard.rows and dropped.column_names == rejects(out).columns
    assert reject_shard.bytes < rejects(out)["text"].str.len_bytes().sum() / 2


def test_one_document_per_id_across_inputs(tmp_path: Path) -> None:
    """Two inputs that disagree about the same (repo, commit, path): the first is kept, the other is `duplicate_id`."""
    from tests.filters.conftest import AFTER, BEFORE, commit_row

    first = write_commits(tmp_path / "a.parquet", [commit_row("k", BEFORE, AFTER)])
    second = write_commits(tmp_path / "b.parquet", [commit_row("k", BEFORE, AFTER.replace("cache=True", "cache=False"))])
    manifest = run_build([str(first), str(second)], tmp_path / "out", BuildConfig())
    docs, dropped = data(tmp_path / "out"), rejects(tmp_path / "out")
    assert manifest.counts.dropped == {"duplicate_id": 1} and docs["source"].to_list() == ["parquet:a"]
    assert dropped["reason"].to_list() == ["duplicate_id"] and dropped["detail"].to_list() == docs["doc_id"].to_list()


def test_shard_bytes_do_not_depend_on_how_documents_were_chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards slice the staged documents (no copy for a run of rows), and the IPC writer pads a
    slice by what its parent buffer holds: the staged file is one batch, however Polars chunked it."""
    import polars as pl

    from diffmix.pipelines import shards
    from diffmix.pipelines.build import _rows_of, _staged_documents
    from diffmix.pipelines.io import read_ipc_stream, write_ipc_stream
    from diffmix.pipelines.shards import write_shard

    monkeypatch.setattr(shards, "BATCH_ROWS", 2)  # batches inside a piece are then slices of it
    out = tmp_path / "out"
    run_build([str(write_commits(tmp_path / "in.parquet", mixed_rows()))], out, BuildConfig(filters={"rules": []}))
    docs = data(out)
    assert docs.height >= 6
    chunkings = {
        "one": docs,
        "three": pl.concat([docs[:2], docs[2:5], docs[5:]], rechunk=False),
        "per-row": pl.concat([docs[i : i + 1] for i in range(docs.height)], rechunk=False),
    }
    picks = {"run": list(range(1, docs.height - 1)), "gaps": [0, 2, 3, docs.height - 1]}
    for pick, listed in picks.items():
        hashes = set()
        for name, frame in chunkings.items():
            staged = _staged_documents(frame)
            assert staged.column("text").num_chunks == 1
            write_ipc_stream(tmp_path / f"{name}.arrow", staged)
            for rows in (listed, np.asarray(listed, np.int64)):  # a shard spec carries an array
                piece = _rows_of(read_ipc_stream(tmp_path / f"{name}.arrow"), rows)
                assert piece.equals(staged.take(listed))
                hashes.add(write_shard(tmp_path, f"shard-{pick}-{name}.arrow", pa.concat_tables([piece, piece])).sha256)
        assert len(hashes) == 1, pick


def test_a_change_only_to_a_secret_is_rejected_after_redaction(tmp_path: Path, permissive: BuildConfig) -> None:
    from tests.filters.conftest import commit_row
    from tests.filters.test_dedup import module
    from tests.filters.test_secrets import AWS_KEY

    base = module(7)
    before = base + f"KEY = '{AWS_KEY}'\n"
    rows = [
        commit_row("rotate", before, before.replace(AWS_KEY, AWS_KEY[:-1] + "Q"), message="Rotate the deploy key for the handlers"),
        commit_row("keep", base, base + "extra = 1\n", message="Add the extra handler setting value"),
    ]
    out = tmp_path / "out"
    manifest = run_build([str(write_commits(tmp_path / "in.parquet", rows))], out, permissive)
    assert manifest.counts.by_stage["structural"]["dropped"] == {"redacted_no_change": 1}
    assert rejects(out)["reason"].to_list() == ["redacted_no_change"]
    assert manifest.counts.rows_in == manifest.counts.kept + sum(manifest.counts.dropped.values())


def test_tokenised_shards_stay_near_their_target_size(tmp_path: Path) -> None:
    parquet = write_commits(tmp_path / "in.parquet", mixed_rows(), row_group_size=8)
    config = BuildConfig.model_validate({"partition_rows": 8, "shard_bytes": 40_000, "tokenize": {"kind": "bpe", "vocab_size": 300}})
    manifest = run_build([str(parquet)], tmp_path / "out", config)
    sizes = [entry.bytes for entry in manifest.shards]
    assert len(sizes) > 2 and max(sizes[:-1]) < 1.6 * 40_000, sizes  # token ids and signatures are counted, not only the text


NOTHING_DROPS = {"rules": [], "dedup": {"exact_before_diff": False, "exact_diff": False, "near": None}, "caps": {"whitespace_only": None}}


@pytest.mark.parametrize(("filters", "tokenized"), [({}, True), (NOTHING_DROPS, True), (NOTHING_DROPS, False)], ids=["every-filter", "none", "none-untokenized"])
def test_writes_around_the_page_cache_give_the_same_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: dict[str, object], tokenized: bool) -> None:
    """Shards (and, where nothing can drop a document, the staged documents) written and read with
    O_DIRECT (every file, however small, here), with structural rejects, filters dropping documents
    (their texts go to rejects) and a tokenizer trained on the kept ones; untokenized, with shards
    that are the staged files themselves."""
    from diffmix.pipelines import io
    from diffmix.pipelines.build import _read_once, _shard_per_partition
    from tests.filters.conftest import tree_bytes

    parquet = write_commits(tmp_path / "in.parquet", mixed_rows(), row_group_size=4)
    tokenize = {"kind": "bpe", "vocab_size": 300} if tokenized else None
    config = BuildConfig.model_validate({"partition_rows": 5, "shard_bytes": 20_000, "tokenize": tokenize, "filters": filters})
    assert _read_once(config) is bool(filters)  # the staged documents go around the page cache only where nothing drops one
    assert _shard_per_partition(config) is (bool(filters) and not tokenized)
    trees = {}
    for name, direct in (("buffered", False), ("direct", True)):
        monkeypatch.setattr(io, "DIRECT_IO", direct)
        monkeypatch.setattr(io, "DIRECT_MIN_BYTES", 0)
        manifest = run_build([str(parquet)], tmp_path / name, config, workers=2)
        assert len(manifest.shards) > 1 and manifest.counts.dropped and bool(manifest.tokenizer) is tokenized
        assert manifest.splits == dict(sorted(Counter(data(tmp_path / name)["split"].to_list()).items()))  # counted without reading the shards
        trees[name] = tree_bytes(tmp_path / name)
    assert trees["direct"] == trees["buffered"]


def _with_a_repeated_id(rows: list[dict]) -> list[dict]:
    """`rows` plus, at the end (another partition), an input's other version of the first row's change:
    the same repository, commit and path (so the same `doc_id`), a later date, another edit."""
    first = rows[0]
    return [*rows, {**first, "new_contents": first["new_contents"] + "# the other input's version\n", "author_date": "2024-06-01T00:00:00Z"}]


def test_shards_follow_partitions_where_nothing_drops_a_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No rule, dedup, cap or tokenizer: each partition writes its documents as its data shard will
    hold them, and the shard is a link to that file; a partition that lost a document after it (a
    repeated id) is written again without it. Either way the bytes are those of a shard written
    from the kept rows, cut at every partition's first row and at about `shard_bytes`."""
    from diffmix.pipelines import build

    parquet = write_commits(tmp_path / "in.parquet", _with_a_repeated_id(mixed_rows()), row_group_size=10)
    # Partitions of 3 and 4 rows (a row group of 10 cut in three): the 4-row ones pass `shard_bytes`.
    config = BuildConfig.model_validate({"partition_rows": 4, "shard_bytes": 9_000, "filters": NOTHING_DROPS})
    linked: list[str] = []
    real_link = build.link_file
    monkeypatch.setattr(build, "link_file", lambda src, dst: (linked.append(Path(dst).name), real_link(src, dst)))
    manifest = run_build([str(parquet)], tmp_path / "linked", config, workers=2)
    assert manifest.counts.dropped.get("duplicate_id") == 1
    assert manifest.partitions is not None and manifest.partitions[:4] == [0, 3, 7, 10]
    # Every shard holds rows of one partition; a partition cut by `shard_bytes` makes several.
    first_rows = np.array(manifest.partitions)
    owners = [set(np.searchsorted(first_rows, pa.ipc.open_stream(tmp_path / "linked" / e.path).read_all()["input_row"].to_numpy(), "right")) for e in manifest.shards]
    assert all(len(owner) == 1 for owner in owners) and len(owners) > len({min(o) for o in owners})
    assert 0 < len(linked) < len(manifest.shards)  # shards of several pieces, and the repeated id's partition, are written
    # The same bytes as a build that writes every shard from its rows.
    monkeypatch.setattr(build, "link_data_shard", lambda plan, spec: None)
    run_build([str(parquet)], tmp_path / "written", config, workers=2)
    assert tree_bytes(tmp_path / "linked") == tree_bytes(tmp_path / "written")
    (dropped,) = rejects(tmp_path / "linked").filter(pl.col("reason") == "duplicate_id").to_dicts()
    assert dropped["text"].startswith("<NME> ") and dropped["input_row"] == len(mixed_rows())  # the later copy, with its text


def test_shards_are_cut_across_partitions_where_documents_can_be_dropped(tmp_path: Path) -> None:
    from diffmix.pipelines.build import _shard_per_partition

    parquet = write_commits(tmp_path / "in.parquet", mixed_rows(), row_group_size=4)
    for filters, tokenize in (({}, None), (NOTHING_DROPS, {"kind": "char", "vocab_size": 300})):
        config = BuildConfig.model_validate({"partition_rows": 5, "filters": filters, "tokenize": tokenize})
        assert not _shard_per_partition(config)
        manifest = run_build([str(parquet)], tmp_path / f"out-{len(filters)}", config)
        assert len(manifest.shards) == 1 and len(manifest.partitions or []) > 1


def test_a_build_killed_after_linking_some_shards_gives_the_same_bytes(tmp_path: Path) -> None:
    from diffmix.pipelines import build

    parquet = str(write_commits(tmp_path / "in.parquet", mixed_rows(), row_group_size=4))
    config = BuildConfig.model_validate({"partition_rows": 4, "filters": NOTHING_DROPS})
    run_build([parquet], tmp_path / "fresh", config)
    plan = build.prepare_build([parquet], tmp_path / "killed", config)
    parts = build.plan_partitions(plan, {})
    for part in parts:
        build.process_partition(plan, part)
    build.prepare_dedup(plan, parts)
    specs = build.decide(plan, parts)
    assert all(build.link_data_shard(plan, spec) for spec in specs[:2])  # killed here
    (plan.out / "data" / "part-00002-of-00099.arrow").write_bytes(b"half")  # and a shard of another plan
    run_build([parquet], tmp_path / "killed", config)
    assert tree_bytes(tmp_path / "killed") == tree_bytes(tmp_path / "fresh")
