"""File extension -> language name, the one mapping ingest and filters share.

Names follow `../shared/data/README.md` (Python, JavaScript, ...) and extend it
to the 22 languages of CarperAI's diff models. Unknown extensions are "Other".
"""

from __future__ import annotations

import polars as pl

EXTENSION_LANGUAGES: dict[str, str] = {
    ".py": "Python", ".pyi": "Python",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".mts": "TypeScript", ".cts": "TypeScript",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".kt": "Kotlin", ".kts": "Kotlin",
    ".scala": "Scala",
    ".c": "C", ".h": "C",
    ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++",
    ".cs": "C#",
    ".rb": "Ruby",
    ".php": "PHP",
    ".swift": "Swift",
    ".lua": "Lua",
    ".pl": "Perl", ".pm": "Perl",
    ".r": "R",
    ".jl": "Julia",
    ".hs": "Haskell",
    ".sql": "SQL",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell",
    ".html": "HTML", ".htm": "HTML",
    ".css": "CSS", ".scss": "CSS",
    ".md": "Markdown", ".markdown": "Markdown",
    ".rst": "reStructuredText",
    ".txt": "Text",
    ".yml": "YAML", ".yaml": "YAML",
    ".json": "JSON",
    ".toml": "TOML",
}  # fmt: skip


def language_of(path: str) -> str:
    """Language of one path (its extension, case-insensitive)."""
    name = path.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return EXTENSION_LANGUAGES.get(name[dot:], "Other") if dot > 0 else "Other"


def language_expr(path: pl.Expr) -> pl.Expr:
    """The same mapping as a Polars expression over a path column."""
    extension = path.str.to_lowercase().str.extract(r"[^/](\.[^./]+)$", 1)
    return extension.replace_strict(EXTENSION_LANGUAGES, default="Other", return_dtype=pl.String)
