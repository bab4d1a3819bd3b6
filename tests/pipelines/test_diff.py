"""The DFF body: libgit2's xdiff, checked against the real `git diff` on crafted pairs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("old", "new"), [("a\n", "b\n"), ("", "new file\n"), ("same\n", "same\n"), ("caf\u00e9\n", "gone\n")])
def test_blob_ids_are_gits(old: str, new: str) -> None:
    """The diff carries git's blob ids of both texts (what `git hash-object` prints)."""
    import hashlib

    def blob_id(text: str) -> str:
        data = text.encode()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    diff = diff_texts(old, new)
    assert (diff.old_id, diff.new_id) == (blob_id(old), blob_id(new))
