"""Decontamination: repositories, commits or files that must never be trained on.

The list lives in the split config (`split.exclude`: evaluation repos, the
SWE-bench commits, the files of a benchmark) and is checked first, before any
quality rule. Files are named by their git blob id (`git hash-object FILE`) of
the old or the new file as committed (before redaction), stored per document
as `f_old_blob` / `f_new_blob`, so a list can grow and be applied again with
`--refilter`. Commits match by full or abbreviated (7+ hex) SHA; repositories
by `owner/name`, case-insensitively.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import polars as pl
import pyarrow as pa

from diffmix.filters.base import Check, Filter, frame_text_ids, on_distinct, utf8_bytes


def git_blob_ids(texts: pl.Series) -> pl.Series:
    """git's object id of each text as a blob (sha1 of `blob <size>\\0` + bytes); null stays null."""
    out = []
    for data in utf8_bytes(texts).views():
        if data is None:
            out.append(None)
            continue
        digest = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
        digest.update(data)  # no header + data copy
        out.append(digest.hexdigest())
    return pl.Series(texts.name, out, dtype=pl.String)


class Decontaminate(Filter):
    """Drop documents of excluded repositories, commits or files (built from `split.exclude`)."""

    name: ClassVar[str] = "decontaminate"
    reasons: ClassVar[tuple[str, ...]] = ("decontaminated",)
    score_fields: ClassVar[tuple[pa.Field, ...]] = (pa.field("f_old_blob", pa.string()), pa.field("f_new_blob", pa.string()))

    repos: list[str] = []
    commits: list[str] = []
    files: list[str] = []

    def scores(self, frame: pl.DataFrame) -> dict[str, pl.Expr | pl.Series]:
        # The texts as committed: the build keeps them beside the redacted ones until scoring.
        ids = frame_text_ids(frame)
        old, new = on_distinct([frame["old_original"], frame["new_original"]], lambda texts: git_blob_ids(texts).to_frame("blob"), ids)
        return {"f_old_blob": old["blob"], "f_new_blob": new["blob"]}

    def checks(self) -> list[Check]:
        hit = pl.lit(False)
        if self.repos:
            hit = hit | pl.col("repo").str.to_lowercase().is_in(sorted({r.lower() for r in self.repos})).fill_null(False)
        if self.commits:
            prefixes = "|".join(sorted({c.lower() for c in self.commits}))
            hit = hit | pl.col("commit").str.to_lowercase().str.contains(f"^(?:{prefixes})").fill_null(False)
        if self.files:
            blobs = sorted({f.lower() for f in self.files})
            hit = hit | pl.col("f_old_blob").is_in(blobs).fill_null(False) | pl.col("f_new_blob").is_in(blobs).fill_null(False)
        return [Check("decontaminated", hit)] if (self.repos or self.commits or self.files) else []

