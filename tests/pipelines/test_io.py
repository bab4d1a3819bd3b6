"""Atomic writes and Arrow IPC streams."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from diffmix.pipelines.io import atomic_open, read_ipc_stream, remove_stale_temporaries, write_ipc_stream


def _batch_rows(path: Path) -> list[int]:
    with pa.memory_map(str(path)) as source:
        return [batch.num_rows for batch in pa.ipc.open_stream(source)]


@pytest.mark.parametrize("chunks", [[10], [3, 4, 3], [1] * 10, [7, 0, 3]])
def test_stream_batches_do_not_depend_on_chunks(tmp_path: Path, chunks: list[int]) -> None:
    rows = [{"id": i, "text": f"t{i}" * i, "note": None if i % 3 else "n"} for i in range(sum(chunks))]
    table = pa.Table.from_pylist(rows)
    bounds = [sum(chunks[:k]) for k in range(len(chunks) + 1)]
    chunked = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])
    write_ipc_stream(tmp_path / "whole.arrow", table, max_chunksize=4)
    write_ipc_stream(tmp_path / "chunked.arrow", chunked, max_chunksize=4)
    assert _batch_rows(tmp_path / "chunked.arrow") == [4, 4, 2]
    assert read_ipc_stream(tmp_path / "chunked.arrow").equals(table)
    assert read_ipc_stream(tmp_path / "whole.arrow").equals(table)


def test_empty_table_is_one_empty_batch(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("text", pa.large_string())])
    write_ipc_stream(tmp_path / "empty.arrow", schema.empty_table(), max_chunksize=4)
    assert _batch_rows(tmp_path / "empty.arrow") == [0]
    assert read_ipc_stream(tmp_path / "empty.arrow").schema == schema


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".part-0.arrow.tmp-123").write_bytes(b"x")
    (tmp_path / "d" / "part-0.arrow").write_bytes(b"y")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["part-0.arrow"]
