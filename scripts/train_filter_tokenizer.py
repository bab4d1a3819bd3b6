"""Train the byte-level BPE that `diffmix.filters.tokens` counts the token budget with.

    python scripts/train_filter_tokenizer.py [--stdlib DIR] [--vocab 8192]

Trained on the CPython standard library's own `.py` files (PSF license; tests
excluded), which every Python installation has offline, and never on commit
data, so the budget does not depend on the corpus being filtered. Files are
read in sorted path order and BPE training is deterministic, so the same
standard library gives the same `diffmix/filters/data/tokenizer.json`.
The packaged file was made from CPython 3.11.7's `lib/python3.11` (734 files).
"""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from diffmix.pipelines.tokenize import save_tokenizer, train_bpe

OUT_DIR = Path(__file__).resolve().parents[1] / "diffmix" / "filters" / "data"
SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test"}


def stdlib_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(root).parts))


def texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    files = stdlib_files(args.stdlib.resolve())
    tokenizer = train_bpe(texts(files), args.vocab)
    entry = save_tokenizer(tokenizer, OUT_DIR)
    print(f"{OUT_DIR / entry['file']}: {entry['vocab_size']} tokens from {len(files)} files of {args.stdlib} (sha256 {entry['sha256'][:12]})")


if __name__ == "__main__":
    main()
