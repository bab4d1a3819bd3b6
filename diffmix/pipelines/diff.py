"""Unified diffs in the diff-model style, computed by git's xdiff.

The DFF body is what `git diff -U3` prints for one file minus its
`diff --git` / `index` / `---` / `+++` lines: hunks only, with git's section
heading after the second `@@` where xdiff finds one, and
`\\ No newline at end of file` kept. Git's default indent heuristic is on, so
hunks are placed as `git diff` places them.

The engine is xdiff as libgit2 1.9.0 ships it (`vendor/xdiff`), compiled into
`diffmix._xdiff` and called with libgit2's options: the same bytes as
`pygit2.Patch.create_from` (tests compare the two on crafted and real pairs),
without libgit2's collision-detecting SHA-1 of both texts, which was over half
the time of every diff.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffmix import _xdiff

CONTEXT_LINES = 3


class BinaryDiffError(ValueError):
    """xdiff considers the pair binary (a NUL byte), so there is no text diff."""


@dataclass(frozen=True, slots=True)
class FileDiff:
    text: str  # hunks only; "" when old == new
    hunks: int
    added: int
    deleted: int


def diff_texts(old: str, new: str, context_lines: int = CONTEXT_LINES) -> FileDiff:
    """Diff two file texts; `old == ""` gives a `@@ -0,0 +1,N @@` hunk (a new file)."""
    result = _xdiff.diff(old, new, context_lines)
    if result is None:
        raise BinaryDiffError("binary")
    return FileDiff(*result)
