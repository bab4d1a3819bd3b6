"""Edit formats: a file, a commit message and the change, as one document.

Every edit format renders the same `EditRecord` and parses a (possibly
generated) target back to the new file contents, so the build can check the
round trip on every document and the training stage can score a generation in
any format. All of them start with the same prompt header

    <NME> path/to/file.py
    <BEF> full file text before the commit      ("ADDFILE" for a new file)
    <MSG> the commit message

(scratch_lines numbers the BEF lines) and differ in how the change is written:

* `openelm_v1` -- CarperAI's diff-model document (OpenELM's `split_diff` parses
  it): `<DFF> ` then a unified diff with 3 context lines and numbered headers.
* `udiff_nolines_v1` -- the same hunks with bare `@@ @@` headers. Aider found
  that models are bad at line numbers; this format drops them and the diff is
  applied by content. A hunk whose old side also occurs earlier (after the
  previous hunk) gets extra leading context until its first occurrence is the
  right one, so applying by content is exact on every built document.
* `udiff_marked_v1` -- the openelm diff with each hunk line tagged `ADD ` /
  `DEL ` / `CON ` instead of one easily-missed character, headers unchanged;
  it isolates the effect of the line markers.
* `search_replace_v1` -- `<EDT> ` then aider-style blocks
  (`<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE`), one per hunk, with the
  same unambiguous context as udiff_nolines. A content line that would read as
  a marker (an rST `=======` underline) is escaped with a leading backslash.
* `whole_file_v1` -- `<AFT> ` then the new file in full (no diff skill needed;
  the longest target).
* `scratch_lines_v1` -- a line-number scratchpad. The prompt numbers every BEF
  line (`12| text`); the target first names the lines to change under `<PLN> `
  (`replace 12-13 with 3 lines`, `insert 2 lines after 20`, `delete 31`), then
  gives the openelm diff. Finding the lines is the step a small model fails
  at, so it is made explicit, and it is checkable: the plan must name exactly
  the changed line ranges of the diff that follows (`plan_mismatch`) and lie in
  the file (`plan_out_of_range`), and the diff must apply strictly.
* `scratch_quote_v1` -- a quoting scratchpad for content-addressed edits. The
  target states the goal in the message's own words (`goal: ` + its first
  line), then for each change quotes the old lines it removes (or the line it
  inserts next to) from BEF, then gives the udiff_nolines diff. Each step is
  checkable: the goal must equal the message's first line (`goal_mismatch`),
  the plan's kinds and counts must match the diff (`plan_mismatch`), the quoted
  lines must be the diff's old lines (`quote_mismatch`), and the diff must
  apply to BEF by content. Quoting first is the "refer back to BEF" skill,
  trained on its own before the model has to produce the diff.

The file text is kept byte-exact and followed by "\\n" before `<MSG>`, so BEF is
exactly the text between "<BEF> " and "\\n<MSG> ". A file or message with a
literal tag at a line start cannot be split back and is rejected by the build.
Parsers take the target without the stop sequence (the generator cuts there).
Wherever a diff is applied, it is applied by `diffmix.pipelines.apply`: strictly
for numbered diffs, by content (its lenient applier) for the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffmix.formats.base import Format, ParseError, Rendered, register
from diffmix.pipelines.apply import (
    NO_EOL,
    NUMBER,
    DiffError,
    Hunk,
    _find_block,
    apply_lenient,
    apply_strict,
    parse_diff,
    split_lines,
)
from diffmix.pipelines.diff import FileDiff, diff_texts

ADDFILE = "ADDFILE"
TAGS = ("<NME> ", "<BEF> ", "<MSG> ", "<DFF> ")
# Answer-section tags of the formats other than openelm.
PLAN_TAG = "<PLN> "
EDIT_TAG = "<EDT> "
AFTER_TAG = "<AFT> "
# Any edit format's tag at a line start in a file or message makes a document unsplittable.
# Every format's tags count for every format: the rows kept do not depend on the format,
# so format comparisons train on the same commits.
LITERAL_TAG_PATTERN = r"(?m)^<(?:NME|BEF|MSG|DFF|PLN|EDT|AFT)> "
_LITERAL_TAG = re.compile(LITERAL_TAG_PATTERN)
STOP = ("\n<NME> ",)


@dataclass(frozen=True, slots=True)
class EditRecord:
    """The canonical edit every edit format renders."""

    path: str
    before: str  # "" for a new file
    message: str
    after: str
    diff: FileDiff
    new_file: bool = False

    @classmethod
    def from_texts(cls, path: str, before: str, message: str, after: str, new_file: bool = False) -> EditRecord:
        return cls(path, before, message, after, diff_texts(before, after), new_file)


def has_literal_tag(text: str) -> bool:
    return _LITERAL_TAG.search(text) is not None


@dataclass(frozen=True, slots=True)
class OpenElmParts:
    name: str
    before: str  # "" for ADDFILE
    message: str
    diff: str
    new_file: bool


def split_openelm(text: str) -> OpenElmParts:
    """Split an openelm document (or its prompt plus a generated target) into its fields."""
    if not text.startswith("<NME> "):
        raise ParseError("bad_format", "document does not start with '<NME> '")
    try:
        bef = text.index("\n<BEF> ")
        msg = text.index("\n<MSG> ", bef)
        dff = text.index("\n<DFF> ", msg)
    except ValueError:
        raise ParseError("bad_format", "missing <BEF>, <MSG> or <DFF> section") from None
    before = text[bef + 7 : msg]
    new_file = before == ADDFILE
    return OpenElmParts(text[6:bef], "" if new_file else before, text[msg + 7 : dff], text[dff + 7 :], new_file)


# --- shared pieces ----------------------------------------------------------------


def _render(record: EditRecord, tag: str, target: str, bef_body: str | None = None, answer_offset: int = 0) -> Rendered:
    """Header + `tag` + target; `answer_offset` is where the answer tag sits inside a scratch target."""
    head = f"<NME> {record.path}\n"
    if bef_body is None:
        bef_body = ADDFILE if record.new_file else record.before
    bef = f"<BEF> {bef_body}\n"
    msg = f"<MSG> {record.message}\n"
    bef_start = len(head)
    msg_start = bef_start + len(bef)
    tag_start = msg_start + len(msg)
    target_start = tag_start + len(tag)
    dff_start = tag_start if tag != PLAN_TAG else target_start + answer_offset
    text = f"{head}{bef}{msg}{tag}{target}"
    return Rendered(text, target_start, {"bef_start": bef_start, "msg_start": msg_start, "dff_start": dff_start})


def _split_prompt(prompt: str, tag: str) -> OpenElmParts:
    """The header fields of a prompt that ends with `\\n{tag}` (BEF as written: numbered or not)."""
    suffix = "\n" + tag
    if not prompt.endswith(suffix):
        raise ParseError("bad_prompt", f"prompt does not end with {tag!r}")
    return split_openelm(prompt[: -len(suffix)] + "\n<DFF> ")


def _diff_error(exc: DiffError) -> ParseError:
    return ParseError(exc.state.value, exc.detail)


def _hunks(diff_text: str) -> list[Hunk]:
    return parse_diff(diff_text, strict=True) if diff_text else []


def _line_out(prefix: str, text: str) -> str:
    """One diff-style line; a last line without "\\n" gets git's no-newline marker."""
    if text.endswith("\n"):
        return prefix + text
    return f"{prefix}{text}\n{NO_EOL}\n"


