"""Change's scores: the compiled pass (`_line_stats.change`) against crafted diffs, and against
the Polars regexes it replaced (kept here as the reference) on generated and real diffs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix.filters.change import change_scores
from diffmix.pipelines.diff import diff_texts


def reference_scores(diffs: pl.Series) -> dict[str, list]:
    """The scores as Polars' Unicode-aware regexes compute them."""

    def changed_lines(sign: str) -> pl.Expr:
        return pl.col("diff").str.extract_all(rf"(?m)^\{sign}[^\n]*").list.eval(pl.element().str.slice(1)).list.join("\n")

    removed, added = changed_lines("-"), changed_lines("+")
    frame = pl.DataFrame({"diff": diffs}).select(
        f_content_lines=pl.col("diff").str.count_matches(r"(?m)^[+-][^\n]*\S").cast(pl.Int32),
        f_whitespace_only=removed.str.replace_all(r"\s+", "") == added.str.replace_all(r"\s+", ""),
        f_deleted_chars=removed.str.len_chars().cast(pl.Int32),
    )
    return {name: frame[name].to_list() for name in frame.columns}


def scores(diffs: list[str | None]) -> dict[str, list]:
    return {name: series.to_list() for name, series in change_scores(pl.Series("diff", diffs, dtype=pl.String)).items()}


@pytest.mark.parametrize(
    ("diff", "content_lines", "whitespace_only", "deleted_chars"),
    [
        ("@@ -1 +1 @@\n-a\n+b\n", 2, False, 1),
        ("@@ -1 +1 @@\n-    x = 1\n+\tx = 1\n", 2, True, 9),
        ("@@ -1,2 +1,2 @@\n-ab\n-c\n+abc\n", 3, True, 4),  # two `-` lines: 3 chars + 1 joining newline
        ("@@ -1 +1,2 @@\n a\n+\n+   \r\n", 0, True, 0),  # blank additions: no content
        ("@@ -1 +1 @@\n-x\r\n+x\n", 2, True, 2),  # the \r is a character, and a space
        ("@@ -1 +1 @@\n-\u00a0x\u3000\n+x\n", 2, True, 3),  # NBSP and U+3000 are \s
        ("@@ -1 +1 @@\n-\u200bx\n+x\n", 2, False, 2),  # U+200B (zero width space) is not
        ("@@ -1 +1 @@\n-日本\n+日本語\n", 2, False, 2),
        ("@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+a\n", 2, True, 1),
        ("@@ -0,0 +1 @@\n+new", 1, False, 0),  # no final newline, nothing removed
        ("", 0, True, 0),
    ],
)
def test_change_scores(diff: str, content_lines: int, whitespace_only: bool, deleted_chars: int) -> None:
    got = scores([diff])
    assert (got["f_content_lines"], got["f_whitespace_only"], got["f_deleted_chars"]) == ([content_lines], [whitespace_only], [deleted_chars])
    assert got == reference_scores(pl.Series([diff], dtype=pl.String))


def test_null_diff_scores_null() -> None:
    assert scores(["@@ -1 +1 @@\n-a\n+b\n", None]) == {"f_content_lines": [2, None], "f_whitespace_only": [False, None], "f_deleted_chars": [1, None]}


_LINE_TEXT = st.text(alphabet=st.sampled_from(["a", "é", "日", " ", "\t", "\r", "\u00a0", "\u2028", "\u3000", "\u200b", "\x0b", "\x1c", "+", "-", "@", "\\"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["+", "-", " ", "@@ ", "\\ ", ""]), _LINE_TEXT), max_size=12), st.booleans())
def test_same_as_the_regexes(lines: list[tuple[str, str]], final_newline: bool) -> None:
    diff = "\n".join(sign + text for sign, text in lines) + ("\n" if final_newline and lines else "")
    assert scores([diff]) == reference_scores(pl.Series([diff], dtype=pl.String))


def test_same_as_the_regexes_on_real_diffs(dev_parquet: Path) -> None:
    table = pq.read_table(dev_parquet, columns=["old_contents", "new_contents"]).slice(0, 600)
    diffs = []
    for old, new in zip(table["old_contents"].to_pylist(), table["new_contents"].to_pylist(), strict=True):
        if old is not None and new is not None and "\0" not in old + new:
            diffs.append(diff_texts(old, new).text)
    series = pl.Series(diffs, dtype=pl.String)
    assert scores(diffs) == reference_scores(series)
