"""Build the datasets the shipped recipes read, into recipes/data/ (one Prefect server for all).

    python recipes/build_sources.py [--commits SRC]

SRC (default: this checkout's git history) is the commit source of `commits`
and `commits-window3`: any `diffmix build --input`, e.g. a CommitPack Parquet.
A dataset already built with the same inputs and config is skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffmix.flows import build_corpus, corpus_runner, find_repository, prefect_api

HERE = Path(__file__).resolve().parent
ADDITION = "synthetic:addition?digits=3&format={}&n=2000&test=200&seed=0&operands=balanced"
EDIT = "synthetic:edit?kinds=rename,constant,off_by_one&format={}&window=2..6&n=4000&test=200&seed=0"
SYNTHETIC = {
    "addition-plain": ADDITION.format("plain"),
    "addition-reverse": ADDITION.format("reverse"),
    "addition-simplified": ADDITION.format("simplified_scratchpad"),
    "addition-detailed": ADDITION.format("detailed_scratchpad"),
    "copy": "synthetic:copy?lines=8&length=3..8&n=5000&test=200&seed=0",
    "edit-openelm": EDIT.format("openelm"),
    "edit-udiff-nolines": EDIT.format("udiff_nolines"),
    "edit-scratch-lines": EDIT.format("scratch_lines"),
}
# One repository: split by commit so that the commits have a test split to probe.
COMMITS = {"split": {"by": "commit", "seed": 0, "fractions": {"train": 0.9, "test": 0.1}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", help="commit source for `commits` and `commits-window3` (default: this checkout)")
    args = parser.parse_args()
    commits = args.commits or str(find_repository())
    data = HERE / "data"
    with prefect_api():
        for name, uri in SYNTHETIC.items():
            build_corpus.with_options(task_runner=corpus_runner([uri]))([uri], str(data / name))
            print(f"built {data / name}")
        for name, window in (("commits", "none"), ("commits-window3", "3")):
            build_corpus([commits], str(data / name), config_overrides={**COMMITS, "window": window})
            print(f"built {data / name}")


if __name__ == "__main__":
    main()
