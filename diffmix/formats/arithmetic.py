"""n-digit addition in the four formats of Lee et al. 2023 ("Teaching Arithmetic to Small Transformers").

The templates follow the paper's data files (lee-ny/teaching_arithmetic,
`data/addition_bal`, `data/ar_simple`, `data/algo_reasoning`) character for
character, one document per problem, each ending with "\\n":

* `plain_v1`                 `128+367=495`                       prompt `128+367=`
* `reverse_v1`               `$128+367=594$` (sum digits reversed, `$` delimiters as in the paper's
                             reverse runs; the closing `$` ends the answer)   prompt `$128+367=`
* `simplified_scratchpad_v1` `Input:\\n128+367\\nTarget:\\n` then one `A->digit , C->carry` line per
                             digit from the least significant, the last ending in `.`, then the sum
* `detailed_scratchpad_v1`   `Input:\\n...\\nTarget:\\n<scratch>` with the digit lists, every step's
                             `x+y+c=s , A->d , C->c` and the final `A=[...] C=c , END`, then
                             `</scratch>` and the sum's digits separated by spaces

Scratchpad targets are long (about 40 and 260 characters for 3 digits against
4 for plain), which is why speed must be compared per token as well as per
example. With `width` set (zero padding, the paper's "pad" ablation) operands
are written with `width` digits and the sum with `width + 1`.

Every parser returns the sum's digits exactly as written (most significant first;
the pad ablation's leading zero kept), so exact match is on the written answer: a
reversed `594000$` or a plain `0495` is not `495`. The scratchpad parsers
check each step (stable reasons: `operand_mismatch` for a digit list that is
not the prompt's operand, `step_mismatch` for a step that does not follow from
its inputs, `answer_mismatch` for a final answer that is not what the steps
computed); `final_answer` reads only the answer line, for the paper's
exact-match metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffmix.formats.base import Format, ParseError, Rendered, register


@dataclass(frozen=True, slots=True)
class AdditionProblem:
    """a + b, written with `width` zero-padded digits per operand (0: no padding)."""

    a: int
    b: int
    width: int = 0

    @property
    def total(self) -> int:
        return self.a + self.b

    def operands(self) -> tuple[str, str]:
        return f"{self.a:0{self.width}d}", f"{self.b:0{self.width}d}"

    def sum_text(self) -> str:
        return f"{self.total:0{self.width + 1 if self.width else 0}d}"

    def key(self) -> str:
        """Stable identity of the problem (for ids and train/test disjointness)."""
        return f"{self.a}+{self.b}/{self.width}"


def carry_count(a: int, b: int) -> int:
    """How many digit positions produce a carry when adding a and b."""
    count = carry = 0
    while a or b or carry:
        carry = 1 if a % 10 + b % 10 + carry >= 10 else 0
        count += carry
        a, b = a // 10, b // 10
    return count


def _digits_only(text: str, what: str) -> str:
    if not text or not text.isdigit() or not text.isascii():
        raise ParseError("not_a_number", f"{what} {text[:40]!r} is not a decimal number")
    return text


def _strip_newline(target: str) -> str:
    return target[:-1] if target.endswith("\n") else target


_OPERANDS = re.compile(r"^\$?(\d+)\+(\d+)=$", re.ASCII)  # (ASCII: `\d` also takes a fullwidth digit, and int() reads it)
_SCRATCH_PROMPT = re.compile(r"^Input:\n(\d+)\+(\d+)\nTarget:\n$", re.ASCII)


def _prompt_operands(prompt: str, pattern: re.Pattern[str]) -> tuple[str, str]:
    match = pattern.match(prompt)
    if match is None:
        raise ParseError("bad_prompt", f"{prompt[:40]!r} is not an addition prompt")
    return match[1], match[2]


class _AdditionFormat(Format):
    task = "addition"

    def answer(self, record: AdditionProblem) -> str:
        return record.sum_text()


@register
class Plain(_AdditionFormat):
    """`128+367=495`."""

    name = "plain_v1"

    def render(self, record: AdditionProblem) -> Rendered:
        a, b = record.operands()
        prompt = f"{a}+{b}="
        return Rendered(f"{prompt}{record.sum_text()}\n", len(prompt))

    def parse(self, prompt: str, target: str) -> str:
        return _digits_only(_strip_newline(target), "answer")

    def stop_sequences(self) -> tuple[str, ...]:
        return ("\n",)


@register
class Reverse(_AdditionFormat):
    """`$128+367=594$`: the sum's digits least significant first."""

    name = "reverse_v1"

    def render(self, record: AdditionProblem) -> Rendered:
        a, b = record.operands()
        prompt = f"${a}+{b}="
        return Rendered(f"{prompt}{record.sum_text()[::-1]}$\n", len(prompt))

    def parse(self, prompt: str, target: str) -> str:
        text = _strip_newline(target)
        if not text.endswith("$"):
            raise ParseError("missing_terminator", "the reversed answer does not end with '$'")
        body = text[:-1]
        return _digits_only(body, "reversed answer")[::-1]

    def stop_sequences(self) -> tuple[str, ...]:
        return ("$",)


