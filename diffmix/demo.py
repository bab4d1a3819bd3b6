"""What `diffmix demo` runs on: this repository's history and three addition formats, the
recipes that compare them, and the training settings (the flow itself is in `diffmix.flows`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from diffmix.errors import DiffmixError

# Demo-sized settings, measured on 2 CPU cores (see README "The demo"): on the same
# 2,000 unique 3-digit additions a 0.4M-parameter model reaches 90% exact match with
# the simplified scratchpad in about 1,000 steps, while plain and reverse stay lower.
DEMO_ADDITION = "synthetic:addition?digits=3&format={fmt}&n=2000&test=200&seed=0&operands=balanced"
DEMO_FORMATS = ("simplified_scratchpad", "plain", "reverse")  # the slowest run first: it starts first
# One repository: split by commit, so that the corpus has a test split.
DEMO_CORPUS = {"split": {"by": "commit", "seed": 0, "fractions": {"train": 0.8, "test": 0.2}}, "git": {"repo_name": "diffmix"}}
DEMO_TRAIN = {
    "batch_size": 64,
    "eval_interval": 100,
    "probes.samples": 200,
    "model.block_size": 96,
    "stop_when": "exact_match",
}
DEMO_STEPS = 2000


def demo_recipes(root: Path, additions: dict[str, Path], steps: int) -> list[Path]:
    """One recipe per addition format on the same 2,000 problems (the format lever)."""
    samples = steps * DEMO_TRAIN["batch_size"]
    paths = []
    for fmt, source in additions.items():
        body = {
            "name": fmt.replace("simplified_scratchpad", "scratchpad"),
            "seed": 0,
            "global_batch_size": DEMO_TRAIN["batch_size"],
            "budget": {"samples": samples},
            # every problem is seen about samples / 2,000 times
            "sources": [{"name": "addition", "path": str(source), "max_repetition": samples / 2000 + 1}],
            "schedule": {"type": "constant", "weights": "uniform"},
        }
        path = root / "recipes" / f"{body['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        paths.append(path)
    return paths


def find_repository() -> Path:
    """The git work tree diffmix runs from (the checkout), else the current directory's."""
    import pygit2

    for start in (Path(__file__).resolve().parents[1], Path.cwd()):
        found = pygit2.discover_repository(str(start))
        if found:
            repo = pygit2.Repository(found)
            return Path(repo.workdir or found)
    raise DiffmixError("diffmix demo reads its own git history: run it from a git checkout of diffmix")
