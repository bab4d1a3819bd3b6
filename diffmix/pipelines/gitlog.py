"""A local git repository -> CommitPack-style rows, through libgit2 (pygit2).

Every non-merge commit reachable from HEAD, newest first (topological, then
time order), one row per changed file with git's A/M/D/R status (renames found
as `git -M` does), binary and size flags, and both blob texts. All in one
process through libgit2: no subprocess per commit or file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pygit2
from pygit2.enums import SortMode

from diffmix.errors import DiffmixError
from diffmix.schemas.columns import COMMIT_SCHEMA
from diffmix.schemas.languages import language_of

_BINARY_PROBE_BYTES = 8000  # git's own heuristic: a NUL in the first 8,000 bytes
_SUBMODULE_MODE = 0o160000
_STATUS = {"A": "A", "M": "M", "D": "D", "R": "R", "T": "M", "C": "A"}
_REMOTE = re.compile(r"(?:[:/])([^/:]+/[^/]+?)(?:\.git)?/?$")
_LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "COPYING", "COPYING.md")


def open_repository(path: str | Path) -> pygit2.Repository:
    """Open a repository or fail in one line."""
    if not Path(path).exists():
        raise DiffmixError(f"{path}: no such file or directory")
    try:
        repo = pygit2.Repository(str(path))
    except pygit2.GitError:
        raise DiffmixError(f"{path}: not a git repository") from None
    if repo.head_is_unborn:
        raise DiffmixError(f"{path}: git repository has no commits")
    return repo


def head_commit(repo: pygit2.Repository) -> str:
    return str(repo.head.target)


def repository_name(repo: pygit2.Repository, path: str | Path) -> str:
    """owner/name of the origin remote, else the work tree's directory name."""
    try:
        url = repo.remotes["origin"].url or ""
    except (KeyError, ValueError):
        url = ""
    match = _REMOTE.search(url) if "://" in url or "@" in url else None
    if match:
        return match.group(1)
    root = Path(repo.workdir or repo.path).resolve()
    return root.name if root.name != ".git" else root.parent.name


def detect_license(repo: pygit2.Repository) -> str:
    """SPDX id from the license file at HEAD by its well-known phrases, else "unknown"."""
    tree = repo[repo.head.target].tree
    for name in _LICENSE_FILES:
        if name in tree:
            text = tree[name].data.decode("utf-8", "replace")[:4000]
            return license_from_text(text)
    return "unknown"


def license_from_text(text: str) -> str:
    t = " ".join(text.split())
    rules = [
        ("Permission is hereby granted, free of charge", "MIT"),
        ("Apache License", "Apache-2.0"),
        ("GNU AFFERO GENERAL PUBLIC LICENSE", "AGPL-3.0"),
        ("GNU LESSER GENERAL PUBLIC LICENSE", "LGPL-3.0" if "Version 3" in t else "LGPL-2.1"),
        ("GNU GENERAL PUBLIC LICENSE", "GPL-3.0" if "Version 3" in t else "GPL-2.0"),
        ("Mozilla Public License", "MPL-2.0"),
        ("free and unencumbered software released into the public domain", "Unlicense"),
        ("Permission to use, copy, modify, and/or distribute this software", "ISC"),
    ]
    for phrase, spdx in rules:
        if phrase.lower() in t.lower():
            return spdx
    if "Redistribution and use in source and binary forms" in t:
        return "BSD-3-Clause" if "Neither the name" in t or "contributors may be used" in t else "BSD-2-Clause"
    return "unknown"


def _blob_text(repo: pygit2.Repository, file: Any, max_bytes: int) -> tuple[str | None, bool, bool]:
    """(text, is_binary, too_large) of one side of a delta; ("", False, False) when absent."""
    if file.id.raw == bytes(20):
        return "", False, False
    if file.mode == _SUBMODULE_MODE:
        return None, True, False
    blob = repo[file.id]
    if blob.size > max_bytes:
        return None, False, True
    data = blob.data
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        return None, True, False
    try:
        return data.decode("utf-8"), False, False
    except UnicodeDecodeError:
        return None, True, False


def _iso_utc(signature: pygit2.Signature) -> str:
    return datetime.fromtimestamp(signature.time, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iter_repository_rows(
    path: str | Path,
    batch_rows: int = 512,
    max_file_bytes: int = 1024 * 1024,
    repo_name: str | None = None,
    license: str | None = None,
) -> Iterator[pa.Table]:
    """Yield COMMIT_SCHEMA tables of at most `batch_rows` rows (bounded memory)."""
    repo = open_repository(path)
    name = repo_name or repository_name(repo, path)
    spdx = license or detect_license(repo)
    rows: list[dict[str, Any]] = []
    walker = repo.walk(repo.head.target, SortMode.TOPOLOGICAL | SortMode.TIME)
    for commit in walker:
        if len(commit.parents) > 1:
            continue  # merge commits: their change is already in the merged commits
        parent = commit.parents[0] if commit.parents else None
        diff = repo.diff(parent, commit) if parent is not None else commit.tree.diff_to_tree(swap=True)
        diff.find_similar()  # renames, as `git -M` (50% similarity)
        message = commit.message.rstrip("\n")
        author = commit.author
        common = {
            "commit": str(commit.id),
            "parent": str(parent.id) if parent is not None else None,
            "subject": message.split("\n", 1)[0],
            "message": message,
            "license": spdx,
            "repos": name,
            "author_date": _iso_utc(author),
            "author_email_hash": hashlib.sha1(author.email.lower().encode()).hexdigest(),
            "author_name": author.name,
        }
        for patch in diff:
            delta = patch.delta
            old_text, old_bin, old_big = _blob_text(repo, delta.old_file, max_file_bytes)
            new_text, new_bin, new_big = _blob_text(repo, delta.new_file, max_file_bytes)
            binary = old_bin or new_bin or delta.is_binary
            _, added, deleted = patch.line_stats
            rows.append(
                {
                    **common,
                    "old_file": delta.old_file.path,
                    "new_file": delta.new_file.path,
                    "old_contents": old_text,
                    "new_contents": new_text,
                    "lang": language_of(delta.new_file.path),
                    "change_type": _STATUS.get(delta.status_char(), "M"),
                    "lines_added": None if binary else added,
                    "lines_deleted": None if binary else deleted,
                    "is_binary": binary,
                    "too_large": old_big or new_big,
                }
            )
            if len(rows) >= batch_rows:
                yield pa.Table.from_pylist(rows, schema=COMMIT_SCHEMA)
                rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=COMMIT_SCHEMA)