def _column_steps(a: str, b: str) -> list[tuple[int, int, int, int, int]]:
    """Per digit from the least significant: (digit of a, digit of b, carry in, sum digit, carry out)."""
    steps = []
    carry = 0
    for i in range(1, max(len(a), len(b)) + 1):
        x = int(a[-i]) if i <= len(a) else 0
        y = int(b[-i]) if i <= len(b) else 0
        total = x + y + carry
        steps.append((x, y, carry, total % 10, total // 10))
        carry = total // 10
    return steps


def _answer_from_steps(digits: list[int], carry: int) -> str:
    """The sum the steps computed (leading carry if any), as the paper writes it."""
    return ("1" if carry else "") + "".join(str(d) for d in reversed(digits))


_SIMPLE_STEP = re.compile(r"^A->(\d) , C->(\d)(\.?)$", re.ASCII)


@register
class SimplifiedScratchpad(_AdditionFormat):
    """`A->5 , C->1` per digit (least significant first), the last line ending in `.`, then the sum."""

    name = "simplified_scratchpad_v1"

    def render(self, record: AdditionProblem) -> Rendered:
        a, b = record.operands()
        prompt = f"Input:\n{a}+{b}\nTarget:\n"
        steps = [f"A->{s} , C->{c}" for _, _, _, s, c in _column_steps(a, b)]
        return Rendered(f"{prompt}{chr(10).join(steps)}.\n{record.sum_text()}\n", len(prompt))

    def parse(self, prompt: str, target: str) -> str:
        a, b = _prompt_operands(prompt, _SCRATCH_PROMPT)
        lines = _strip_newline(target).split("\n")
        if len(lines) < 2:
            raise ParseError("bad_scratch", "no step lines before the answer")
        expected = _column_steps(a, b)
        steps = []
        for number, line in enumerate(lines[:-1], 1):
            match = _SIMPLE_STEP.match(line)
            if match is None or bool(match[3]) != (number == len(lines) - 1):
                raise ParseError("bad_scratch", f"step line {number}: {line[:40]!r}")
            steps.append((int(match[1]), int(match[2])))
        if len(steps) != len(expected):
            raise ParseError("step_mismatch", f"{len(steps)} steps for {len(expected)} digit positions")
        for number, ((digit, carry), (_, _, _, want, want_carry)) in enumerate(zip(steps, expected), 1):
            if (digit, carry) != (want, want_carry):
                raise ParseError("step_mismatch", f"step {number} says A->{digit} , C->{carry}")
        answer = _digits_only(lines[-1], "answer")
        computed = _answer_from_steps([digit for digit, _ in steps], steps[-1][1])
        if int(answer) != int(computed):
            raise ParseError("answer_mismatch", f"the steps compute {computed}, the answer says {lines[-1][:20]!r}")
        return answer

    def final_answer(self, target: str) -> str:
        """Only the answer line (the paper's exact-match metric), steps unchecked."""
        return _digits_only(_strip_newline(target).rsplit("\n", 1)[-1], "answer")

    def stop_sequences(self) -> tuple[str, ...]:
        return ("\nInput:",)


def _digit_list(digits: str | list[int]) -> str:
    return "[" + ",".join(str(d) for d in digits) + "]"


def detailed_scratch_lines(a: str, b: str) -> list[str]:
    """The lines between `<scratch>` and `</scratch>` for a + b, as in the paper."""
    lines = [f"{_digit_list(a)} has {len(a)} digits.", f"{_digit_list(b)} has {len(b)} digits."]
    done: list[int] = []
    carry = 0
    for i, (x, y, c, s, c_out) in enumerate(_column_steps(a, b)):
        left, right = a[: max(0, len(a) - i)], b[: max(0, len(b) - i)]
        lines.append(
            f"{_digit_list(left)} + {_digit_list(right)} , A={_digit_list(done)} , C={c} , "
            f"{x}+{y}+{c}={x + y + c} , A->{s} , C->{c_out}"
        )
        done = [s, *done]
        carry = c_out
    lines.append(f"[] + [] , A={_digit_list(done)} C={carry} , END")
    return lines


@register
class DetailedScratchpad(_AdditionFormat):
    """The paper's `<scratch>` template: digit lists, each step's sum, digit and carry, then spaced digits."""

    name = "detailed_scratchpad_v1"

    def render(self, record: AdditionProblem) -> Rendered:
        a, b = record.operands()
        prompt = f"Input:\n{a}+{b}\nTarget:\n"
        scratch = "\n".join(detailed_scratch_lines(a, b))
        answer = " ".join(record.sum_text())
        return Rendered(f"{prompt}<scratch>\n{scratch}\n</scratch>\n{answer}\n", len(prompt))

    def parse(self, prompt: str, target: str) -> str:
        a, b = _prompt_operands(prompt, _SCRATCH_PROMPT)
        lines = _strip_newline(target).split("\n")
        if len(lines) < 5 or lines[0] != "<scratch>" or lines[-2] != "</scratch>":
            raise ParseError("bad_scratch", "the target is not <scratch> ... </scratch> then the answer")
        got, expected = lines[1:-2], detailed_scratch_lines(a, b)
        for number, (line, want) in enumerate(zip(got, expected), 1):
            if line != want:
                reason = "operand_mismatch" if number <= 2 else "step_mismatch"
                if not _DETAILED_LINE.match(line):
                    reason = "bad_scratch"
                raise ParseError(reason, f"scratch line {number}: {line[:60]!r}")
        if len(got) != len(expected):
            raise ParseError("step_mismatch", f"{len(got)} scratch lines, expected {len(expected)}")
        spaced = lines[-1]
        if not re.fullmatch(r"\d( \d)*", spaced, re.ASCII):
            raise ParseError("not_a_number", f"answer {spaced[:40]!r} is not space-separated digits")
        answer = spaced.replace(" ", "")
        if int(answer) != int(a) + int(b):
            raise ParseError("answer_mismatch", f"the steps compute {int(a) + int(b)}, the answer says {answer}")
        return answer

    def final_answer(self, target: str) -> str:
        """Only the answer line (the paper's exact-match metric), steps unchecked."""
        return _digits_only(_strip_newline(target).rsplit("\n", 1)[-1].replace(" ", ""), "answer")

    def stop_sequences(self) -> tuple[str, ...]:
        return ("\nInput:",)


_DETAILED_LINE = re.compile(
    r"^(?:\[[\d,]*\] has \d+ digits\."
    r"|\[[\d,]*\] \+ \[[\d,]*\] , A=\[[\d,]*\] , C=\d , \d\+\d\+\d=\d+ , A->\d , C->\d"
    r"|\[\] \+ \[\] , A=\[[\d,]*\] C=\d , END)$",
    re.ASCII,
)
