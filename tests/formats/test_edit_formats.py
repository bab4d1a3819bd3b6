"""Edit formats: exact renderings, round trips on crafted edge cases and real commits, parse failure reasons."""

from __future__ import annotations

import pytest

from diffmix.formats.base import ParseError, format_names, get_format
from diffmix.formats.edit import EditRecord, content_hunks, number_lines, unnumber_lines
from diffmix.pipelines.apply import apply_lenient

EDIT_FORMATS = format_names("edit")

# (id, before, after, new_file); message is fixed below. Every format must round-trip all of them.
EDGE_CASES = [
    ("middle_line", "a\nb\nc\nd\ne\nf\ng\nh\n", "a\nb\nc\nD\ne\nf\ng\nh\n", False),
    ("no_final_newline", "a\nb\nc", "a\nb\nC", False),
    ("newline_added_at_end", "a\nb", "a\nb\n", False),
    ("newline_removed_at_end", "a\nb\n", "a\nb", False),
    ("crlf", "a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n", False),
    ("crlf_to_lf", "a\r\nb\r\n", "a\nb\n", False),
    ("new_file_addfile", "", "x\ny\n", True),
    ("empty_existing_file", "", "x\n", False),
    ("one_line_file", "x\n", "y\n", False),
    ("one_line_no_newline", "x", "y", False),
    ("first_and_last_line", "".join(f"{i}\n" for i in range(1, 11)), "0\n" + "".join(f"{i}\n" for i in range(2, 10)) + "ten\n", False),
    ("delete_everything", "a\nb\n", "", False),
    ("insert_at_start", "a\nb\n", "z\na\nb\n", False),
    ("append_without_newline", "a\nb", "a\nb\nc", False),
    ("repeated_lines", "x\n" * 10, "x\n" * 9 + "y\nx\n", False),
    ("repeated_blocks", "def f():\n    pass\n\n" * 4, "def f():\n    pass\n\n" * 3 + "def g():\n    pass\n\n", False),
    ("marker_lines", "=======\ntitle\n=======\n\\ No newline at end of file\n", "=======\nTitle\n=======\n\\ No newline at end of file\n", False),
    ("blank_lines", "\n\n\na\n\n\n", "\n\n\nb\n\n\n", False),
    ("unicode", "ü = 1\n😀 = 2\n", "ü = 1\n😀 = 3\n", False),
    ("two_far_hunks", "".join(f"l{i}\n" for i in range(40)), "".join(f"l{i}\n" if i not in (3, 30) else f"L{i}\n" for i in range(40)), False),
]  # fmt: skip


def _record(before: str, after: str, new_file: bool = False, message: str = "Fix it\r\n\r\nLonger body.") -> EditRecord:
    return EditRecord.from_texts("pkg/mod.py", before, message, after, new_file)


