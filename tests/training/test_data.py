"""The batch loader on crafted token rows: padding, packing, loss masks, DDP slices, wrap-around, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from diffmix.errors import DiffmixError
from diffmix.pipelines.shards import load_table
from diffmix.training.data import (
    MixtureBatches,
    MixtureTokens,
    make_loader,
    open_mixture,
    source_documents,
    stream_stats,
)
from tests.training.mixtures import COPY_URI, mix, synthetic_corpus

EOS = 1


def _tokens(
    rows: list[list[int]], target_start: list[int], sources: list[str] | None = None, source_rows: list[int] | None = None, phases: list[int] | None = None
) -> MixtureTokens:
    n = len(rows)
    return MixtureTokens.from_columns(
        pa.array(rows, pa.list_(pa.int32())),
        np.array(target_start),
        pa.array(sources or ["s"] * n),
        np.array(source_rows if source_rows is not None else range(n)),
        np.array(phases if phases is not None else [0] * n),
        EOS,
    )


def test_rows_get_eos_and_unique_counts_follow_source_rows() -> None:
    data = _tokens([[5, 6, 1], [7], [8, 9]], [1, 0, 1], sources=["b", "a", "b"], source_rows=[0, 0, 0])
    assert data.tokens.tolist() == [5, 6, 1, 7, 1, 8, 9, 1]  # EOS only where missing
    assert data.offsets.tolist() == [0, 3, 5, 8]
    assert data.source_names == ("a", "b") and data.source.tolist() == [1, 0, 1]
    # (b, 0) repeats at position 2: two unique documents after three rows
    assert data.unique_before.tolist() == [0, 1, 2, 2]


ROWS = [[10, 11, 12, 13], [20, 21], [30, 31, 32, 33, 34, 35]]  # EOS appended to each
STARTS = [2, 1, 3]


@pytest.mark.parametrize(
    ("loss_on", "k", "x", "y", "mask", "rows"),
    [
        # batch 0: rows 0 and 1, padded (pad id 0) to the longer one; loss on targets and EOS only
        (
            "target",
            0,
            [[10, 11, 12, 13], [20, 21, 1, 0]],
            [[11, 12, 13, 1], [21, 1, 0, 0]],
            [[0, 1, 1, 1], [1, 1, 0, 0]],
            (0, 2),
        ),
        ("all", 0, [[10, 11, 12, 13], [20, 21, 1, 0]], [[11, 12, 13, 1], [21, 1, 0, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]], (0, 2)),
        # batch 1, the last of the pass: row 2 cut at block_size + 1 = 6 tokens, and an empty slot
        # (padding, masked out: the pass trains each of the 3 rows once, as the recipe planned)
        (
            "target",
            1,
            [[30, 31, 32, 33, 34], [0, 0, 0, 0, 0]],
            [[31, 32, 33, 34, 35], [0, 0, 0, 0, 0]],
            [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]],
            (2, 3),
        ),
        # batch 2: the second pass starts again at row 0 (stream positions 3 and 4)
        ("target", 2, [[10, 11, 12, 13], [20, 21, 1, 0]], [[11, 12, 13, 1], [21, 1, 0, 0]], [[0, 1, 1, 1], [1, 1, 0, 0]], (3, 5)),
    ],
)
def test_pad_batches(loss_on: str, k: int, x: list, y: list, mask: list, rows: tuple[int, int]) -> None:
    batches = MixtureBatches(_tokens(ROWS, STARTS, phases=[0, 0, 1]), batch_size=2, block_size=5, batching="pad", loss_on=loss_on)
    batch = batches.global_batch(k)
    assert batch["x"].tolist() == x
    assert batch["y"].tolist() == y
    assert batch["mask"].astype(int).tolist() == mask
    info = batches.info(k)
    assert info.loss_tokens == int(np.sum(mask))
    assert info.tokens == {0: 4 + 2, 1: 5, 2: 4 + 2}[k]  # inputs of the rows in the batch (row 2 cut at the context)
    assert (info.first_row, info.stop_row) == rows
    assert info.phase == (1 if k == 1 else 0)  # the phase of the batch's last row, never of a wrapped one


def test_pack_batches_cut_the_stream_into_windows() -> None:
    data = _tokens(ROWS, STARTS)  # stream: 10 11 12 13 1 | 20 21 1 | 30 31 32 33 34 35 1 (15 tokens)
    batches = MixtureBatches(data, batch_size=2, block_size=4, batching="pack", loss_on="target")
    batch = batches.global_batch(0)
    assert batch["x"].tolist() == [[10, 11, 12, 13], [1, 20, 21, 1]]
    assert batch["y"].tolist() == [[11, 12, 13, 1], [20, 21, 1, 30]]
    # a label counts when it lies in its own document's target (EOS included)
    assert batch["mask"].astype(int).tolist() == [[0, 1, 1, 1], [0, 1, 1, 0]]
    info = batches.info(0)
    assert (info.first_row, info.stop_row, info.tokens, info.loss_tokens) == (0, 2, 8, 5)
    # the second batch ends the pass (14 labels in windows of 4: 2 batches); what lies past the
    # 15-token stream is padding, masked out, and the next pass starts again at token 0
    assert batches.steps_per_pass == 2
    second = batches.global_batch(1)
    assert second["x"].tolist() == [[30, 31, 32, 33], [34, 35, 1, 0]]
    assert second["mask"].astype(int).tolist() == [[0, 0, 1, 1], [1, 1, 0, 0]]
    info = batches.info(1)
    assert (info.first_row, info.stop_row, info.tokens, info.loss_tokens) == (2, 3, 7, 4)
    assert batches.global_batch(2)["x"].tolist() == batch["x"].tolist() and batches.info(2).first_row == 3


def test_pack_batch_inside_one_document_has_that_documents_phase() -> None:
    # rows of 5, 30, 5 and 3 tokens with EOS (offsets 0, 5, 35, 40, 43), phases 0, 1, 2, 2
    data = _tokens([[2, 3, 4, 5], list(range(2, 31)), [2, 3, 4, 5], [6, 7]], [1] * 4, phases=[0, 1, 2, 2])
    batches = MixtureBatches(data, batch_size=1, block_size=8, batching="pack")
    assert batches.steps_per_pass == 6
    infos = [batches.info(k) for k in range(7)]
    # batches 1-3 lie inside row 1 and start no row; batch 4's last label is row 3's first token
    assert [i.phase for i in infos] == [1, 1, 1, 1, 2, 2, 1]
    assert [(i.first_row, i.stop_row) for i in infos[:6]] == [(0, 2), (2, 2), (2, 2), (2, 2), (2, 3), (3, 4)]
    # the pass's last batch starts inside the last row: no row past the mixture is read
    last = MixtureBatches(_tokens([[2, 3], list(range(2, 20))], [1, 1], phases=[0, 3]), 1, 8, "pack")
    assert [last.info(k).phase for k in range(last.steps_per_pass)] == [3, 3, 3]


@pytest.mark.parametrize("batching", ["pad", "pack"])
def test_rank_slices_add_up_to_the_global_batch(batching: str) -> None:
    data = _tokens(ROWS * 4, STARTS * 4)
    whole = MixtureBatches(data, 4, 6, batching)
    ranks = [MixtureBatches(data, 4, 6, batching, rank=r, world_size=2) for r in range(2)]
    for k in range(5):
        parts = [r[k] for r in ranks]
        full = whole[k]
        assert torch.equal(torch.cat([p["x"] for p in parts]), full["x"])
        assert torch.equal(torch.cat([p["weight"] for p in parts]), full["weight"])
        # each label's weight is 1 / (loss tokens of the global batch): the rank sums give the global mean
        assert float(sum(p["weight"].sum() for p in parts)) == pytest.approx(1.0)


def test_batch_size_must_divide_over_ranks() -> None:
    with pytest.raises(DiffmixError, match="not divisible"):
        MixtureBatches(_tokens(ROWS, STARTS), batch_size=3, block_size=4, world_size=2)


def test_a_sources_probes_are_the_held_out_rows_its_where_selects(tmp_path: Path) -> None:
    corpus = synthetic_corpus(COPY_URI.replace("n=1000", "n=100"), tmp_path / "copy")
    short = "length(text) < 28"
    mixture = mix(tmp_path / "mix", {"short": corpus, "all": corpus}, samples=40, max_repetition=2, where={"short": short})
    _, sources, _ = open_mixture(mixture)
    assert [(s.name, s.where) for s in sources] == [("short", short), ("all", None)]
    every = pl.from_arrow(load_table(corpus, columns=["text", "split"]))
    docs = {s.name: pl.from_arrow(source_documents(s)) for s in sources}
    assert docs["all"].height == every.height
    assert docs["short"]["text"].to_list() == every.filter(pl.col("text").str.len_chars() < 28)["text"].to_list()
    assert docs["short"].filter(pl.col("split") == "test").height > 0 and docs["short"].columns == docs["all"].columns


def test_stream_stats_wrap_into_epochs() -> None:
    data = _tokens(ROWS, STARTS, source_rows=[0, 1, 0])  # row 2 repeats row 0's document
    assert stream_stats(data, 0, 2) == {"examples": 2, "unique_examples": 2, "epoch": 0.0}
    # epochs count passes over the 2 distinct documents, not over the 3 mixture rows
    assert stream_stats(data, 2, 4) == {"examples": 4, "unique_examples": 2, "epoch": 1.0}
    assert stream_stats(data, 6, 8)["epoch"] == 3.0


def test_loader_resumes_at_any_batch_and_workers_do_not_change_batches() -> None:
    data = _tokens(ROWS * 3, STARTS * 3)
    batches = MixtureBatches(data, 2, 5)
    straight = [b["x"] for b in make_loader(batches, 0, 6)]
    resumed = [b["x"] for b in make_loader(batches, 3, 6)]
    with_workers = [b["x"] for b in make_loader(batches, 0, 6, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(straight[3:], resumed))
    assert all(torch.equal(a, b) for a, b in zip(straight, with_workers))
    assert [b["step"] for b in make_loader(batches, 3, 6)] == [3, 4, 5]
