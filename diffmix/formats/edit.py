"""Edit formats: a file, a commit message and the change, as one document.

`openelm_v1` is CarperAI's diff-model document (OpenELM's `split_diff` parses it):

    <NME> path/to/file.py
    <BEF> full file text before the commit      ("ADDFILE" for a new file)
    <MSG> the commit message
    <DFF> @@ -1,4 +1,4 @@ section
     unchanged line
    -old line
    +new line

The file text is kept byte-exact and followed by "\\n" before `<MSG>`, so BEF is
exactly the text between "<BEF> " and "\\n<MSG> ". A file or message with a
literal tag at a line start cannot be split back and is rejected by the build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffmix.formats.base import Format, ParseError, Rendered, register
from diffmix.pipelines.apply import DiffError, apply_strict
from diffmix.pipelines.diff import FileDiff, diff_texts

ADDFILE = "ADDFILE"
TAGS = ("<NME> ", "<BEF> ", "<MSG> ", "<DFF> ")
# A tag at a line start anywhere in a file or message makes a document unsplittable.
LITERAL_TAG_PATTERN = r"(?m)^<(?:NME|BEF|MSG|DFF)> "
_LITERAL_TAG = re.compile(LITERAL_TAG_PATTERN)


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
        parts = split_openelm(prompt + target)
        try:
            return apply_strict(parts.before, parts.diff)
        except DiffError as exc:
            raise ParseError(exc.state.value, exc.detail) from None

    def answer(self, record: EditRecord) -> str:
        return record.after

    def stop_sequences(self) -> tuple[str, ...]:
        return ("\n<NME> ",)
