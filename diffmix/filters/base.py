"""The filter contract: score columns computed once, keep/drop checks re-evaluated from them.

A *rule* is a small pydantic model whose fields are its settings (thresholds
with documented defaults; `None` turns that check off). It has two parts, in
the manner of data-juicer's compute_stats / process and Curator's score /
keep split:

* `scores(frame)`: Polars expressions (or NumPy-computed Series) over the
  commit rows + rendered diff at build time. Their results are **stored as
  `f_*` columns** in the corpus, so a threshold can change without recomputing
  anything (`diffmix build --refilter`). Settings a score depends on are listed
  in `score_settings`: changing them needs a fresh build.
* `checks()`: `(reason, condition)` pairs over the stored columns, in order; a
  true condition drops the row with that stable snake_case reason.

Rules never count anything: the engine (`diffmix.filters.engine`) attributes
each row to the first rule, in config order, whose check drops it, and counts
in / kept / dropped per reason per rule into the manifest. A `lazy` rule has
expensive scores that are computed only for rows every other rule keeps
(null otherwise): it leaves `scores` empty and implements `fill` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import ConfigDict

from diffmix.errors import DiffmixError
from diffmix.schemas.config import StrictModel, first_error


@dataclass(frozen=True)
class Check:
    """One way a rule drops a row: a stable reason and a condition over stored columns (null = keep)."""

    reason: str
    drop: pl.Expr


class Filter(StrictModel):
    """A per-row keep/drop rule. Subclasses set `name`, `reasons`, and fields for their settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    # Every reason the rule can give, in the order its checks run (unique across rules).
    reasons: ClassVar[tuple[str, ...]]
    # The stored score columns it computes (all nullable).
    score_fields: ClassVar[tuple[pa.Field, ...]] = ()
    # Settings its score columns depend on (a refilter may not change them).
    score_settings: ClassVar[tuple[str, ...]] = ()
    # Expensive scores: computed only for rows that every non-lazy rule keeps.
    lazy: ClassVar[bool] = False

    def scores(self, frame: pl.DataFrame) -> dict[str, pl.Expr | pl.Series]:
        """Score columns for the scoring frame (see `diffmix.filters.engine.SCORING_COLUMNS`)."""
        return {}

    def checks(self) -> list[Check]:
        """`(reason, drop condition)` pairs in order; a setting that is None leaves its check out."""
        raise NotImplementedError

    def fill(self, frame: pl.DataFrame, alive: pl.Series) -> pl.DataFrame:
        """A lazy rule's scores: `frame` (CORPUS_SCHEMA columns) with its `score_fields` set exactly
        where `alive` (rows every non-lazy and every earlier lazy rule keeps), null elsewhere, from the rows and the
        settings alone (a refilter fills the same cells a fresh build would)."""
        raise NotImplementedError(f"rule {self.name!r} is lazy: it must implement fill()")

    def score_key(self) -> dict[str, object]:
        """The settings its stored scores depend on (compared by `--refilter`)."""
        return {key: getattr(self, key) for key in self.score_settings}


RULES: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    """Class decorator: make a rule available to build configs by its `name`."""
    if cls.name in RULES:
        raise ValueError(f"rule {cls.name!r} registered twice")
    taken = {reason for rule in RULES.values() for reason in rule.reasons}
    if clash := taken & set(cls.reasons):
        raise ValueError(f"rule {cls.name!r}: reasons {sorted(clash)} already belong to another rule")
    RULES[cls.name] = cls
    return cls


def make_rule(name: str, settings: dict[str, object] | None, where: str = "filters.rules") -> Filter:
    """A rule from its config entry; fail in one line naming the setting."""
    from pydantic import ValidationError

    from diffmix.filters import load_rules

    load_rules()
    prefix = f"{where}." if where else ""
    if name not in RULES:
        raise DiffmixError(f"{prefix}{name}: unknown rule {name!r} (known: {', '.join(sorted(RULES))})")
    try:
        return RULES[name].model_validate(settings or {})
    except ValidationError as exc:
        raise DiffmixError(f"{prefix}{name}.{first_error(exc)}") from None


def subject_of(message: pl.Expr) -> pl.Expr:
    """The first line of a (normalised) commit message."""
    return message.str.split_exact("\n", 1).struct.field("field_0").fill_null("")


