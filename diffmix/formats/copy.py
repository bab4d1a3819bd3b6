"""The copy / refer-back task: find a line in a context and copy the line that follows it.

This is the induction skill behind "referring back to `<BEF>`": a diff model
writes context lines by finding where it is in BEF and copying what comes next.
Trained on its own, it shows how fast a model acquires that skill, and as a
mixture source whether it speeds up the diff task.

`copy_v1`:

    <CTX>
    kqz vmw
    ab
    tplx ooe
    <Q> ab
    <A> tplx ooe

The prompt ends with "<A> "; the target is the line after the query line in
the context, plus "\\n". Context lines are unique, so the answer is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffmix.formats.base import Format, ParseError, Rendered, register


@dataclass(frozen=True, slots=True)
class CopyProblem:
    """`lines[query]` is asked for; `lines[query + 1]` is the answer."""

    lines: tuple[str, ...]
    query: int

    def __post_init__(self) -> None:
        if not 0 <= self.query < len(self.lines) - 1:
            raise ValueError(f"query {self.query} has no following line in {len(self.lines)} lines")

    @property
    def answer(self) -> str:
        return self.lines[self.query + 1]

    def key(self) -> str:
        return "\n".join(self.lines) + f"\n?{self.query}"


@register
class Copy(Format):
    """Context lines, a query line, and the line that follows it."""

    name = "copy_v1"
    task = "copy"

    def render(self, record: CopyProblem) -> Rendered:
        prompt = "<CTX>\n" + "".join(line + "\n" for line in record.lines) + f"<Q> {record.lines[record.query]}\n<A> "
        return Rendered(f"{prompt}{record.answer}\n", len(prompt))

    def parse(self, prompt: str, target: str) -> str:
        answer = target[:-1] if target.endswith("\n") else target
        if "\n" in answer:
            raise ParseError("multiple_lines", "the answer is more than one line")
        if not answer:
            raise ParseError("empty_answer", "no line was copied")
        return answer

    def answer(self, record: CopyProblem) -> str:
        return record.answer

    def stop_sequences(self) -> tuple[str, ...]:
        return ("\n",)
