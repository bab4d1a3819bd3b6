"""`DIR/manifest.json`: what a dataset directory holds and how it was made.

One model for corpora (`diffmix build`) and mixtures (`diffmix mix`). The
manifest is written last, atomically: a directory whose manifest is present
and whose shards match it is complete.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from diffmix.schemas.columns import SCHEMA_VERSION


class FileEntry(BaseModel):
    """One file of the dataset, relative to the directory."""

    path: str
    rows: int
    bytes: int
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside_the_dataset(cls, value: str) -> str:
        """A manifest from elsewhere must not point outside its own directory (`/etc/passwd`, `../x`)."""
        parts = PurePosixPath(value).parts
        if not parts or PurePosixPath(value).is_absolute() or ".." in parts or "\\" in value:
            raise ValueError(f"file path {value!r} is not inside the dataset directory")
        return value


class InputEntry(BaseModel):
    """One input and a fingerprint that changes when its content changes."""

    uri: str
    kind: str
    fingerprint: str


# A corpus's stages in pipeline order (`by_stage` keys; JSON sorts them): synthetic documents are
# generated; commit rows go through the structural checks, then the document stages.
PIPELINE_STAGES = ("generate", "structural", "filter", "dedup", "cap")


class Counts(BaseModel):
    """The accounting identity: `rows_in == kept + sum(dropped.values())`."""

    model_config = ConfigDict(populate_by_name=True)

    rows_in: int = Field(alias="in")
    kept: int
    dropped: dict[str, int] = Field(default_factory=dict)
    # Per stage (PIPELINE_STAGES; a mixture's "select"): in / kept / dropped per reason.
    by_stage: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def balanced(self) -> bool:
        return self.rows_in == self.kept + sum(self.dropped.values())


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: Literal["corpus", "mixture"]
    config: dict[str, Any]
    config_hash: str
    inputs: list[InputEntry]
    counts: Counts
    columns: list[str]
    shards: list[FileEntry]
    rejects: list[FileEntry] = Field(default_factory=list)
    splits: dict[str, int] = Field(default_factory=dict)
    formats: dict[str, int] = Field(default_factory=dict)
    tokenizer: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None
    # A corpus's partitions (its units of work), as the first input row of each: data shards
    # follow them in a build that drops nothing after a partition. None: a mixture, a synthetic
    # corpus, or a corpus built before they were recorded.
    partitions: list[int] | None = None
    # Stage-specific reports (dedup clusters, mixture audit table, ...).
    reports: dict[str, Any] = Field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