def uniform(doc_id: pl.Expr, seed: int) -> pl.Expr:
    """A deterministic uniform [0, 1) per document: doc ids are already blake2b hashes.

    The seed rotates the values (a different, equally uniform sample).
    """
    u = doc_id.str.slice(0, 13).str.to_integer(base=16, strict=False).cast(pl.Float64) / float(16**13)
    return (u + seed * 0.6180339887498949) % 1.0


@dataclass(frozen=True)
class Utf8Bytes:
    """A string column's UTF-8 bytes where Polars holds them, without a copy: text i is
    `buffers[buffer_ids[i]][starts[i] : starts[i] + lengths[i]]` (empty for a null, `valid[i]` False).

    Polars keeps strings as Arrow string views (16 bytes per row: a text of up to 12
    bytes inline, a longer one as buffer index + offset), which it exports as they
    are; a conversion to an offsets layout copied every text (0.3-1.3 s per 466 MB).
    `buffers[0]` is the views buffer itself, where the short texts sit.
    """

    buffers: list[np.ndarray]  # uint8
    buffer_ids: np.ndarray  # int64
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64
    valid: np.ndarray  # bool

    def views(self) -> list[memoryview | None]:
        """Each text's bytes without a copy (None for a null): hash functions take them as they are."""
        buffers = [memoryview(b) for b in self.buffers]
        rows = zip(self.buffer_ids.tolist(), self.starts.tolist(), self.lengths.tolist(), self.valid.tolist())
        return [buffers[b][s : s + n] if ok else None for b, s, n, ok in rows]


_VIEW_BYTES = 16  # Arrow's string view: int32 length, then 12 inline bytes or (prefix, buffer index, offset)
_INLINE_BYTES = 12  # texts up to this long sit in their view, not in a data buffer


