"""A real-data slice for the format tests: a few hundred (before, message, after) edits."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from diffmix.formats.edit import EditRecord, has_literal_tag

ROWS_PER_GROUP = 80  # every 50th row of each 4,000-row group: all four repositories


@pytest.fixture(scope="session")
def real_records(dev_parquet: Path) -> list[EditRecord]:
    """Rows with text on both sides that differ, not binary, without literal tags."""
    columns = ["new_file", "old_contents", "new_contents", "message", "change_type", "is_binary"]
    source = pq.ParquetFile(dev_parquet)
    records = []
    for group in range(source.metadata.num_row_groups):
        table = source.read_row_group(group, columns=columns)
        rows = table.take(list(range(0, table.num_rows, 50))[:ROWS_PER_GROUP]).to_pylist()
        for row in rows:
            old, new, message = row["old_contents"], row["new_contents"], row["message"] or ""
            if old is None or new is None or row["is_binary"] or old == new:
                continue
            if has_literal_tag(old) or has_literal_tag(new) or has_literal_tag(message):
                continue
            records.append(EditRecord.from_texts(row["new_file"], old, message, new, row["change_type"] == "A"))
    assert len(records) > 300
    return records
