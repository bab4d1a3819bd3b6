"""Arrow schemas shared by every stage.

Three tables move through diffmix:

* **commit rows** (`COMMIT_SCHEMA`): one row per (commit, changed file), the
  CommitPack layout of `../shared/data/README.md`. Every ingest source yields it.
* **documents** (`DOCUMENT_SCHEMA`): one rendered training document per row,
  with the character spans trainers need. Filter score columns are appended
  (see `diffmix.filters`), so a corpus can be re-filtered without recomputing.
* **mixture rows** (`MIXTURE_FIELDS`, then `TOKEN_FIELDS` for a tokenised corpus): documents
  in training order.

Character offsets are Python `str` indices (code points), the unit a user of
`datasets` sees.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# --- commit rows (ingest output) -------------------------------------------------

COMMIT_SCHEMA = pa.schema(
    [
        # Null only in bad rows (rejected as `missing_field`), never from git.
        pa.field("commit", pa.string()),
        pa.field("parent", pa.string()),
        pa.field("old_file", pa.string()),
        pa.field("new_file", pa.string()),
        pa.field("old_contents", pa.large_string()),
        pa.field("new_contents", pa.large_string()),
        pa.field("subject", pa.string()),
        pa.field("message", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("license", pa.string()),
        pa.field("repos", pa.string()),
        pa.field("author_date", pa.string()),
        pa.field("author_email_hash", pa.string()),
        pa.field("author_name", pa.string()),
        pa.field("change_type", pa.string()),
        pa.field("lines_added", pa.int32()),
        pa.field("lines_deleted", pa.int32()),
        pa.field("is_binary", pa.bool_()),
        pa.field("too_large", pa.bool_()),
        # A message, path or other text field that was not valid text in its encoding
        # (decoded with U+FFFD in its place): the row is rejected as `bad_encoding`.
        pa.field("bad_encoding", pa.bool_()),
    ]
)

# A source without these cannot be turned into documents: an error naming them.
# `message` may stand in for `subject` and the other way round (see ingest).
REQUIRED_COMMIT_COLUMNS: tuple[str, ...] = ("commit", "old_contents", "new_contents")
# CommitPack has `old_file`/`new_file`; one of them is enough.
PATH_COLUMNS: tuple[str, ...] = ("old_file", "new_file")
MESSAGE_COLUMNS: tuple[str, ...] = ("message", "subject")

# Git change types, as `git diff --name-status` prints them.
CHANGE_TYPES = ("A", "M", "D", "R")

# --- documents (corpus output) ---------------------------------------------------

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        # text[:target_start] is the prompt, text[target_start:] the target.
        pa.field("target_start", pa.int32(), nullable=False),
        # Edit formats: offsets of the `<BEF> ` and `<MSG> ` tags and of the answer's tag (`<DFF> `,
        # `<EDT> ` or `<AFT> `; after a scratchpad plan, inside the target). Null for arithmetic and copy.
        pa.field("bef_start", pa.int32()),
        pa.field("msg_start", pa.int32()),
        pa.field("dff_start", pa.int32()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("repo", pa.string()),
        pa.field("commit", pa.string()),
        pa.field("parent", pa.string()),
        pa.field("path", pa.string()),
        pa.field("old_path", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("license", pa.string()),
        pa.field("change_type", pa.string()),
        pa.field("author_date", pa.string()),
        # Sizes of the change. A windowed commit document keeps the whole commit's (what the
        # filters judged); a synthetic edit source has no whole file beyond its window, so its are the window's.
        pa.field("old_chars", pa.int32()),
        pa.field("new_chars", pa.int32()),
        pa.field("diff_chars", pa.int32()),
        pa.field("lines_added", pa.int32()),
        pa.field("lines_deleted", pa.int32()),
        pa.field("n_hunks", pa.int32()),
    ]
)

# Optional pre-tokenised columns (see diffmix.pipelines.tokenize).
TOKEN_FIELDS = [
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("target_token_start", pa.int32()),
    pa.field("n_tokens", pa.int32()),
]

# --- rejects ---------------------------------------------------------------------

# Every dropped row: who it was, where it was dropped and why. Rows dropped by a
# quality filter or dedup also keep their document (text and scores) so that
# `diffmix build --refilter` can admit them again under a looser config.
REJECT_FIELDS = [
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
]
REJECT_ID_FIELDS = ["doc_id", "repo", "commit", "path", "change_type", "lang"]

# --- mixtures --------------------------------------------------------------------

MIXTURE_FIELDS = [
    pa.field("position", pa.int64(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("phase", pa.int32(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("text", pa.large_string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("target_start", pa.int32(), nullable=False),
]


def reject_schema(document_schema: pa.Schema) -> pa.Schema:
    """Rejects carry the document columns (text nullable) plus stage, reason, detail."""
    fields = [f.with_nullable(True) for f in document_schema]
    return pa.schema(fields + REJECT_FIELDS)
