"""Addition formats: the published Lee et al. 2023 templates, round trips, step checks."""

from __future__ import annotations

import itertools

import pytest

from diffmix.formats.arithmetic import AdditionProblem, carry_count
from diffmix.formats.base import ParseError, format_names, get_format

ADDITION_FORMATS = ["plain_v1", "reverse_v1", "simplified_scratchpad_v1", "detailed_scratchpad_v1"]

# Written out from the paper's data files (lee-ny/teaching_arithmetic: data/addition_bal,
# data/ar_simple, data/algo_reasoning, few_shot_prefix/dollar_*), character for character.
PUBLISHED = [
    ("plain_v1", (128, 367), "128+367=", "495\n"),
    ("plain_v1", (638, 662), "638+662=", "1300\n"),
    ("plain_v1", (0, 11), "0+11=", "11\n"),
    ("reverse_v1", (7992, 1814), "$7992+1814=", "6089$\n"),
    ("reverse_v1", (128, 367), "$128+367=", "594$\n"),
    ("reverse_v1", (5, 5), "$5+5=", "01$\n"),
    ("simplified_scratchpad_v1", (22, 1), "Input:\n22+1\nTarget:\n", "A->3 , C->0\nA->2 , C->0.\n23\n"),
    (
        "simplified_scratchpad_v1",
        (638, 662),
        "Input:\n638+662\nTarget:\n",
        "A->0 , C->1\nA->0 , C->1\nA->3 , C->1.\n1300\n",
    ),
    ("simplified_scratchpad_v1", (5, 3), "Input:\n5+3\nTarget:\n", "A->8 , C->0.\n8\n"),
    (
        "detailed_scratchpad_v1",
        (826, 574),
        "Input:\n826+574\nTarget:\n",
        "<scratch>\n"
        "[8,2,6] has 3 digits.\n"
        "[5,7,4] has 3 digits.\n"
        "[8,2,6] + [5,7,4] , A=[] , C=0 , 6+4+0=10 , A->0 , C->1\n"
        "[8,2] + [5,7] , A=[0] , C=1 , 2+7+1=10 , A->0 , C->1\n"
        "[8] + [5] , A=[0,0] , C=1 , 8+5+1=14 , A->4 , C->1\n"
        "[] + [] , A=[4,0,0] C=1 , END\n"
        "</scratch>\n"
        "1 4 0 0\n",
    ),
    (
        "detailed_scratchpad_v1",
        (864, 37),
        "Input:\n864+37\nTarget:\n",
        "<scratch>\n"
        "[8,6,4] has 3 digits.\n"
        "[3,7] has 2 digits.\n"
        "[8,6,4] + [3,7] , A=[] , C=0 , 4+7+0=11 , A->1 , C->1\n"
        "[8,6] + [3] , A=[1] , C=1 , 6+3+1=10 , A->0 , C->1\n"
        "[8] + [] , A=[0,1] , C=1 , 8+0+1=9 , A->9 , C->0\n"
        "[] + [] , A=[9,0,1] C=0 , END\n"
        "</scratch>\n"
        "9 0 1\n",
    ),
    (
        "detailed_scratchpad_v1",
        (15, 404),
        "Input:\n15+404\nTarget:\n",
        "<scratch>\n"
        "[1,5] has 2 digits.\n"
        "[4,0,4] has 3 digits.\n"
        "[1,5] + [4,0,4] , A=[] , C=0 , 5+4+0=9 , A->9 , C->0\n"
        "[1] + [4,0] , A=[9] , C=0 , 1+0+0=1 , A->1 , C->0\n"
        "[] + [4] , A=[1,9] , C=0 , 0+4+0=4 , A->4 , C->0\n"
        "[] + [] , A=[4,1,9] C=0 , END\n"
        "</scratch>\n"
        "4 1 9\n",
    ),
    (
        "detailed_scratchpad_v1",
        (3, 9),
        "Input:\n3+9\nTarget:\n",
        "<scratch>\n[3] has 1 digits.\n[9] has 1 digits.\n"
        "[3] + [9] , A=[] , C=0 , 3+9+0=12 , A->2 , C->1\n[] + [] , A=[2] C=1 , END\n</scratch>\n1 2\n",
    ),
]


@pytest.mark.parametrize(("name", "operands", "prompt", "target"), PUBLISHED)
def test_published_templates(name: str, operands: tuple[int, int], prompt: str, target: str) -> None:
    fmt = get_format(name)
    rendered = fmt.render(AdditionProblem(*operands))
    assert (rendered.prompt, rendered.target) == (prompt, target)
    assert fmt.parse(prompt, target) == str(sum(operands))


@pytest.mark.parametrize("name", ADDITION_FORMATS)
@pytest.mark.parametrize("width", [0, 3])
def test_round_trip_all_small_problems(name: str, width: int) -> None:
    fmt = get_format(name)
    for a, b in itertools.product(range(0, 1000, 37), range(0, 1000, 41)):
        problem = AdditionProblem(a, b, width)
        rendered = fmt.render(problem)
        # the sum as written: with padding, width + 1 digits
        assert fmt.parse(rendered.prompt, rendered.target) == fmt.answer(problem) == (f"{a + b:04d}" if width else str(a + b))


