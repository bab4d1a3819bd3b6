"""Build configuration (YAML), validated; its hash names the output.

Everything that changes output bytes lives here and enters `config_hash`;
how the build runs (workers, Dask address) does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from diffmix.errors import DiffmixError
from diffmix.pipelines.io import sha256_json

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "build.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    """Deterministic train / validation / test assignment by hashing a column with a seed."""

    by: Literal["repo", "commit"] = "repo"
    seed: int = 0
    fractions: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "validation": 0.05, "test": 0.05})

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(f < 0 for f in value.values()) or abs(sum(value.values()) - 1.0) > 1e-9:
            raise ValueError(f"fractions must be non-negative and sum to 1, got {value}")
        return value


class GitConfig(_Strict):
    """Metadata a git repository does not carry itself."""

    repo_name: str | None = None  # default: owner/name of the origin remote, else the directory name
    license: str | None = None  # default: detected from the LICENSE file at HEAD, else "unknown"


class TokenizeConfig(_Strict):
    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 8192


class BuildConfig(_Strict):
    format: str = "openelm_v1"
    # Rows per input partition (the unit of parallel work and of resume).
    partition_rows: int = Field(2000, gt=0)
    shard_bytes: int = Field(128 * 1024 * 1024, gt=0)
    # A side over this many bytes is `too_large` (CommitPack-style data stores it as null).
    max_file_bytes: int = Field(1024 * 1024, gt=0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    git: GitConfig = Field(default_factory=GitConfig)
    tokenize: TokenizeConfig | None = None
    # Quality filters, dedup and redaction (diffmix.filters) read their own sections.
    filters: dict[str, Any] = Field(default_factory=dict)

    def digest(self) -> str:
        return sha256_json(self.model_dump(mode="json"))


def load_build_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> BuildConfig:
    """Read a YAML build config (the packaged default when `path` is None); fail in one line."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise DiffmixError(f"{source}: config file not found") from None
    except yaml.YAMLError as exc:
        raise DiffmixError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DiffmixError(f"{source}: a build config must be a mapping, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as exc:
        raise DiffmixError(f"{source}: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """'field.path: message (got value)' for the first pydantic error."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {err['msg']}{shown}"
