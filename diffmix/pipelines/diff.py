"""Unified diffs in the diff-model style, computed by libgit2's xdiff (as git does).

The DFF body is what `git diff -U3` prints for one file minus its
`diff --git` / `index` / `---` / `+++` lines: hunks only, with git's section
heading after the second `@@` where xdiff finds one, and
`\\ No newline at end of file` kept. Git's default indent heuristic is on, so
hunks are placed as `git diff` places them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pygit2
from pygit2.enums import DiffOption

CONTEXT_LINES = 3
_FLAGS = DiffOption.INDENT_HEURISTIC


class BinaryDiffError(ValueError):
    """xdiff considers the pair binary (a NUL byte), so there is no text diff."""


@dataclass(frozen=True, slots=True)
class FileDiff:
    text: str  # hunks only; "" when old == new
    hunks: int
    added: int
    deleted: int
    # git's blob ids of the two texts: libgit2 hashes both sides of every diff anyway.
    old_id: str = ""
    new_id: str = ""


def diff_texts(old: str, new: str, context_lines: int = CONTEXT_LINES) -> FileDiff:
    """Diff two file texts; `old == ""` gives a `@@ -0,0 +1,N @@` hunk (a new file)."""
    patch = pygit2.Patch.create_from(old, new, context_lines=context_lines, flag=_FLAGS)
    data: bytes = patch.data
    delta = patch.delta
    ids = str(delta.old_file.id), str(delta.new_file.id)
    if not data:
        return FileDiff("", 0, 0, 0, *ids)
    start = data.find(b"\n@@ -")
    if start < 0:
        if b"\nBinary files " in data:
            raise BinaryDiffError("binary")
        raise ValueError(f"unexpected xdiff output: {data[:200]!r}")
    _, added, deleted = patch.line_stats
    body = data[start + 1 :].decode("utf-8")
    return FileDiff(body, body.count("\n@@ -") + 1, added, deleted, *ids)