@pytest.mark.parametrize(
    ("name", "problem", "text"),
    [
        ("plain_v1", AdditionProblem(5, 7, 3), "005+007=0012\n"),
        ("reverse_v1", AdditionProblem(5, 7, 3), "$005+007=2100$\n"),
        ("simplified_scratchpad_v1", AdditionProblem(5, 7, 3), "Input:\n005+007\nTarget:\nA->2 , C->1\nA->1 , C->0\nA->0 , C->0.\n0012\n"),
    ],
)  # fmt: skip
def test_zero_padding(name: str, problem: AdditionProblem, text: str) -> None:
    assert get_format(name).render(problem).text == text


def test_generation_may_omit_the_final_newline() -> None:
    for name in ADDITION_FORMATS:
        fmt = get_format(name)
        rendered = fmt.render(AdditionProblem(99, 1))
        assert fmt.parse(rendered.prompt, rendered.target.rstrip("\n")) == "100"


_SIMPLE_PROMPT = "Input:\n638+662\nTarget:\n"
_DETAILED = get_format("detailed_scratchpad_v1").render(AdditionProblem(826, 574))

BAD = [
    ("plain_v1", "128+367=", "49x\n", "not_a_number"),
    ("plain_v1", "128+367=", "\n", "not_a_number"),
    ("reverse_v1", "$128+367=", "594\n", "missing_terminator"),
    ("reverse_v1", "$128+367=", "5a4$\n", "not_a_number"),
    ("simplified_scratchpad_v1", _SIMPLE_PROMPT, "A->0 , C->1\nA->0 , C->1\nA->3 , C->1\n1300\n", "bad_scratch"),
    ("simplified_scratchpad_v1", _SIMPLE_PROMPT, "A->0 , C->1\nA->3 , C->1.\n1300\n", "step_mismatch"),
    ("simplified_scratchpad_v1", _SIMPLE_PROMPT, "A->0 , C->1\nA->1 , C->1\nA->3 , C->1.\n1310\n", "step_mismatch"),
    ("simplified_scratchpad_v1", _SIMPLE_PROMPT, "A->0 , C->1\nA->0 , C->1\nA->3 , C->1.\n1301\n", "answer_mismatch"),
    ("simplified_scratchpad_v1", _SIMPLE_PROMPT, "1300\n", "bad_scratch"),
    ("simplified_scratchpad_v1", _SIMPLE_PROMPT, "A->\uff10 , C->1\nA->0 , C->1\nA->3 , C->1.\n1300\n", "bad_scratch"),  # a fullwidth 0 (int() reads it)
    ("simplified_scratchpad_v1", "638+662=", "A->0 , C->1.\n1\n", "bad_prompt"),
    ("detailed_scratchpad_v1", _DETAILED.prompt, _DETAILED.target.replace("[8,2,6] has", "[8,2,7] has"), "operand_mismatch"),
    ("detailed_scratchpad_v1", _DETAILED.prompt, _DETAILED.target.replace("2+7+1=10", "2+7+1=11"), "step_mismatch"),
    ("detailed_scratchpad_v1", _DETAILED.prompt, _DETAILED.target.replace("A=[0] , C=1", "A=[0], C=1"), "bad_scratch"),
    ("detailed_scratchpad_v1", _DETAILED.prompt, _DETAILED.target.replace("1 4 0 0", "1 4 0 1"), "answer_mismatch"),
    ("detailed_scratchpad_v1", _DETAILED.prompt, _DETAILED.target.replace("1 4 0 0", "1400"), "not_a_number"),
    ("detailed_scratchpad_v1", _DETAILED.prompt, "1 4 0 0\n", "bad_scratch"),
    (
        "detailed_scratchpad_v1",
        _DETAILED.prompt,
        _DETAILED.target.replace("[] + [] , A=[4,0,0] C=1 , END\n", ""),
        "step_mismatch",
    ),
]


@pytest.mark.parametrize(("name", "prompt", "target", "reason"), BAD)
def test_wrong_generations_give_stable_reasons(name: str, prompt: str, target: str, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        get_format(name).parse(prompt, target)
    assert caught.value.reason == reason


def test_final_answer_ignores_the_steps() -> None:
    simplified = get_format("simplified_scratchpad_v1")
    wrong_steps = "A->9 , C->9\nA->9 , C->9\nA->9 , C->9.\n1300\n"
    assert simplified.final_answer(wrong_steps) == "1300"
    detailed = get_format("detailed_scratchpad_v1")
    assert detailed.final_answer(_DETAILED.target.replace("2+7+1=10", "2+7+1=11")) == "1400"


@pytest.mark.parametrize(
    ("a", "b", "carries"),
    [(0, 0, 0), (128, 367, 1), (999, 1, 3), (500, 500, 1), (555, 555, 3), (95, 5, 2), (123, 456, 0)],
)
def test_carry_count(a: int, b: int, carries: int) -> None:
    assert carry_count(a, b) == carries


def test_registered_as_addition_task() -> None:
    assert format_names("addition") == sorted(ADDITION_FORMATS)
    assert get_format("reverse").stop_sequences() == ("$",)
