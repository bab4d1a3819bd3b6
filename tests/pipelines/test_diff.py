"""The DFF body: git's xdiff, checked against the real `git diff` and against libgit2 (pygit2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix.pipelines.diff import BinaryDiffError, diff_texts

FUNC = "def f():\n    a = 1\n    return a\n\n\nclass X:\n    def g(self):\n        x = 1\n        y = 2\n        z = 3\n        return x\n"

CASES = {
    "one changed line": ("a\nb\nc\n", "a\nB\nc\n"),
    "section heading": (FUNC, FUNC.replace("return x", "return y")),
    "two hunks": ("".join(f"{i}\n" for i in range(30)), "".join(f"{i}\n" for i in range(30)).replace("2\n", "two\n", 1).replace("27\n", "27b\n")),
    "no final newline both": ("a\nb", "a\nc"),
    "final newline added": ("x", "x\n"),
    "final newline removed": ("x\n", "x"),
    "crlf file": ("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n"),
    "new file": ("", "new\nfile\n"),
    "emptied file": ("gone\n", ""),
    "first line": ("a\nb\nc\nd\ne\n", "A\nb\nc\nd\ne\n"),
    "last line": ("a\nb\nc\nd\ne\n", "a\nb\nc\nd\nE\n"),
    "one-line file": ("only\n", "changed\n"),
    "insertion in blank-line block (indent heuristic)": ("a\n\nb\nc\n\nd\n", "a\n\nb\nc\n\nx\n\nd\n"),
    "contains a literal <MSG> line": ("x\n<MSG> not a tag\n", "y\n<MSG> not a tag\n"),
    "closing braces after a blank line (indent heuristic)": ("a\nx\n\n}\n", "a\nx\n\n}\n    c\n}\n"),
}


def git_diff_body(tmp_path: Path, old: str, new: str) -> str:
    """`git diff --no-index -U3` without its `diff --git` / `index` / `---` / `+++` lines."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(old.encode())
    b.write_bytes(new.encode())
    out = subprocess.run(
        ["git", "-c", "core.autocrlf=false", "diff", "--no-index", "--no-color", "-U3", str(a), str(b)],
        capture_output=True,
    ).stdout.decode()
    return out[out.index("\n@@ ") + 1 :] if "\n@@ " in out else ""


@pytest.mark.parametrize("name", list(CASES))
def test_diff_matches_git(tmp_path: Path, name: str) -> None:
    old, new = CASES[name]
    assert diff_texts(old, new).text == git_diff_body(tmp_path, old, new)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("a\nb\nc\n", "a\nB\nc\n", "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"),
        ("", "new\n", "@@ -0,0 +1 @@\n+new\n"),
        ("a\nb", "a\nc", "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"),
        ("same\n", "same\n", ""),
        # git's indent heuristic slides the insertion up to the blank line (without it: `@@ -2,3 +2,5 @@ a`, added at the end)
        ("a\nx\n\n}\n", "a\nx\n\n}\n    c\n}\n", "@@ -1,4 +1,6 @@\n a\n x\n \n+}\n+    c\n }\n"),
    ],
)
def test_diff_text(old: str, new: str, expected: str) -> None:
    assert diff_texts(old, new).text == expected


def test_diff_counts() -> None:
    old, new = CASES["two hunks"]
    diff = diff_texts(old, new)
    assert (diff.hunks, diff.added, diff.deleted) == (2, 2, 2)


def test_section_heading_kept() -> None:
    old, new = CASES["section heading"]
    assert diff_texts(old, new).text.startswith("@@ -8,4 +8,4 @@ class X:\n")


def test_binary_is_refused() -> None:
    with pytest.raises(BinaryDiffError):
        diff_texts("a\x00b\n", "a\x00c\n")


def libgit2_diff(old: str, new: str) -> tuple[str, int, int, int] | None:
    """What libgit2 itself (pygit2) gives for the pair, as `diff_texts` reports it; None for binary."""
    import pygit2
    from pygit2.enums import DiffOption

    patch = pygit2.Patch.create_from(old, new, context_lines=3, flag=DiffOption.INDENT_HEURISTIC)
    data: bytes = patch.data
    if not data:
        return ("", 0, 0, 0)
    start = data.find(b"\n@@ -")
    if start < 0:
        assert b"\nBinary files " in data
        return None
    body = data[start + 1 :].decode()
    _, added, deleted = patch.line_stats
    return (body, body.count("\n@@ -") + 1, added, deleted)


def ours(old: str, new: str) -> tuple[str, int, int, int] | None:
    try:
        diff = diff_texts(old, new)
    except BinaryDiffError:
        return None
    return (diff.text, diff.hunks, diff.added, diff.deleted)