def content_hunks(before: str, diff_text: str) -> list[list[tuple[str, str]]]:
    """The diff's hunks as (op, line) lists, each with enough leading context to be found by content.

    The lenient applier puts a hunk at the first occurrence of its old side at or
    after the end of the previous hunk. Where that is not the hunk's real place
    (repeated code, blank lines), context lines from the file are prepended one at
    a time until it is; this always ends, at the latest when the hunk reaches the
    previous one.
    """
    old = split_lines(before)
    cursor = 0
    out: list[list[tuple[str, str]]] = []
    for hunk in _hunks(diff_text):
        start = hunk.old_start if hunk.old_len == 0 else hunk.old_start - 1
        lines = hunk.lines
        old_side = hunk.old_side()
        if _find_block(old, old_side, cursor) != start:
            lines = list(lines)
            while _find_block(old, old_side, cursor) != start:
                start -= 1
                lines.insert(0, (" ", old[start]))
                old_side.insert(0, old[start])
        out.append(lines)
        cursor = start + len(old_side)
    return out


_BARE_HEADER = re.compile(r"(?m)^@@ @@$")


def _apply_by_content(before: str, diff: str) -> str:
    """Apply a diff with bare `@@ @@` headers by content (apply.py's lenient applier)."""
    # The lenient applier ignores header numbers, except that a hunk with no old
    # side goes where its header says; line 0 means "at the cursor".
    try:
        result, failed = apply_lenient(before, _BARE_HEADER.sub("@@ -0,0 +0,0 @@", diff))
    except DiffError as exc:
        raise _diff_error(exc) from None
    if failed:
        raise ParseError("context_not_found", f"{failed} hunk(s) not found in the file")
    return result


