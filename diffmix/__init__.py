"""diffmix: commit history -> diff-model documents -> mixtures -> skill-acquisition speed."""

__version__ = "0.1.0"