def _view_fields(views: np.ndarray, chunk: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The chunk's rows of its views buffer (uint8, n x 16), and each row's length, data-buffer
    index and offset in it, as int64 (the last two mean nothing for an inline text)."""
    rows = views[chunk.offset * _VIEW_BYTES : (chunk.offset + len(chunk)) * _VIEW_BYTES].reshape(-1, _VIEW_BYTES)

    def int32s(at: int) -> np.ndarray:
        return rows[:, at : at + 4].copy().view("<i4")[:, 0].astype(np.int64)

    return rows, int32s(0), int32s(8), int32s(12)


def utf8_bytes(texts: pl.Series) -> Utf8Bytes:
    """`texts`' bytes without a Python string per text, and without copying them out of Polars."""
    exported = texts.cast(pl.String).to_arrow(compat_level=pl.CompatLevel.newest())
    chunks = exported.chunks if isinstance(exported, pa.ChunkedArray) else [exported]
    buffers: list[np.ndarray] = []
    parts: list[tuple[np.ndarray, ...]] = []
    for chunk in chunks:
        if not pa.types.is_string_view(chunk.type):
            chunk = chunk.cast(pa.string_view())
        first = len(buffers)
        raw = chunk.buffers()
        views = np.frombuffer(raw[1], dtype=np.uint8) if raw[1] is not None else np.zeros(0, np.uint8)
        buffers.append(views)
        buffers.extend(np.frombuffer(b, dtype=np.uint8) for b in raw[2:] if b is not None)
        rows, view_lengths, data_buffers, data_offsets = _view_fields(views, chunk)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        lengths = np.where(valid, view_lengths, 0)
        inline = lengths <= _INLINE_BYTES
        row_starts = (np.arange(chunk.offset, chunk.offset + len(chunk), dtype=np.int64) * _VIEW_BYTES) + 4
        buffer_ids = np.where(inline, first, first + 1 + data_buffers)
        starts = np.where(inline, row_starts, data_offsets)
        parts.append((buffer_ids, starts, lengths, valid))
    if not parts:
        empty = np.zeros(0, np.int64)
        return Utf8Bytes([np.zeros(0, np.uint8)], empty, empty, empty, np.zeros(0, bool))
    return Utf8Bytes(buffers, *(np.concatenate(columns) for columns in zip(*parts)))


def strings_in_place(chunk: pa.Array) -> pa.Array | None:
    """A string-view chunk without nulls as a large_string array over its own data buffer, when
    its texts lie end to end there in row order (a column Polars took from Arrow strings and
    did not reorder: the documents of a partition); else None. No text is copied: Polars'
    own conversion copies every text (0.7 s per GB here)."""
    raw = chunk.buffers()
    if chunk.null_count or len(raw) != 3 or raw[1] is None or raw[2] is None:
        return None
    views, lengths, data_buffers, data_offsets = _view_fields(np.frombuffer(raw[1], dtype=np.uint8), chunk)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.frombuffer(raw[2], dtype=np.uint8)
    out_of_line = lengths > _INLINE_BYTES
    if out_of_line.any():
        first = int(np.argmax(out_of_line))
        offsets += data_offsets[first] - offsets[first]
        if data_buffers[out_of_line].any() or not np.array_equal(data_offsets[out_of_line], offsets[:-1][out_of_line]):
            return None
    if offsets[0] < 0 or offsets[-1] > len(data):
        return None
    inline = np.flatnonzero(~out_of_line & (lengths > 0))
    if len(inline):  # the short texts sit in their views; are they in the buffer too, where they belong?
        spots = np.arange(_INLINE_BYTES)
        present = spots < lengths[inline, None]
        at = np.minimum(offsets[inline, None] + spots, max(len(data) - 1, 0))
        if not len(data) or not np.array_equal(np.where(present, data[at], 0), np.where(present, views[inline, 4:16], 0)):
            return None
    return pa.Array.from_buffers(pa.large_string(), len(chunk), [None, pa.py_buffer(offsets), raw[2]])


# Scoring-frame columns (when present): one id per distinct old / new file text of the partition.
TEXT_IDS = ("old_text_id", "new_text_id")


def distinct_ids(columns: list[pl.Series]) -> list[pl.Series]:
    """For each column, the index of each row's text among the distinct texts of all columns (first seen first)."""
    # One chunk: Polars gathers a string column of several chunks by copying every gathered
    # text; of one chunk, by copying views (rechunking string views copies no text).
    joined = pl.concat(columns, rechunk=True)
    # Ids over one 64-bit hash per text (a pass over the bytes; grouping the texts themselves
    # hashed them twice), checked against the texts: a collision falls back to the texts.
    index = _first_seen_index(joined.hash(seed=0))
    representative = joined.gather(_first_rows(index)).gather(index)
    if not representative.eq_missing(joined).all():
        index = _first_seen_index(joined)
    out, start = [], 0
    for column in columns:
        out.append(index.slice(start, len(column)))
        start += len(column)
    return out


def _first_seen_index(keys: pl.Series) -> pl.Series:
    """Each row's index among the distinct keys, numbered in order of first appearance."""
    distinct = keys.unique(maintain_order=True)
    return keys.to_frame("k").join(distinct.to_frame("k").with_row_index("i"), on="k", how="left", maintain_order="left", nulls_equal=True)["i"]


def _first_rows(index: pl.Series) -> pl.Series:
    """For dense ids 0..n-1, the row where each id first occurs."""
    return pl.DataFrame({"i": index}).with_row_index("r").group_by("i").agg(pl.col("r").first()).sort("i")["r"]


def on_distinct(columns: list[pl.Series], score: Callable[[pl.Series], pl.DataFrame], ids: list[pl.Series] | None = None) -> list[pl.DataFrame]:
    """`score` computed once per distinct text of `columns`, gathered back row by row for each column.

    Commit data repeats itself: a file's new text is its old text at the next
    commit that touches it, so a partition's old and new files hold about half
    as many distinct texts as rows (1.9x fewer bytes on the dev data). `ids`
    (from `distinct_ids`, or the frame's `TEXT_IDS`) saves finding them again.
    """
    ids = ids if ids is not None else distinct_ids(columns)
    # Dense ids: rows dropped since the ids were made leave gaps.
    index = (pl.concat(ids).rank("dense") - 1).cast(pl.UInt32)
    values = score(pl.concat(columns, rechunk=True).gather(_first_rows(index)))  # one chunk: see distinct_ids
    out, start = [], 0
    for column in columns:
        out.append(values.select(pl.all().gather(index.slice(start, len(column)))))
        start += len(column)
    return out


def frame_text_ids(frame: pl.DataFrame) -> list[pl.Series] | None:
    """The frame's precomputed old/new text ids, if it has them."""
    return [frame[c] for c in TEXT_IDS] if all(c in frame.columns for c in TEXT_IDS) else None