@pytest.mark.parametrize("name", EDIT_FORMATS)
@pytest.mark.parametrize(("case", "before", "after", "new_file"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_round_trip_edge_cases(name: str, case: str, before: str, after: str, new_file: bool) -> None:
    fmt = get_format(name)
    record = _record(before, after, new_file)
    rendered = fmt.render(record)
    assert rendered.text == rendered.prompt + rendered.target
    assert fmt.parse(rendered.prompt, rendered.target) == fmt.answer(record) == after
    assert fmt.parse_document(rendered.text, rendered.target_start) == after  # the build's round trip


@pytest.mark.parametrize("name", EDIT_FORMATS)
def test_round_trip_real_commits(name: str, real_records: list[EditRecord]) -> None:
    fmt = get_format(name)
    for record in real_records:
        rendered = fmt.render(record)
        assert fmt.parse(rendered.prompt, rendered.target) == record.after, record.path
        assert fmt.parse_document(rendered.text, rendered.target_start) == record.after, record.path


_SMALL = _record("a\nb\nc\n", "a\nB\nc\n", message="Fix b")
_HEAD = "<NME> pkg/mod.py\n<BEF> a\nb\nc\n\n<MSG> Fix b\n"
_DIFF = "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
EXPECTED = [
    ("openelm_v1", _HEAD + "<DFF> " + _DIFF),
    ("udiff_nolines_v1", _HEAD + "<DFF> @@ @@\n a\n-b\n+B\n c\n"),
    ("udiff_marked_v1", _HEAD + "<DFF> @@ -1,3 +1,3 @@\nCON a\nDEL b\nADD B\nCON c\n"),
    ("search_replace_v1", _HEAD + "<EDT> <<<<<<< SEARCH\na\nb\nc\n=======\na\nB\nc\n>>>>>>> REPLACE\n"),
    ("whole_file_v1", _HEAD + "<AFT> a\nB\nc\n"),
    (
        "scratch_lines_v1",
        "<NME> pkg/mod.py\n<BEF> 1| a\n2| b\n3| c\n\n<MSG> Fix b\n<PLN> replace 2 with 1 line\n<DFF> " + _DIFF,
    ),
    ("scratch_quote_v1", _HEAD + "<PLN> goal: Fix b\nreplace 1 line with 1 line:\n> b\n<DFF> @@ @@\n a\n-b\n+B\n c\n"),
]


@pytest.mark.parametrize(("name", "text"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_exact_rendering(name: str, text: str) -> None:
    rendered = get_format(name).render(_SMALL)
    assert rendered.text == text
    tags = {"bef_start": "<BEF> ", "msg_start": "<MSG> "}
    for key, tag in tags.items():
        assert rendered.text[rendered.sections[key] :].startswith(tag)
    answer_tag = rendered.text[rendered.sections["dff_start"] :][:6]
    assert answer_tag in ("<DFF> ", "<EDT> ", "<AFT> ")
    # The target starts right after the first tag that follows <MSG>.
    assert rendered.text[rendered.target_start - 6 : rendered.target_start] in ("<DFF> ", "<EDT> ", "<AFT> ", "<PLN> ")


def test_all_required_formats_are_registered() -> None:
    assert set(EDIT_FORMATS) >= {
        "openelm_v1",
        "udiff_nolines_v1",
        "udiff_marked_v1",
        "search_replace_v1",
        "whole_file_v1",
        "scratch_lines_v1",
        "scratch_quote_v1",
    }
    assert get_format("scratch_quote").name == "scratch_quote_v1"


# (format, generated target, expected reason) against the prompt of _SMALL.
BAD_GENERATIONS = [
    ("openelm_v1", "@@ -2,3 +2,3 @@\n a\n-b\n+B\n c\n", "wrong_line_numbers"),
    ("openelm_v1", "@@ -1,3 +1,3 @@\n a\n-q\n+B\n c\n", "context_not_found"),
    ("udiff_nolines_v1", "@@ @@\n a\n-x\n+B\n c\n", "context_not_found"),
    ("udiff_nolines_v1", "@@ @@\n a\n*b\n", "bad_hunk_line"),
    ("udiff_nolines_v1", " a\n-b\n+B\n", "bad_header"),
    ("udiff_nolines_v1", "", "bad_header"),
    ("udiff_marked_v1", "@@ -1,3 +1,3 @@\nCON a\nDLT b\n", "bad_hunk_line"),
    ("udiff_marked_v1", "@@ -1,3 +1,3 @@\nCON a\nDEL b\nADD B\n", "wrong_line_numbers"),
    ("udiff_marked_v1", "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n", "bad_hunk_line"),
    ("search_replace_v1", "<<<<<<< SEARCH\nb\n=======\nB\n", "unterminated_block"),
    ("search_replace_v1", "hello\n", "bad_block"),
    ("search_replace_v1", "", "no_blocks"),
    ("search_replace_v1", "<<<<<<< SEARCH\nzzz\n=======\nB\n>>>>>>> REPLACE\n", "context_not_found"),
    ("search_replace_v1", "<<<<<<< SEARCH\nb\n>>>>>>> REPLACE\n", "bad_block"),
    ("scratch_lines_v1", "replace 3 with 1 line\n<DFF> " + _DIFF, "plan_mismatch"),
    ("scratch_lines_v1", "replace 2 with 2 lines\n<DFF> " + _DIFF, "plan_mismatch"),
    ("scratch_lines_v1", "replace 9 with 1 line\n<DFF> " + _DIFF, "plan_out_of_range"),
    ("scratch_lines_v1", "change line 2\n<DFF> " + _DIFF, "bad_plan"),
    ("scratch_lines_v1", "replace 2 with 1 line\n", "missing_answer"),
    ("scratch_lines_v1", "replace 2 with 1 line\n<DFF> @@ -1,3 +1,3 @@\n a\n-q\n+B\n c\n", "context_not_found"),
    ("scratch_lines_v1", "replace 2 with 1 line\n<DFF> @@ -1,3 +1,3 @@\n a\n-b\n+B\n", "wrong_line_numbers"),
    ("scratch_quote_v1", "goal: Fix c\nreplace 1 line with 1 line:\n> b\n<DFF> @@ @@\n a\n-b\n+B\n c\n", "goal_mismatch"),
    ("scratch_quote_v1", "goal: Fix b\nreplace 1 line with 1 line:\n> a\n<DFF> @@ @@\n a\n-b\n+B\n c\n", "quote_mismatch"),
    ("scratch_quote_v1", "goal: Fix b\ndelete 1 line:\n> b\n<DFF> @@ @@\n a\n-b\n+B\n c\n", "plan_mismatch"),
    ("scratch_quote_v1", "goal: Fix b\nreplace 2 lines with 1 line:\n> b\n<DFF> @@ @@\n a\n-b\n+B\n c\n", "bad_plan"),
    ("scratch_quote_v1", "Fix b\nreplace 1 line with 1 line:\n> b\n<DFF> @@ @@\n a\n-b\n+B\n c\n", "bad_plan"),
    ("scratch_quote_v1", "goal: Fix b\nreplace 1 line with 1 line:\n> b\n<DFF> @@ @@\n z\n-b\n+B\n", "context_not_found"),
    # A generation looping on digits: past int()'s 4,300-digit limit it raised ValueError (found in review).
    ("openelm_v1", "@@ -" + "1" * 5000 + ",3 +1,3 @@\n a\n-b\n+B\n c\n", "bad_header"),
    ("udiff_marked_v1", "@@ -" + "1" * 5000 + ",3 +1,3 @@\nCON a\nDEL b\nADD B\nCON c\n", "bad_header"),
    ("scratch_lines_v1", "replace " + "2" * 5000 + " with 1 line\n<DFF> " + _DIFF, "bad_plan"),
    ("scratch_lines_v1", "insert 1 line after \uff11\n<DFF> " + _DIFF, "bad_plan"),  # a fullwidth 1
    ("scratch_quote_v1", "goal: Fix b\nreplace " + "1" * 5000 + " lines with 1 line:\n> b\n<DFF> @@ @@\n a\n-b\n+B\n c\n", "bad_plan"),
]


@pytest.mark.parametrize(("name", "target", "reason"), BAD_GENERATIONS)
def test_bad_generations_give_stable_reasons(name: str, target: str, reason: str) -> None:
    fmt = get_format(name)
    prompt = fmt.render(_SMALL).prompt
    with pytest.raises(ParseError) as caught:
        fmt.parse(prompt, target)
    assert caught.value.reason == reason


@pytest.mark.parametrize("name", [n for n in EDIT_FORMATS if n != "openelm_v1"])
def test_prompt_of_another_format_is_rejected(name: str) -> None:
    fmt = get_format(name)
    other = "whole_file_v1" if name != "whole_file_v1" else "search_replace_v1"
    with pytest.raises(ParseError) as caught:
        fmt.parse(get_format(other).render(_SMALL).prompt, fmt.render(_SMALL).target)
    assert caught.value.reason == "bad_prompt"


def test_content_hunks_grow_context_until_unambiguous() -> None:
    # The 3-line context "x x x" of the change also occurs at the top of the file.
    before = "x\n" * 10
    after = "x\n" * 9 + "y\nx\n"
    record = _record(before, after)
    (hunk,) = content_hunks(record.before, record.diff.text)
    assert len(hunk) > 5  # git's hunk had 3 + 1 + 1 lines
    diff = "".join("@@ @@\n" + "".join(op + text for op, text in hunk) for _ in [0])
    result, failed = apply_lenient(before, diff.replace("@@ @@", "@@ -0,0 +0,0 @@"))
    assert (result, failed) == (after, 0)


@pytest.mark.parametrize(
    ("text", "numbered"),
    [("", ""), ("a", "1| a"), ("a\n", "1| a\n"), ("a\r\n\nb", "1| a\r\n2| \n3| b")],
)
def test_number_lines_round_trip(text: str, numbered: str) -> None:
    assert number_lines(text) == numbered
    assert unnumber_lines(numbered) == text


def test_unnumber_rejects_wrong_numbers() -> None:
    with pytest.raises(ParseError) as caught:
        unnumber_lines("1| a\n3| b\n")
    assert caught.value.reason == "bad_prompt"


def test_scratch_quote_names_insertion_anchors() -> None:
    fmt = get_format("scratch_quote_v1")
    after_line = fmt.render(_record("a\nb\nc\nd\n", "a\nb\nnew\nc\nd\n")).target
    assert "insert 1 line after:\n> b\n" in after_line
    at_start = fmt.render(_record("a\nb\n", "z\na\nb\n")).target
    assert "insert 1 line before:\n> a\n" in at_start
    new_file = fmt.render(_record("", "x\ny\n", new_file=True)).target
    assert new_file.startswith("goal: Fix it\r\ninsert 2 lines:\n<DFF> ")


def test_openelm_stop_sequence_is_the_next_document() -> None:
    for name in EDIT_FORMATS:
        assert get_format(name).stop_sequences() == ("\n<NME> ",)
