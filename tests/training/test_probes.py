"""Probes score hand-written correct and incorrect generations in every registered format."""

from __future__ import annotations

import math

import pytest

from diffmix.formats.arithmetic import AdditionProblem
from diffmix.formats.base import format_names, get_format
from diffmix.formats.copy import CopyProblem
from diffmix.formats.edit import EditRecord
from diffmix.training.probes import (
    EDIT_SCORES,
    cut_at_stop,
    digit_accuracy,
    score_generation,
)

NAN = math.nan

# One record per task; every format renders it, and its rendered target is the correct generation.
EDIT = EditRecord.from_texts("a.py", "a\nb\nc\nd\ne\nf\ng\n", "Shout c", "a\nb\nC\nd\ne\nf\ng\n")
ADDITION = AdditionProblem(128, 367)  # 495: one carry
COPY = CopyProblem(("kq", "ab", "zz"), 1)  # the line after "ab" is "zz"
RECORDS = {"edit": EDIT, "addition": ADDITION, "copy": COPY}


def _edit(**changes: float) -> dict[str, float]:
    """openelm scores of a perfect generation, with some changed."""
    return dict.fromkeys(EDIT_SCORES, 1.0) | changes


_NOT_EXACT = {"parsed": 0.0, "exact_match": 0.0, "strict_apply": 0.0}
_RIGHT = {"parsed": 1.0, "exact_match": 1.0}
_PARSES_WRONG = {"parsed": 1.0, "exact_match": 0.0}
_BROKEN = {"parsed": 0.0, "exact_match": 0.0}

# (format, generated target or None for the correct one, expected scores)
CASES = [
    # --- openelm: diff-level scores through the strict / lenient applier -------------
    ("openelm_v1", None, _edit()),
    # the right hunk one line too low: grammar fine, no context line where stated, applies by content
    ("openelm_v1", "@@ -2,6 +2,6 @@\n a\n b\n-c\n+C\n d\n e\n f\n", _edit(**_NOT_EXACT, context_at_line=0.0)),
    # a removed line that is not in the file: 5 of 6 old-side lines copied right
    (
        "openelm_v1",
        "@@ -1,6 +1,6 @@\n a\n b\n-x\n+C\n d\n e\n f\n",
        _edit(**_NOT_EXACT, context_at_line=5 / 6, context_anywhere=5 / 6, lenient_apply=0.0),
    ),
    # header counts disagree with the lines: hunk grammar broken, content right
    ("openelm_v1", "@@ -1,5 +1,5 @@\n a\n b\n-c\n+C\n d\n e\n f\n", _edit(**_NOT_EXACT, hunk_grammar=0.0)),
    # cut before the final newline (ran out of tokens)
    ("openelm_v1", "@@ -1,6 +1,6 @@\n a\n b\n-c\n+C\n d\n e\n f", _edit(**_NOT_EXACT, hunk_grammar=0.0)),
    # a closing remark after the diff: the lenient reading ignores it, the strict one does not
    ("openelm_v1", "@@ -1,6 +1,6 @@\n a\n b\n-c\n+C\n d\n e\n f\nDone.\n", _edit(**_NOT_EXACT, hunk_grammar=0.0)),
    # a hunk of blank `+` lines: nothing of the file in it, so it applies nowhere (not even leniently)
    (
        "openelm_v1",
        "@@ -1,7 +1,7 @@\n+\n+\n+\n",
        _edit(**_NOT_EXACT, hunk_grammar=0.0, lenient_apply=0.0, context_at_line=NAN, context_anywhere=NAN),
    ),
    # prose instead of a diff
    ("openelm_v1", "I made c upper case.\n", dict.fromkeys(EDIT_SCORES, 0.0) | {"context_at_line": NAN, "context_anywhere": NAN}),
    # --- the other edit formats: their parser and the new file ------------------------
    ("scratch_lines_v1", None, _RIGHT),
    ("scratch_lines_v1", "replace 3 with 1 line\n<DFF> @@ -1,6 +1,6 @@\n a\n b\n-c\n+D\n d\n e\n f\n", _PARSES_WRONG),
    ("scratch_lines_v1", "replace 4 with 1 line\n<DFF> @@ -1,6 +1,6 @@\n a\n b\n-c\n+C\n d\n e\n f\n", _BROKEN),
    ("scratch_quote_v1", None, _RIGHT),
    ("scratch_quote_v1", "goal: Shout c\nreplace 1 line with 1 line:\n> x\n<DFF> @@ @@\n a\n b\n-c\n+C\n d\n e\n f\n", _BROKEN),
    ("search_replace_v1", None, _RIGHT),
    ("search_replace_v1", "<<<<<<< SEARCH\na\nb\nc\nd\ne\nf\n=======\na\nb\nD\nd\ne\nf\n>>>>>>> REPLACE\n", _PARSES_WRONG),
    ("search_replace_v1", "<<<<<<< SEARCH\nc\n=======\nC\n", _BROKEN),
    ("udiff_marked_v1", None, _RIGHT),
    ("udiff_marked_v1", "@@ -1,6 +1,6 @@\nCON a\nCON b\nDEL c\nADD D\nCON d\nCON e\nCON f\n", _PARSES_WRONG),
    ("udiff_nolines_v1", None, _RIGHT),
    ("udiff_nolines_v1", "@@ @@\n a\n b\n-c\n+D\n d\n e\n f\n", _PARSES_WRONG),
    ("udiff_nolines_v1", "@@ @@\n a\n b\n-q\n+C\n", _BROKEN),
    ("udiff_nolines_v1", "@@ @@\n+\n+\n", _BROKEN),  # only added blank lines: not an edit of a file with text
    ("whole_file_v1", None, _RIGHT),
    ("whole_file_v1", "a\nb\nD\nd\ne\nf\ng\n", _PARSES_WRONG),
    # --- addition: exact match of the parsed answer, digits right from the right --------
    ("plain_v1", None, _RIGHT | {"digit_accuracy": 1.0}),
    ("plain_v1", "496\n", _PARSES_WRONG | {"digit_accuracy": 2 / 3}),
    ("plain_v1", "4x5\n", _BROKEN | {"digit_accuracy": 0.0}),
    ("reverse_v1", None, _RIGHT | {"digit_accuracy": 1.0}),
    ("reverse_v1", "495$\n", _PARSES_WRONG | {"digit_accuracy": 1 / 3}),  # not reversed: only the middle 9 lines up
    ("reverse_v1", "594\n", _BROKEN | {"digit_accuracy": 0.0}),  # no closing $
    # extra digits are a wrong answer, not the same number: a spurious carry, a leading zero
    ("reverse_v1", "5940$\n", _PARSES_WRONG | {"digit_accuracy": 1.0}),
    ("plain_v1", "0495\n", _PARSES_WRONG | {"digit_accuracy": 1.0}),
    ("simplified_scratchpad_v1", None, _RIGHT | {"answer_match": 1.0, "digit_accuracy": 1.0}),
    # right answer after a wrong step: the paper's answer-only metric counts it, exact match does not
    (
        "simplified_scratchpad_v1",
        "A->5 , C->1\nA->8 , C->0\nA->4 , C->0.\n495\n",
        _BROKEN | {"answer_match": 1.0, "digit_accuracy": 1.0},
    ),
    ("simplified_scratchpad_v1", "A->5 , C->1\nA->9 , C->0\nA->4 , C->0.\n496\n", _BROKEN | {"answer_match": 0.0, "digit_accuracy": 2 / 3}),
    ("detailed_scratchpad_v1", None, _RIGHT | {"answer_match": 1.0, "digit_accuracy": 1.0}),
    ("detailed_scratchpad_v1", "<scratch>\n[1,2,8] has 3 digits.\n</scratch>\n4 9 5\n", _BROKEN | {"answer_match": 1.0, "digit_accuracy": 1.0}),
    ("simplified_scratchpad_v1", "A->5 , C->1\nA->9 , C->0\nA->4 , C->0.\n0495\n", _PARSES_WRONG | {"answer_match": 0.0, "digit_accuracy": 1.0}),
    # --- copy ---------------------------------------------------------------------------
    ("copy_v1", None, _RIGHT),
    ("copy_v1", "kq\n", _PARSES_WRONG),
    ("copy_v1", "\n", _BROKEN),
]


