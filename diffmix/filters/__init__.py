"""Quality filters, deduplication, secret/PII redaction and decontamination for commit documents.

    base.py      the filter contract (scores stored as columns, checks with stable reasons)
    commit.py    license, merge, bot, revert/cherry-pick, trivial, version bump, hash-only, message, English
    files.py     language, generated/vendored/lock, minified/data-like content, old file size
    change.py    non-whitespace change, changed lines, hunks, diff-to-file ratio
    secrets.py   secret and PII detection, typed redaction before diffing, secret-in-change rule
    tokens.py    the token budget (lazy, exact)
    decontam.py  excluded repositories, commits and files
    dedup.py     exact keys, vectorised MinHash, LSH banding, connected components
    engine.py    scoring a partition, first-failing reasons, lazy fills, counts per rule
"""

from __future__ import annotations


def load_rules() -> None:
    """Import every rule module (each registers its rules)."""
    import diffmix.filters.change  # noqa: F401
    import diffmix.filters.commit  # noqa: F401
    import diffmix.filters.files  # noqa: F401
    import diffmix.filters.secrets  # noqa: F401
    import diffmix.filters.tokens  # noqa: F401
