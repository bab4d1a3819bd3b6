"""The strict applier, the lenient applier and OpenELM-style diff classification."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from diffmix import _strict_apply
from diffmix.pipelines.apply import (
    DiffError,
    DiffState,
    apply_lenient,
    apply_strict,
    apply_strict_by_lines,
    parse_diff,
    split_lines,
    verify_diff,
)
from diffmix.pipelines.diff import diff_texts

FILE = "a\nb\nc\nd\ne\nf\ng\n"

ROUND_TRIPS = {
    "middle": (FILE, FILE.replace("d\n", "D\n")),
    "first line": (FILE, "A\n" + FILE[2:]),
    "last line": (FILE, FILE.replace("g\n", "G\n")),
    "no final newline": ("a\nb", "a\nc"),
    "newline added at end": ("a\nb", "a\nb\n"),
    "newline removed at end": ("a\nb\n", "a\nb"),
    "crlf": ("a\r\nb\r\nc\r\n", "a\r\nX\r\nc\r\n"),
    "mixed endings": ("a\r\nb\nc\r\n", "a\r\nb2\nc\r\n"),
    "new file": ("", "one\ntwo\n"),
    "new file without final newline": ("", "one"),
    "emptied": ("one\ntwo\n", ""),
    "one-line file": ("x\n", "y\n"),
    "lone CR inside a line": ("a\rb\nc\n", "a\rb\nC\n"),
    "unicode": ("π = 3.14\nτ = 2π\n", "π = 3.14159\nτ = 2π\n"),
    "many hunks": ("".join(f"{i}\n" for i in range(100)), "".join(f"{i if i % 17 else 'x'}\n" for i in range(100))),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_strict_and_lenient_round_trip(name: str) -> None:
    old, new = ROUND_TRIPS[name]
    diff = diff_texts(old, new).text
    assert apply_strict(old, diff) == new
    assert apply_lenient(old, diff) == (new, 0)
    assert verify_diff(old, diff) is DiffState.VALID


@pytest.mark.parametrize(
    ("diff", "state"),
    [
        ("@@ -4,1 +4,1 @@\n-d\n+D\n", DiffState.VALID),
        ("", DiffState.BAD_HEADER),
        ("just text\n", DiffState.BAD_HEADER),
        ("@@ -4 +4 @\n-d\n+D\n", DiffState.BAD_HEADER),
        ("@@ -4,1 +4,1 @@\n-d\n*D\n", DiffState.BAD_HUNK_LINE),
        ("@@ -4,1 +4,1 @@\n-d\n+D", DiffState.BAD_HUNK_LINE),  # no final newline
        ("@@ -4,2 +4,1 @@\n-d\n+D\n", DiffState.WRONG_LINE_NUMBERS),  # header count disagrees
        ("@@ -2,1 +2,1 @@\n-d\n+D\n", DiffState.WRONG_LINE_NUMBERS),  # text exists, at line 4
        ("@@ -4,1 +5,1 @@\n-d\n+D\n", DiffState.WRONG_LINE_NUMBERS),  # new start inconsistent
        ("@@ -4,1 +4,1 @@\n-zzz\n+D\n", DiffState.CONTEXT_NOT_FOUND),
        ("@@ -6,1 +6,1 @@\n-f\n+F\n@@ -2,1 +2,1 @@\n-b\n+B\n", DiffState.WRONG_LINE_NUMBERS),  # out of order
        ("@@ -7,0 +8,1 @@\n+h\n", DiffState.VALID),  # an insertion after the last of the 7 lines
        ("@@ -8,0 +9,1 @@\n+h\n", DiffState.WRONG_LINE_NUMBERS),  # after a line the file does not have
        # Made-up text is context_not_found whichever number is also wrong (found in review).
        ("@@ -9,1 +9,1 @@\n-zzz\n+D\n", DiffState.CONTEXT_NOT_FOUND),  # past the end
        ("@@ -4,1 +5,1 @@\n-zzz\n+D\n", DiffState.CONTEXT_NOT_FOUND),  # new start inconsistent
        ("@@ -4,2 +4,1 @@\n-zzz\n+D\n", DiffState.CONTEXT_NOT_FOUND),  # header count disagrees
        ("@@ -2,1 +2,1 @@\n-b\n+B\n@@ -6,1 +6,1 @@\n-zzz\n+F\n", DiffState.CONTEXT_NOT_FOUND),  # the second hunk's
        # Numbers as git reads them: ASCII digits, and not so many that int() refuses them.
        ("@@ -" + "1" * 5000 + ",1 +1,1 @@\n-a\n+A\n", DiffState.BAD_HEADER),
        ("@@ -\uff14,1 +\uff14,1 @@\n-d\n+D\n", DiffState.BAD_HEADER),  # fullwidth 4
        ("@@ -\u0664,1 +\u0664,1 @@\n-d\n+D\n", DiffState.BAD_HEADER),  # Arabic-Indic 4
    ],
)
def test_verify_diff_states(diff: str, state: DiffState) -> None:
    assert verify_diff(FILE, diff) is state


def test_lenient_ignores_line_numbers_and_counts() -> None:
    # Wrong numbers and counts, a stripped blank context line: lenient still applies it.
    diff = "@@ -1,9 +1,9 @@\n c\n-d\n+D\n e\n"
    assert verify_diff(FILE, diff) is DiffState.WRONG_LINE_NUMBERS
    assert apply_lenient(FILE, diff) == (FILE.replace("d\n", "D\n"), 0)


@pytest.mark.parametrize(
    ("before", "diff", "expected"),
    [
        # a missing no-newline marker where the file's last line has none: forgiven
        ("a\nb\nc\nd", "@@ -2,3 +2,3 @@\n b\n c\n-d\n+e\n", ("a\nb\nc\ne\n", 0)),
        # a marker the file does not need: forgiven too
        ("a\nb\n", "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+B\n", ("a\nB\n", 0)),
        # text after a hunk that changed something, or a header cut short: ignored
        (FILE, "@@ -3,3 +3,3 @@\n c\n-d\n+D\n e\nDone.\n", (FILE.replace("d\n", "D\n"), 0)),
        (FILE, "@@ -3,3 +3,3 @@\n c\n-d\n+D\n e\n@@ -9,3 +9", (FILE.replace("d\n", "D\n"), 0)),
        # an unneeded marker on both sides: the new line keeps its newline (it had joined "e")
        (FILE, "@@ -4,1 +4,1 @@\n-d\n\\ No newline at end of file\n+D\n\\ No newline at end of file\n", (FILE.replace("d\n", "D\n"), 0)),
        # empty lines: dropped at a hunk's end (a blank line before the stop), context inside it
        (FILE, "@@ -3,3 +3,3 @@\n c\n-d\n+D\n e\n\n", (FILE.replace("d\n", "D\n"), 0)),
        (FILE, "@@ -3,2 +3,2 @@\n c\n-d\n+D\n\n\n@@ -6,1 +6,1 @@\n-f\n+F\n", (FILE.replace("d\n", "D\n").replace("f\n", "F\n"), 0)),
        ("a\n\nb\n", "@@ -1,3 +1,3 @@\n a\n\n-b\n+B\n", ("a\n\nB\n", 0)),
        # added lines alone apply to an empty file only
        ("", "@@ -0,0 +1,2 @@\n+x\n+y\n", ("x\ny\n", 0)),
        (FILE, "@@ -1,7 +1,7 @@\n+\n+\n", (FILE, 1)),
    ],
)
def test_lenient_forgives_what_model_output_gets_wrong(before: str, diff: str, expected: tuple[str, int]) -> None:
    assert apply_lenient(before, diff) == expected


def test_lenient_refuses_a_bad_line_before_any_change() -> None:
    with pytest.raises(DiffError) as caught:
        apply_lenient(FILE, "@@ -3,3 +3,3 @@\n c\n*d\n")
    assert caught.value.state is DiffState.BAD_HUNK_LINE


def test_lenient_counts_failed_hunks() -> None:
    diff = "@@ -2 +2 @@\n-b\n+B\n@@ -9 +9 @@\n-nope\n+x\n"
    assert apply_lenient(FILE, diff) == (FILE.replace("b\n", "B\n"), 1)


def test_parse_diff_reads_headers_and_no_newline_marker() -> None:
    hunks = parse_diff("@@ -1,2 +1,2 @@ section\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n")
    assert len(hunks) == 1
    hunk = hunks[0]
    assert (hunk.old_start, hunk.old_len, hunk.new_start, hunk.new_len, hunk.section) == (1, 2, 1, 2, "section")
    assert hunk.old_side() == ["a\n", "b"]
    assert hunk.new_side() == ["a\n", "c"]


@pytest.mark.parametrize(
    ("text", "lines"),
    [("", []), ("a", ["a"]), ("a\n", ["a\n"]), ("a\nb", ["a\n", "b"]), ("a\r\nb\r\n", ["a\r\n", "b\r\n"]), ("\n\n", ["\n", "\n"])],
)
def test_split_lines_on_newline_only(text: str, lines: list[str]) -> None:
    assert split_lines(text) == lines
    assert "".join(lines) == text


_LINES = st.lists(st.sampled_from(["a", "b", "", " x", "\r", "c\r", "π", "\x0b", "\u2028"]), max_size=12)


def _text(lines: list[str], final_newline: bool) -> str:
    return "\n".join(lines) + ("\n" if final_newline and lines else "")


@given(_LINES, st.booleans())
def test_split_lines_matches_reference(lines: list[str], final_newline: bool) -> None:
    text = _text(lines, final_newline)
    reference = [line + "\n" for line in text.split("\n")]
    last = reference.pop()
    if last != "\n":
        reference.append(last[:-1])
    assert split_lines(text) == (reference if text else [])


@settings(max_examples=300)
@given(_LINES, st.booleans(), _LINES, st.booleans())
def test_xdiff_then_strict_apply_round_trips(old: list[str], old_nl: bool, new: list[str], new_nl: bool) -> None:
    before, after = _text(old, old_nl), _text(new, new_nl)
    assume(before != after)  # no change has no diff (and is rejected as no_change)
    diff = diff_texts(before, after).text
    assert apply_strict(before, diff) == after
    assert apply_lenient(before, diff)[0] == after


_EDITS = st.lists(
    st.tuples(st.sampled_from(["digit", "drop", "dup", "marker", "blank", "op"]), st.integers(0, 10**6)),
    max_size=3,
)


def _damage(diff: str, edits: list[tuple[str, int]]) -> str:
    """A diff with a few corruptions a model might make (wrong numbers, lost or repeated lines, ...)."""
    lines = diff.split("\n")
    for kind, at in edits:
        i = at % len(lines)
        if kind == "digit" and any(ch.isdigit() for ch in lines[i]):
            j = [k for k, ch in enumerate(lines[i]) if ch.isdigit()][at % sum(ch.isdigit() for ch in lines[i])]
            lines[i] = lines[i][:j] + str((int(lines[i][j]) + 1 + at % 3) % 10) + lines[i][j + 1 :]
        elif kind == "drop" and len(lines) > 1:
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "marker":
            lines.insert(i, "\\ No newline at end of file")
        elif kind == "blank":
            lines.insert(i, "")
        elif kind == "op" and lines[i]:
            lines[i] = "+- "[at % 3] + lines[i][1:]
    return "\n".join(lines)


@settings(max_examples=400)
@given(_LINES, st.booleans(), _LINES, st.booleans(), _EDITS)
def test_fast_strict_path_agrees_with_the_line_by_line_path(old: list[str], old_nl: bool, new: list[str], new_nl: bool, edits: list[tuple[str, int]]) -> None:
    before, after = _text(old, old_nl), _text(new, new_nl)
    assume(before != after)
    diff = _damage(diff_texts(before, after).text, edits)
    try:
        expected: str | DiffState = apply_strict_by_lines(before, diff)
    except DiffError as exc:
        expected = exc.state
    fast = _strict_apply.apply(before, diff)
    assert fast is None or fast == expected  # the fast path never accepts what the reference rejects
    if not edits and "\\ No newline" not in diff:
        assert fast == after  # and it takes every well-formed diff without a no-newline marker
    try:
        got: str | DiffState = apply_strict(before, diff)
    except DiffError as exc:
        got = exc.state
    assert got == expected


@pytest.mark.parametrize(
    ("before", "diff", "expected"),
    [
        ("a\nb\n", "@@ -2 +2 @@\n-b\n+B\n", "a\nB\n"),
        ("\u00e9\n\u00fc\n", "@@ -2 +2 @@ x\n-\u00fc\n+\u20ac\n", "\u00e9\n\u20ac\n"),
        ("", "@@ -0,0 +1 @@\n+new\n", "new\n"),
        ("a\n", "@@ -1 +0,0 @@\n-a\n", ""),
        ("a\nb", "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n", None),  # the marker: by lines
        ("a\n", "@@ -\u0661 +\u0661 @@\n-a\n+b\n", None),  # Arabic-Indic digits: Python's \d reads them
        ("a\n", "@@ -99999999999999999999 +1 @@\n-a\n+b\n", None),  # past 2^40
        ("\ud800\n", "@@ -1 +1 @@\n-\ud800\n+b\n", None),  # a lone surrogate has no UTF-8
        ("a\n", "@@ -1 +1 @@\r\n-a\n+b\n", None),
        ("a\n", " a\n@@ -1 +1 @@\n-a\n+b\n", None),
        ("a\n", "@@ -1 +1 @@\n-a\n+b", None),
    ],
)
def test_compiled_fast_path(before: str, diff: str, expected: str | None) -> None:
    """What the compiled fast path takes (the new text) and what it leaves to the line-by-line path (None);
    apply_strict gives the reference path's answer either way."""
    assert _strict_apply.apply(before, diff) == expected
    try:
        reference: str | DiffState = apply_strict_by_lines(before, diff)
    except DiffError as exc:
        reference = exc.state
    assert expected is None or reference == expected


def test_lenient_takes_the_named_occurrence_of_a_repeated_block() -> None:
    """The hunk's context also occurs one line earlier: by content alone it would land there
    (found by Hypothesis: the xdiff round trip above)."""
    before, after = "a\na\na\na\n", "a\na\na\na\na"
    diff = diff_texts(before, after).text
    assert diff.startswith("@@ -2,3 +2,4 @@")
    assert apply_lenient(before, diff) == (after, 0)