@pytest.mark.parametrize(("fmt_name", "generated", "expected"), CASES)
def test_probe_scores_a_generation(fmt_name: str, generated: str | None, expected: dict[str, float]) -> None:
    fmt = get_format(fmt_name)
    rendered = fmt.render(RECORDS[fmt.task])
    scores = score_generation(fmt, rendered.prompt, rendered.target, rendered.target if generated is None else generated)
    assert scores.keys() == expected.keys()
    for name, want in expected.items():
        if math.isnan(want):
            assert math.isnan(scores[name]), name
        else:
            assert scores[name] == pytest.approx(want), name


def test_every_registered_format_has_a_correct_and_an_incorrect_case() -> None:
    covered: dict[str, set[bool]] = {}
    for fmt_name, _, expected in CASES:
        covered.setdefault(fmt_name, set()).add(expected["exact_match"] == 1.0)
    missing = [name for name in format_names() if covered.get(name) != {True, False}]
    assert missing == []


@pytest.mark.parametrize(
    ("fmt_name", "generated", "expected"),
    [
        # a stop that starts the next document: cut before it, keeping the newline that ends the answer
        ("openelm_v1", "@@ -1,6 +1,6 @@\n a\n b\n-c\n+C\n d\n e\n f\n<NME> b.py\n<BEF> x", "@@ -1,6 +1,6 @@\n a\n b\n-c\n+C\n d\n e\n f\n"),
        ("simplified_scratchpad_v1", "A->5 , C->1\nA->9 , C->0\nA->4 , C->0.\n495\nInput:\n1+2", "A->5 , C->1\nA->9 , C->0\nA->4 , C->0.\n495\n"),
        ("plain_v1", "495\n12+1=13\n", "495\n"),
        ("copy_v1", "zz\n<CTX>\n", "zz\n"),
        # a stop that is the answer's own last character: kept
        ("reverse_v1", "594$$12+3=51$", "594$"),
        # no stop sequence: the whole generation
        ("plain_v1", "495", "495"),
        ("reverse_v1", "", ""),
    ],
)
def test_cut_at_stop(fmt_name: str, generated: str, expected: str) -> None:
    fmt = get_format(fmt_name)
    assert cut_at_stop(fmt, fmt.render(RECORDS[fmt.task]).prompt, generated) == expected


@pytest.mark.parametrize(
    ("got", "want", "expected"),
    [
        ("579", "579", 1.0),
        ("578", "579", 2 / 3),
        ("79", "579", 2 / 3),  # a dropped leading digit: the others still line up from the right
        ("1579", "579", 1.0),
        ("975", "579", 1 / 3),
        (None, "579", 0.0),
        ("", "579", 0.0),
    ],
)
def test_digit_accuracy(got: str | None, want: str, expected: float) -> None:
    assert digit_accuracy(got, want) == pytest.approx(expected)
