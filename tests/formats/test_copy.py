"""Copy / refer-back format."""

from __future__ import annotations

import pytest

from diffmix.formats.base import ParseError, get_format
from diffmix.formats.copy import CopyProblem

FMT = get_format("copy")


def test_rendering_and_round_trip() -> None:
    problem = CopyProblem(("kqz vmw", "ab", "tplx ooe"), 1)
    rendered = FMT.render(problem)
    assert rendered.prompt == "<CTX>\nkqz vmw\nab\ntplx ooe\n<Q> ab\n<A> "
    assert rendered.target == "tplx ooe\n"
    assert FMT.parse(rendered.prompt, rendered.target) == FMT.answer(problem) == "tplx ooe"
    assert FMT.parse(rendered.prompt, "tplx ooe") == "tplx ooe"  # cut at the stop sequence


@pytest.mark.parametrize(("target", "reason"), [("\n", "empty_answer"), ("", "empty_answer"), ("ab\ncd\n", "multiple_lines")])
def test_bad_generations(target: str, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        FMT.parse("<CTX>\na\nb\n<Q> a\n<A> ", target)
    assert caught.value.reason == reason


@pytest.mark.parametrize("query", [-1, 2, 5])
def test_query_must_have_a_following_line(query: int) -> None:
    with pytest.raises(ValueError):
        CopyProblem(("a", "b", "c"), query)