HEADING_80 = "a" * 79 + "\u00e9"  # git cuts section headings at 80 bytes: here inside the 2-byte e-acute
LIBGIT2_CASES = {
    **CASES,
    "heading cut inside a UTF-8 character": (f"{HEADING_80}\n1\n2\n3\n4\nx\n", f"{HEADING_80}\n1\n2\n3\n4\ny\n"),
    "heading with trailing blanks": ("def f():  \t\n1\n2\n3\n4\nx\n", "def f():  \t\n1\n2\n3\n4\ny\n"),
    "heading from a $ line, not a digit line": ("$v = 1\n2\n1\n2\n3\n4\nx\n", "$v = 1\n2\n1\n2\n3\n4\ny\n"),
    "non-ASCII first byte is no heading": ("\u00e9t\u00e9\n1\n2\n3\n4\nx\n", "\u00e9t\u00e9\n1\n2\n3\n4\ny\n"),
    "NUL after the first 8000 bytes is text": ("x\n" * 4000 + "\x00a\n", "x\n" * 4000 + "\x00b\n"),
    "NUL in the first 8000 bytes is binary": ("a\x00\n", "b\x00\n"),
    "NUL on one side only": ("a\n", "a\x00\n"),
    "identical binary": ("a\x00\n", "a\x00\n"),
    "both empty": ("", ""),
    "CR-only line ends": ("a\rb\rc\r", "a\rB\rc\r"),
    "whitespace-only lines moved": ("a\n  \n\t\nb\n", "a\n\t\n  \nb\n"),
    # The lines both sides share at their start and end are classified once (vendor/xdiff/xprepare.c).
    "shared head and tail around one change": ("".join(f"{i}\n" for i in range(40)), "".join(f"{i}\n" for i in range(40)).replace("\n20\n", "\n20x\n")),
    "only the unterminated last line differs": ("a\nb\nc", "a\nb\nd"),
    "last line loses its newline": ("a\nb\nc\n", "a\nb\nc"),
    "shared tail begins inside a line": ("xa\nb\nc\n", "ya\nb\nc\n"),
    "one side is the other's head": ("a\nb\n", "a\nb\nc\nd\n"),
    "shared head and tail would overlap": ("a\na\n", "a\na\na\n"),
    "shared lines recur inside the change": ("dup\nA\ndup\nB\ndup\n" * 3, "dup\nA\ndup\nC\ndup\ndup\nB\ndup\n" + "dup\nA\ndup\nB\ndup\n" * 2),
    # xdiff sets aside lines with many matches; the shared head's blank lines must count for both sides
    "blank lines of the shared head counted on both sides": ("\n" * 6 + "x\n\nc\nc\nb\nb\n}\n}\n\n}\n}\ny\n", "\n" * 6 + "x\nc\nb\n}\n}\n\n}\n}\ny\n"),
    "CRLF lines around a change": ("a\r\nb\r\nc\r\nd\r\n", "a\r\nB\r\nc\r\nd\r\n"),
}


@pytest.mark.parametrize("name", list(LIBGIT2_CASES))
def test_same_as_libgit2(name: str) -> None:
    """The vendored xdiff, called as diffmix calls it, prints what libgit2 prints for the pair."""
    old, new = LIBGIT2_CASES[name]
    assert ours(old, new) == libgit2_diff(old, new)


LINES = ["def f():", "    return 1", "", "  ", "}", "$x = 1;", "_p", "\u00e9" * 50, "a\r", "// c", "END", "\u03b1\u03b2", "b" * 78 + "\u20ac"]


@given(
    st.lists(st.sampled_from(LINES), max_size=25),
    st.lists(st.tuples(st.integers(0, 30), st.sampled_from([*LINES, None])), max_size=6),
    st.sampled_from(["", "\n", "\r\n"]),
    st.sampled_from(["", "\n", "\r\n"]),
)
@settings(max_examples=300, deadline=None)
def test_same_as_libgit2_on_generated_edits(lines: list[str], edits: list[tuple[int, str | None]], old_end: str, new_end: str) -> None:
    changed = list(lines)
    for position, line in edits:  # None deletes the line at the position
        at = min(position, len(changed))
        if line is None:
            del changed[at : at + 1]
        else:
            changed.insert(at, line)
    old, new = "\n".join(lines) + old_end, "\n".join(changed) + new_end
    assert ours(old, new) == libgit2_diff(old, new)


def test_same_as_libgit2_on_real_commits(dev_parquet: Path) -> None:
    """Every 10th pair of the dev data (the benchmark compares all 19,710: none differs)."""
    import pyarrow.parquet as pq

    table = pq.read_table(dev_parquet, columns=["old_contents", "new_contents"])
    pairs = list(zip(table["old_contents"].to_pylist()[::10], table["new_contents"].to_pylist()[::10]))
    differing = [i for i, (old, new) in enumerate(pairs) if ours(old or "", new or "") != libgit2_diff(old or "", new or "")]
    assert len(pairs) > 1900 and differing == []
