"""The format contract: one canonical record -> text with a prompt and a target.

A *format* renders a canonical record (a file edit, or a synthetic problem)
into `text`, where `text[:target_start]` is what the model is given and
`text[target_start:]` what it must produce (the loss and the probes use the
target). Each format also *parses* a target back to the canonical answer (for
edits: the new file contents), so every format round-trips on every document
and the training stage can score a generation in any format.

Formats are registered under versioned names (`openelm_v1`); a bare family
name (`openelm`) resolves to its newest version.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from diffmix.errors import DiffmixError


class ParseError(ValueError):
    """A target that cannot be turned back into an answer (a bad generation)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    target_start: int
    # Extra character offsets a format exposes (openelm: bef_start, msg_start, dff_start).
    sections: dict[str, int] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.text[: self.target_start]

    @property
    def target(self) -> str:
        return self.text[self.target_start :]


class Format(ABC):
    """A named, versioned way to write one kind of record as a document."""

    name: ClassVar[str]  # versioned, e.g. "openelm_v1"
    task: ClassVar[str]  # the kind of record it renders: "edit", "addition", "copy"

    @property
    def family(self) -> str:
        """The name without its version (`openelm_v1` -> `openelm`)."""
        match = _VERSIONED.match(self.name)
        assert match is not None  # `register` refuses other names
        return match["family"]

    @abstractmethod
    def render(self, record: Any) -> Rendered:
        """Record -> text with its prompt/target split."""

    @abstractmethod
    def parse(self, prompt: str, target: str) -> str:
        """A (possibly generated) target -> the canonical answer; raise ParseError if impossible."""

    def parse_document(self, text: str, target_start: int) -> str:
        """`parse` of a whole document (`Rendered.text`, or a stored row's `text`); a format that
        reads prompt and target as one text overrides it to skip cutting and joining them."""
        return self.parse(text[:target_start], text[target_start:])

    @abstractmethod
    def answer(self, record: Any) -> str:
        """The canonical answer of a record (what `parse(render(r))` must give back)."""

    def stop_sequences(self) -> tuple[str, ...]:
        """Strings after which a generation can stop (besides end of text)."""
        return ()


_REGISTRY: dict[str, Format] = {}
_VERSIONED = re.compile(r"^(?P<family>[a-z0-9_]+?)_v(?P<version>\d+)$")


def register(cls: type[Format]) -> type[Format]:
    """Class decorator: make a format available by name."""
    if not _VERSIONED.match(cls.name):
        raise ValueError(f"format name {cls.name!r} must end in _vN")
    _REGISTRY[cls.name] = cls()
    return cls


def get_format(name: str) -> Format:
    """Look a format up by versioned name, or by family for its newest version."""
    _load_builtin_formats()
    if name in _REGISTRY:
        return _REGISTRY[name]
    versions = [(int(m["version"]), key) for key in _REGISTRY if (m := _VERSIONED.match(key)) and m["family"] == name]
    if not versions:
        raise DiffmixError(f"unknown format {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[max(versions)[1]]


def format_names(task: str | None = None) -> list[str]:
    _load_builtin_formats()
    return sorted(name for name, fmt in _REGISTRY.items() if task is None or fmt.task == task)


def _load_builtin_formats() -> None:
    # Import side effect: each module registers its formats.
    import diffmix.formats.arithmetic  # noqa: F401
    import diffmix.formats.copy  # noqa: F401
    import diffmix.formats.edit  # noqa: F401