def _content_hunks_of_target(diff: str) -> list[Hunk]:
    try:
        return parse_diff(_BARE_HEADER.sub("@@ -0,0 +0,0 @@", diff), strict=False)
    except DiffError as exc:
        raise _diff_error(exc) from None


def _plural(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


# --- openelm ----------------------------------------------------------------------


@register
class OpenElm(Format):
    """CarperAI / OpenELM diff-model document: unified diff, 3 context lines, numbered headers."""

    name = "openelm_v1"
    task = "edit"

    def render(self, record: EditRecord) -> Rendered:
        head = f"<NME> {record.path}\n"
        bef = f"<BEF> {ADDFILE if record.new_file else record.before}\n"
        msg = f"<MSG> {record.message}\n"
        bef_start = len(head)
        msg_start = bef_start + len(bef)
        dff_start = msg_start + len(msg)
        text = f"{head}{bef}{msg}<DFF> {record.diff.text}"
        return Rendered(text, dff_start + 6, {"bef_start": bef_start, "msg_start": msg_start, "dff_start": dff_start})

    def parse(self, prompt: str, target: str) -> str:
        return self.parse_document(prompt + target, len(prompt))

    def parse_document(self, text: str, target_start: int) -> str:
        parts = split_openelm(text)  # the whole document is one openelm text: no cut needed
        try:
            return apply_strict(parts.before, parts.diff)
        except DiffError as exc:
            raise ParseError(exc.state.value, exc.detail) from None

    def answer(self, record: EditRecord) -> str:
        return record.after

    def stop_sequences(self) -> tuple[str, ...]:
        return STOP


class _EditFormat(Format):
    """Shared answer / stop sequence of the edit formats."""

    task = "edit"

    def answer(self, record: EditRecord) -> str:
        return record.after

    def stop_sequences(self) -> tuple[str, ...]:
        return STOP


# --- udiff without line numbers -----------------------------------------------------


def _nolines_diff(record: EditRecord) -> str:
    return "".join(
        "@@ @@\n" + "".join(_line_out(op, text) for op, text in lines)
        for lines in content_hunks(record.before, record.diff.text)
    )


@register
class UdiffNoLines(_EditFormat):
    """Unified diff hunks with bare `@@ @@` headers, applied by content."""

    name = "udiff_nolines_v1"

    def render(self, record: EditRecord) -> Rendered:
        return _render(record, TAGS[3], _nolines_diff(record))

    def parse(self, prompt: str, target: str) -> str:
        return _apply_by_content(_split_prompt(prompt, TAGS[3]).before, target)


# --- udiff with ADD / DEL / CON markers ---------------------------------------------

_MARK = {" ": "CON ", "-": "DEL ", "+": "ADD "}
_UNMARK = {"CON": " ", "DEL": "-", "ADD": "+"}


@register
class UdiffMarked(_EditFormat):
    """The openelm diff with each hunk line tagged ADD / DEL / CON (headers keep their numbers)."""

    name = "udiff_marked_v1"

    def render(self, record: EditRecord) -> Rendered:
        lines = record.diff.text.split("\n")
        marked = [line if line.startswith("@@") or line == NO_EOL else _MARK[line[0]] + line[1:] for line in lines[:-1]]
        marked.append(lines[-1])  # "" after the final newline
        return _render(record, TAGS[3], "\n".join(marked))

    def parse(self, prompt: str, target: str) -> str:
        before = _split_prompt(prompt, TAGS[3]).before
        lines = target.split("\n")
        out = []
        for number, line in enumerate(lines, 1):
            if line.startswith("@@") or line == NO_EOL or (line == "" and number == len(lines)):
                out.append(line)
            elif line[:3] in _UNMARK and (len(line) == 3 or line[3] == " "):
                out.append(_UNMARK[line[:3]] + line[4:])
            else:
                raise ParseError("bad_hunk_line", f"line {number}: {line[:60]!r}")
        try:
            return apply_strict(before, "\n".join(out))
        except DiffError as exc:
            raise _diff_error(exc) from None


# --- search / replace blocks ----------------------------------------------------------

SEARCH = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE = ">>>>>>> REPLACE"
_MARKERS = (SEARCH, DIVIDER, REPLACE)
_STRUCTURAL = frozenset((*_MARKERS, NO_EOL))
_ESCAPABLE = frozenset((*_MARKERS, NO_EOL[1:]))


def _sr_line(text: str) -> str:
    """One block line; a line that would read as a marker gets one more leading backslash."""
    body = text[:-1] if text.endswith("\n") else text
    core = body.lstrip("\\")
    if core in _MARKERS or (core == NO_EOL[1:] and body.startswith("\\")):
        text = "\\" + text
    return _line_out("", text)


@register
class SearchReplace(_EditFormat):
    """Aider-style SEARCH/REPLACE blocks, one per (unambiguous) hunk."""

    name = "search_replace_v1"

    def render(self, record: EditRecord) -> Rendered:
        blocks = []
        for lines in content_hunks(record.before, record.diff.text):
            search = "".join(_sr_line(text) for op, text in lines if op != "+")
            replace = "".join(_sr_line(text) for op, text in lines if op != "-")
            blocks.append(f"{SEARCH}\n{search}{DIVIDER}\n{replace}{REPLACE}\n")
        return _render(record, EDIT_TAG, "".join(blocks))

    def parse(self, prompt: str, target: str) -> str:
        before = _split_prompt(prompt, EDIT_TAG).before
        return _apply_by_content(before, "".join(_block_hunk(s, r) for s, r in parse_search_replace(target)))


def _block_hunk(search: list[str], replace: list[str]) -> str:
    return "@@ @@\n" + "".join(_line_out("-", s) for s in search) + "".join(_line_out("+", r) for r in replace)


def parse_search_replace(target: str) -> list[tuple[list[str], list[str]]]:
    """SEARCH/REPLACE blocks -> (search lines, replace lines), each line with its "\\n" kept."""
    lines = target.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blocks: list[tuple[list[str], list[str]]] = []
    state = "out"  # out -> search -> replace -> out
    search: list[str] = []
    replace: list[str] = []
    for number, line in enumerate(lines, 1):
        if line == SEARCH and state == "out":
            search, replace, state = [], [], "search"
            continue
        if line == DIVIDER and state == "search":
            state = "replace"
            continue
        if line == REPLACE and state == "replace":
            blocks.append((search, replace))
            state = "out"
            continue
        current = search if state == "search" else replace if state == "replace" else None
        if line == NO_EOL and current and current[-1].endswith("\n"):
            current[-1] = current[-1][:-1]
            continue
        if current is None or line in _STRUCTURAL:
            raise ParseError("bad_block", f"line {number}: unexpected {line[:60]!r}")
        if line.startswith("\\") and line.lstrip("\\") in _ESCAPABLE:
            line = line[1:]
        current.append(line + "\n")
    if state != "out":
        raise ParseError("unterminated_block", "the last block has no REPLACE marker")
    if not blocks:
        raise ParseError("no_blocks", "no SEARCH/REPLACE block")
    return blocks


# --- whole file -------------------------------------------------------------------------


@register
class WholeFile(_EditFormat):
    """The new file in full after `<AFT> `."""

    name = "whole_file_v1"

    def render(self, record: EditRecord) -> Rendered:
        return _render(record, AFTER_TAG, record.after)

    def parse(self, prompt: str, target: str) -> str:
        _split_prompt(prompt, AFTER_TAG)
        return target


# --- change blocks: the unit both scratchpads plan with -------------------------------


@dataclass(frozen=True, slots=True)
class ChangeBlock:
    """A maximal run of removed/added lines inside a hunk.

    `first` is the 1-based old line number of the first removed line, or for an
    insertion the old line the new lines go *before* (so "after first - 1").
    `old` holds the removed lines; `anchor` is the old line an insertion sits
    next to (`side` "after" or "before"), None for an insertion into an empty file.
    """

    first: int
    old: tuple[str, ...]
    added: int
    anchor: str | None = None
    side: str | None = None

    @property
    def kind(self) -> str:
        if not self.old:
            return "insert"
        return "replace" if self.added else "delete"


def change_blocks(hunks: list[Hunk] | list[list[tuple[str, str]]]) -> list[ChangeBlock]:
    """Change blocks of parsed hunks: numbered `Hunk`s, or (op, line) lists (by content: `first` counts from 1)."""
    blocks: list[ChangeBlock] = []
    for hunk in hunks:
        if isinstance(hunk, Hunk):
            lines, old_no = hunk.lines, (hunk.old_start if hunk.old_len else hunk.old_start + 1)
        else:
            lines, old_no = hunk, 1
        i, n = 0, len(lines)
        while i < n:
            if lines[i][0] == " ":
                old_no += 1
                i += 1
                continue
            j, old, added = i, [], 0
            while j < n and lines[j][0] != " ":
                if lines[j][0] == "-":
                    old.append(lines[j][1])
                else:
                    added += 1
                j += 1
            anchor = side = None
            if not old and i > 0:
                anchor, side = lines[i - 1][1], "after"
            elif not old and j < n:
                anchor, side = lines[j][1], "before"
            blocks.append(ChangeBlock(old_no, tuple(old), added, anchor, side))
            old_no += len(old)
            i = j
    return blocks


# --- scratchpad 1: numbered BEF, a plan naming the lines, then the numbered diff --------

_PLAN_LINE = re.compile(
    rf"^(?:replace (?P<r>{NUMBER}(?:-{NUMBER})?) with (?P<ra>{NUMBER}) lines?"
    rf"|delete (?P<d>{NUMBER}(?:-{NUMBER})?)"
    rf"|insert (?P<ia>{NUMBER}) lines? after (?P<i>{NUMBER}))$"
)


def number_lines(text: str) -> str:
    """`N| line` for every line (1-based), each line's terminator kept byte for byte."""
    return "".join([f"{n}| {line}" for n, line in enumerate(split_lines(text), 1)])


def unnumber_lines(text: str) -> str:
    """Inverse of `number_lines`; ParseError("bad_prompt") where a prefix is not the expected number."""
    out = []
    for n, line in enumerate(split_lines(text), 1):
        prefix = f"{n}| "
        if not line.startswith(prefix):
            raise ParseError("bad_prompt", f"BEF line {n} does not start with {prefix!r}")
        out.append(line[len(prefix) :])
    return "".join(out)


def _span(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def _lines_plan(blocks: list[ChangeBlock]) -> str:
    steps = []
    for b in blocks:
        if b.kind == "replace":
            steps.append(f"replace {_span(b.first, len(b.old))} with {_plural(b.added)}")
        elif b.kind == "delete":
            steps.append(f"delete {_span(b.first, len(b.old))}")
        else:
            steps.append(f"insert {_plural(b.added)} after {b.first - 1}")
    return "".join(step + "\n" for step in steps)


def _parse_span(span: str) -> tuple[int, int]:
    first, _, last = span.partition("-")
    return int(first), (int(last) if last else int(first)) - int(first) + 1


def _split_scratch(target: str, tag: str) -> tuple[str, str]:
    """A scratch target -> (plan, answer) at the first `tag` that starts a line."""
    if target.startswith(tag):
        return "", target[len(tag) :]
    at = target.find("\n" + tag)
    if at < 0:
        raise ParseError("missing_answer", f"no {tag.strip()} section after the plan")
    return target[: at + 1], target[at + 1 + len(tag) :]


@register
class ScratchLines(_EditFormat):
    """Numbered BEF; target = a plan naming the changed lines, then the openelm diff."""

    name = "scratch_lines_v1"

    def render(self, record: EditRecord) -> Rendered:
        plan = _lines_plan(change_blocks(_hunks(record.diff.text)))
        bef = ADDFILE if record.new_file else number_lines(record.before)
        return _render(record, PLAN_TAG, f"{plan}{TAGS[3]}{record.diff.text}", bef, len(plan))

    def parse(self, prompt: str, target: str) -> str:
        parts = _split_prompt(prompt, PLAN_TAG)
        before = "" if parts.new_file else unnumber_lines(parts.before)
        plan, diff = _split_scratch(target, TAGS[3])
        steps = []
        for number, line in enumerate(plan.split("\n")[:-1], 1):
            match = _PLAN_LINE.match(line)
            if match is None:
                raise ParseError("bad_plan", f"plan line {number}: {line[:60]!r}")
            if match["r"]:
                first, count = _parse_span(match["r"])
                steps.append(("replace", first, count, int(match["ra"])))
            elif match["d"]:
                first, count = _parse_span(match["d"])
                steps.append(("delete", first, count, 0))
            else:
                steps.append(("insert", int(match["i"]) + 1, 0, int(match["ia"])))
        n_lines = len(split_lines(before))
        for kind, first, count, _ in steps:
            last = first + count - 1 if count else first - 1
            if count < 0 or first < 1 or last > n_lines:
                raise ParseError("plan_out_of_range", f"{kind} at line {first} (the file has {n_lines} lines)")
        try:
            hunks = parse_diff(diff, strict=True)
        except DiffError as exc:
            raise _diff_error(exc) from None
        stated = [(b.kind, b.first, len(b.old), b.added) for b in change_blocks(hunks)]
        if stated != steps:
            raise ParseError("plan_mismatch", f"the plan names {len(steps)} change(s), the diff makes {len(stated)}")
        try:
            return apply_strict(before, diff)
        except DiffError as exc:
            raise _diff_error(exc) from None


# --- scratchpad 2: goal in the message's words, quoted old lines, then the edit ---------

_QUOTE_STEP = re.compile(
    rf"^(?:(?P<kind>replace|delete) (?P<n>{NUMBER}) lines?(?: with (?P<added>{NUMBER}) lines?)?"
    rf"|insert (?P<ia>{NUMBER}) lines?(?: (?P<side>after|before))?):$"
)


def _quote(line: str) -> str:
    return _line_out("> ", line)


def _quote_plan(message: str, blocks: list[ChangeBlock]) -> str:
    out = [f"goal: {message.split(chr(10), 1)[0]}\n"]
    for b in blocks:
        if b.kind == "replace":
            out.append(f"replace {_plural(len(b.old))} with {_plural(b.added)}:\n")
        elif b.kind == "delete":
            out.append(f"delete {_plural(len(b.old))}:\n")
        else:
            out.append(f"insert {_plural(b.added)}{' ' + b.side if b.side else ''}:\n")
        out.extend(_quote(line) for line in (b.old or ((b.anchor,) if b.anchor is not None else ())))
    return "".join(out)


def _parse_quote_plan(plan: str) -> tuple[str, list[tuple[str, int, int, str | None, list[str]]]]:
    """-> (goal line, [(kind, old count, added, side, quoted lines)])."""
    lines = plan.split("\n")[:-1]
    if not lines or not lines[0].startswith("goal: "):
        raise ParseError("bad_plan", "the plan does not start with 'goal: '")
    steps: list[tuple[str, int, int, str | None, list[str]]] = []
    for number, line in enumerate(lines[1:], 2):
        if line.startswith("> ") or line == ">":
            if not steps:
                raise ParseError("bad_plan", f"plan line {number}: a quote before any step")
            steps[-1][4].append(line[2:] + "\n")
            continue
        if line == NO_EOL and steps and steps[-1][4] and steps[-1][4][-1].endswith("\n"):
            steps[-1][4][-1] = steps[-1][4][-1][:-1]
            continue
        match = _QUOTE_STEP.match(line)
        if match is None:
            raise ParseError("bad_plan", f"plan line {number}: {line[:60]!r}")
        if match["kind"]:
            added = int(match["added"]) if match["added"] else 0
            if (match["kind"] == "replace") != (match["added"] is not None):
                raise ParseError("bad_plan", f"plan line {number}: {line[:60]!r}")
            steps.append((match["kind"], int(match["n"]), added, None, []))
        else:
            steps.append(("insert", 0, int(match["ia"]), match["side"], []))
    for kind, count, _, side, quoted in steps:
        expected = count if kind != "insert" else (1 if side else 0)
        if len(quoted) != expected:
            raise ParseError("bad_plan", f"a {kind} step quotes {len(quoted)} line(s), it should quote {expected}")
    return lines[0][6:], steps


@register
class ScratchQuote(_EditFormat):
    """Target = goal from the message, each change's old lines quoted from BEF, then the udiff_nolines diff."""

    name = "scratch_quote_v1"

    def render(self, record: EditRecord) -> Rendered:
        hunks = content_hunks(record.before, record.diff.text)
        plan = _quote_plan(record.message, change_blocks(hunks))
        diff = "".join("@@ @@\n" + "".join(_line_out(op, text) for op, text in lines) for lines in hunks)
        return _render(record, PLAN_TAG, f"{plan}{TAGS[3]}{diff}", None, len(plan))

    def parse(self, prompt: str, target: str) -> str:
        parts = _split_prompt(prompt, PLAN_TAG)
        plan, diff = _split_scratch(target, TAGS[3])
        goal, steps = _parse_quote_plan(plan)
        if goal != parts.message.split("\n", 1)[0]:
            raise ParseError("goal_mismatch", "the goal is not the message's first line")
        blocks = change_blocks([h.lines for h in _content_hunks_of_target(diff)])
        stated = [(b.kind, len(b.old), b.added, b.side) for b in blocks]
        if stated != [step[:4] for step in steps]:
            raise ParseError("plan_mismatch", f"the plan names {len(steps)} change(s), the diff makes {len(blocks)}")
        for number, (block, step) in enumerate(zip(blocks, steps), 1):
            expected = list(block.old) if block.old else ([block.anchor] if block.anchor is not None else [])
            if step[4] != expected:
                raise ParseError("quote_mismatch", f"change {number} quotes lines the diff does not touch")
        return _apply_by_content(parts.before, diff)
