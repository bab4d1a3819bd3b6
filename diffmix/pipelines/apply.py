"""Parse and apply diff-model unified diffs; classify the broken ones.

The build applies every emitted DFF *strictly* to its BEF and requires the new
file back byte for byte. The training stage scores model generations with the
same code: `verify_diff` classifies a diff in the states OpenELM's `verify_diff`
names (stricter: a hunk whose text sits a few lines from where its header says
is wrong_line_numbers, where `git apply` would take the offset), and
`apply_lenient` applies by content (after OpenELM's
`apply_diff(use_line_number=False)`; line numbers only choose among repeated
occurrences of a hunk's text), so strict and lenient apply rates can be
reported side by side.

Lines are split on "\\n" only: a CR stays part of its line, so CRLF files
round-trip byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from diffmix import _strict_apply

NO_EOL = "\\ No newline at end of file"
# A line number or a count as git reads it: ASCII digits (`\d` also takes a fullwidth or an
# Arabic-Indic digit), at most 18 of them (a generation that loops on digits would pass
# Python's 4,300-digit limit of int() and raise instead of being a bad header).
NUMBER = r"[0-9]{1,18}"
# A hunk header's line numbers (old start, old length, new start, new length); both regex engines read it.
HUNK_NUMBERS = rf"@@ -({NUMBER})(?:,({NUMBER}))? \+({NUMBER})(?:,({NUMBER}))? @@"
_HEADER = re.compile("^" + HUNK_NUMBERS + r"(?: (.*))?$")


class DiffState(StrEnum):
    """Outcome of checking a diff against a file (stable reason codes)."""

    VALID = "valid"
    BAD_HEADER = "bad_header"  # no hunk, or a header that is not `@@ -a,b +c,d @@`
    BAD_HUNK_LINE = "bad_hunk_line"  # a line that is not ' ', '+', '-' or the no-newline marker
    WRONG_LINE_NUMBERS = "wrong_line_numbers"  # counts disagree with the hunk, or text sits elsewhere
    CONTEXT_NOT_FOUND = "context_not_found"  # context / removed text is not in the file at all


class DiffError(ValueError):
    def __init__(self, state: DiffState, detail: str) -> None:
        super().__init__(f"{state}: {detail}")
        self.state = state
        self.detail = detail


@dataclass(slots=True)
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    section: str | None
    # (op, line with its terminator) where op is ' ', '-' or '+'; the terminator is
    # "\n", or "" for a last line followed by the no-newline marker.
    lines: list[tuple[str, str]] = field(default_factory=list)

    def old_side(self) -> list[str]:
        return [text for op, text in self.lines if op != "+"]

    def new_side(self) -> list[str]:
        return [text for op, text in self.lines if op != "-"]


# str.splitlines also breaks at these; when none occurs it is the fast, exact path.
_OTHER_BREAKS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def split_lines(text: str) -> list[str]:
    """Lines with their "\\n" kept; a final line without one is kept as is."""
    if not text:
        return []
    if text.count("\r") == text.count("\r\n") and not any(b in text for b in _OTHER_BREAKS):
        return text.splitlines(keepends=True)  # same split, in C
    lines = [line + "\n" for line in text.split("\n")]
    last = lines.pop()
    if last != "\n":  # text did not end with "\n": its last line has no terminator
        lines.append(last[:-1])
    return lines


def parse_diff(diff: str, strict: bool = True, *, check_counts: bool = True) -> list[Hunk]:
    """Parse hunks. Strict: every header count must match its lines exactly (unless not
    `check_counts`: the classifier's second look, at the text alone).

    Lenient (`strict=False`, for model output): an empty line between a hunk's lines
    counts as a blank context line (empty lines that end a hunk are dropped: a
    generation's blank line before its stop), header counts are not checked, and text
    after a hunk that adds or removes a line is ignored (a closing remark, or output
    cut inside the next header); a bad line in a hunk that has changed nothing yet is
    an error.
    """
    hunks: list[Hunk] = []
    raw = diff.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    elif raw and strict:
        raise DiffError(DiffState.BAD_HUNK_LINE, "diff does not end with a newline")
    current: Hunk | None = None
    blank_lines = 0  # lenient: empty lines not yet known to be inside a hunk
    for number, line in enumerate(raw, 1):
        if line == "" and not strict and current is not None:
            blank_lines += 1
            continue
        if blank_lines and line[:1] in (" ", "-", "+", "\\") and current is not None:
            current.lines.extend([(" ", "\n")] * blank_lines)
        blank_lines = 0
        if line.startswith("@@"):
            match = _HEADER.match(line)
            if match is None:
                if not strict and _has_change(hunks[-1:]):
                    break  # model output cut inside a header: the hunks before it count
                raise DiffError(DiffState.BAD_HEADER, f"line {number}: {line[:60]!r}")
            a, b, c, d, section = match.groups()
            current = Hunk(int(a), 1 if b is None else int(b), int(c), 1 if d is None else int(d), section)
            hunks.append(current)
            continue
        if current is None:
            raise DiffError(DiffState.BAD_HEADER, f"line {number}: text before the first hunk header")
        op = line[:1]
        if op in (" ", "-", "+"):
            current.lines.append((op, line[1:] + "\n"))
        elif line == NO_EOL or (not strict and line.startswith("\\")):
            if not current.lines:
                raise DiffError(DiffState.BAD_HUNK_LINE, f"line {number}: no-newline marker without a line")
            prev_op, prev_text = current.lines[-1]
            current.lines[-1] = (prev_op, prev_text[:-1] if prev_text.endswith("\n") else prev_text)
        elif not strict and _has_change([current]):
            break  # text after a hunk that changed something (a model's closing remark): ignored
        else:
            raise DiffError(DiffState.BAD_HUNK_LINE, f"line {number}: {line[:60]!r}")
    if not hunks:
        raise DiffError(DiffState.BAD_HEADER, "no hunk header")
    if strict and check_counts:
        for hunk in hunks:
            old_n, new_n = len(hunk.old_side()), len(hunk.new_side())
            if (old_n, new_n) != (hunk.old_len, hunk.new_len):
                raise DiffError(
                    DiffState.WRONG_LINE_NUMBERS,
                    f"hunk -{hunk.old_start},{hunk.old_len} +{hunk.new_start},{hunk.new_len} has {old_n}/{new_n} lines",
                )
    return hunks


def _has_change(hunks: list[Hunk]) -> bool:
    return any(op != " " for hunk in hunks for op, _ in hunk.lines)


def apply_strict(before: str, diff: str) -> str:
    """Apply exactly as stated (`git apply` without fuzz or offset): every line where its header says."""
    applied = _strict_apply.apply(before, diff)  # compiled; None where the line-by-line path must judge
    # Anything unusual (or wrong) goes line by line, which also classifies the error.
    return applied if applied is not None else apply_strict_by_lines(before, diff)


def apply_strict_by_lines(before: str, diff: str) -> str:
    """`apply_strict` on parsed hunks and the file's line list (the reference path).

    Wrong line numbers on a hunk whose text is nowhere in the file are context_not_found:
    the worse fault (OpenELM's invalid text and line numbers), whichever number is off."""
    try:
        return _apply_hunks(before, diff)
    except DiffError as exc:
        if exc.state is not DiffState.WRONG_LINE_NUMBERS or not _text_made_up(before, diff):
            raise
        raise DiffError(DiffState.CONTEXT_NOT_FOUND, f"{exc.detail}; a hunk's text is nowhere in the file") from None


def _text_made_up(before: str, diff: str) -> bool:
    """Whether the old side of some hunk (context and removed lines) is nowhere in the file."""
    old = split_lines(before)
    return any(side and _find_block(old, side, 0) < 0 for side in (hunk.old_side() for hunk in parse_diff(diff, check_counts=False)))


def _apply_hunks(before: str, diff: str) -> str:
    hunks = parse_diff(diff, strict=True)
    old = split_lines(before)
    out: list[str] = []
    cursor = 0  # next unconsumed old line (0-based)
    offset = 0  # new_start - old_start drift from earlier hunks
    for hunk in hunks:
        # `-a,0` inserts after line a; otherwise the hunk starts at line a.
        start = hunk.old_start if hunk.old_len == 0 else hunk.old_start - 1
        if start < cursor or start > len(old):
            raise DiffError(DiffState.WRONG_LINE_NUMBERS, f"hunk at -{hunk.old_start} is out of order or past the end")
        expected_new = start + offset + (0 if hunk.new_len == 0 else 1)
        if hunk.new_start != expected_new:
            raise DiffError(DiffState.WRONG_LINE_NUMBERS, f"hunk +{hunk.new_start} should be +{expected_new}")
        old_side = hunk.old_side()
        if old[start : start + len(old_side)] != old_side:  # (context_not_found where the text is nowhere: the caller)
            raise DiffError(DiffState.WRONG_LINE_NUMBERS, f"hunk at -{hunk.old_start} does not match the file there")
        out.extend(old[cursor:start])
        out.extend(hunk.new_side())
        cursor = start + len(old_side)
        offset += hunk.new_len - hunk.old_len
    out.extend(old[cursor:])
    return "".join(out)


def apply_lenient(before: str, diff: str) -> tuple[str, int]:
    """Apply by content, ignoring line numbers; return (result, hunks that failed).

    Each hunk's old side is searched from the end of the previous applied hunk
    onwards; where it occurs more than once, the occurrence at the line its header
    names wins (the first one could be a repeated block earlier in the file). A
    hunk whose text is not found is skipped (as OpenELM does) and counted. A
    no-newline marker is forgiven either way: one the file does not
    need, and one that is missing where the file's last line has no newline. A
    hunk with no old side (nothing to find) applies only to an empty file: in a
    file with text, a diff always carries context, and a run of `+` lines alone
    is not an edit of it.
    """
    hunks = parse_diff(diff, strict=False)
    old = split_lines(before)
    out: list[str] = []
    cursor = 0
    failed = 0
    for hunk in hunks:
        old_side, new_side = hunk.old_side(), hunk.new_side()
        named = hunk.old_start - 1 if hunk.old_len else hunk.old_start  # where the header puts it
        at = _find_hunk(old, old_side, cursor, named) if old_side else (0 if not old else -1)
        if at < 0 and old_side and not old_side[-1].endswith("\n"):  # a marker the file does not need
            old_side = [*old_side[:-1], old_side[-1] + "\n"]
            at = _find_hunk(old, old_side, cursor, named)
            if at >= 0 and new_side and not new_side[-1].endswith("\n"):  # the same mistake on the new side
                new_side = [*new_side[:-1], new_side[-1] + "\n"]  # (else its line joins the next)
        if at < 0 and old_side and old and not old[-1].endswith("\n"):  # the marker missing at the file's end
            bare = [*old_side[:-1], old_side[-1].removesuffix("\n")]
            at = len(old) - len(bare) if len(bare) <= len(old) - cursor and old[len(old) - len(bare) :] == bare else -1
            old_side = bare
        if at < 0:
            failed += 1
            continue
        out.extend(old[cursor:at])
        out.extend(new_side)
        cursor = at + len(old_side)
    out.extend(old[cursor:])
    return "".join(out), failed


def verify_diff(before: str, diff: str) -> DiffState:
    """Classify a diff against its file without raising."""
    try:
        apply_strict(before, diff)
    except DiffError as exc:
        return exc.state
    return DiffState.VALID


def _find_hunk(lines: list[str], block: list[str], start: int, named: int) -> int:
    """`block` at index `named` when it is there (and not before `start`), else `_find_block`."""
    if start <= named and lines[named : named + len(block)] == block:
        return named
    return _find_block(lines, block, start)


def _find_block(lines: list[str], block: list[str], start: int) -> int:
    """First index >= start where `block` occurs as consecutive lines, or -1."""
    if not block:
        return start if start <= len(lines) else -1
    first, size = block[0], len(block)
    index = start
    try:
        while True:
            index = lines.index(first, index)
            if lines[index : index + size] == block:
                return index
            index += 1
    except ValueError:
        return -1
