"""The training loader: mixture rows in training order -> token batches with loss masks.

A mixture is read once into flat NumPy arrays (`MixtureTokens`): every
document's token ids back to back, each followed by EOS, with per-row offsets,
target starts, source and phase. Batch `k` is then a pure function of `k`:

* **pad**: a pass over the mixture is `ceil(rows / B)` global batches, as the
  recipe planned its steps: batch j of a pass holds rows `j*B .. j*B+B-1`, one
  document per sequence, right-padded to the longest in the global batch and
  cut at the context. The last batch of a pass is short when B does not divide
  the rows (its empty slots are padding, masked out), so a pass trains each row
  once and the next pass starts again at row 0;
* **pack**: the token stream is cut into windows of `block_size + 1` tokens
  with stride `block_size`; batch j of a pass holds windows `j*B .. j*B+B-1`,
  a pass is `ceil((tokens - 1) / (B * block_size))` batches, and what lies past
  the end of the stream in its last batch is padding, masked out.

Each DDP rank takes its contiguous slice of every global batch. Because a batch
depends on nothing but its index, resuming is just starting from a batch index,
DataLoader workers cannot change the order, and single-process and DDP runs see
the same global batches. The loss weights of a batch are 1/(loss tokens in the
*global* batch), so per-rank sums add up to the global mean loss exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from diffmix.errors import DiffmixError
from diffmix.mixers.mixture import MixtureReader
from diffmix.mixers.recipe import where_expression, where_mask
from diffmix.pipelines.shards import load_table
from diffmix.pipelines.tokenize import EOS, char_tokenizer, train_bpe
from diffmix.training.config import TokenizerConfig


@dataclass(frozen=True)
class MixtureTokens:
    """A tokenised mixture in training order (row i is mixture position i)."""

    tokens: np.ndarray  # int32, every document followed by EOS
    offsets: np.ndarray  # int64 (rows + 1): row i is tokens[offsets[i]:offsets[i+1]]
    target_start: np.ndarray  # int64 (rows,): first target token, relative to the row
    source: np.ndarray  # int64 (rows,): index into `source_names`
    source_names: tuple[str, ...]
    phase: np.ndarray  # int64 (rows,)
    # unique_before[i]: distinct (source, source_row) among rows 0..i-1 (rows + 1 entries).
    unique_before: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def distinct(self) -> int:
        """Distinct (source, source_row) examples: an upsampled mixture repeats some within one pass."""
        return int(self.unique_before[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_columns(
        cls,
        ids: pa.ChunkedArray | pa.Array,
        target_token_start: np.ndarray,
        sources: pa.ChunkedArray | pa.Array,
        source_rows: np.ndarray,
        phases: np.ndarray,
        eos_id: int,
    ) -> MixtureTokens:
        """Build from a list<int> column of token ids (EOS is appended where a row lacks it)."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        flat = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        starts = ids.offsets.to_numpy().astype(np.int64) - int(ids.offsets[0].as_py())
        lengths = np.diff(starts)
        # Append EOS to every row that does not end with it (vectorised insert at row ends).
        ends_with_eos = np.zeros(len(lengths), dtype=bool)
        nonempty = lengths > 0
        ends_with_eos[nonempty] = flat[starts[1:][nonempty] - 1] == eos_id
        missing = np.flatnonzero(~ends_with_eos)
        flat = np.insert(flat, starts[1:][missing], np.int32(eos_id))
        offsets = np.concatenate([[0], np.cumsum(lengths + ~ends_with_eos)])
        frame = pl.DataFrame({"source": pl.Series(pa.chunked_array([sources]) if isinstance(sources, pa.Array) else sources).cast(pl.String), "source_row": source_rows})
        names = tuple(sorted(frame["source"].unique().to_list()))
        source_index = frame["source"].replace_strict(names, list(range(len(names))), return_dtype=pl.Int64).to_numpy()
        first = frame.select(pl.struct("source", "source_row").is_first_distinct()).to_series().to_numpy()
        unique_before = np.concatenate([[0], np.cumsum(first)])
        return cls(
            tokens=flat,
            offsets=offsets.astype(np.int64),
            target_start=np.asarray(target_token_start, dtype=np.int64),
            source=source_index,
            source_names=names,
            phase=np.asarray(phases, dtype=np.int64),
            unique_before=unique_before.astype(np.int64),
        )


@dataclass(frozen=True)
class BatchInfo:
    """What global batch k consumed, for the metrics (identical on every rank)."""

    first_row: int  # unwrapped position in the endless stream of mixture rows
    stop_row: int  # one past the last row that started in this batch
    tokens: int  # non-pad input tokens in the global batch
    loss_tokens: int
    phase: int


class MixtureBatches(Dataset):
    """Map-style dataset: item k is this rank's slice of global batch k (a dict of tensors)."""

    def __init__(
        self,
        data: MixtureTokens,
        batch_size: int,
        block_size: int,
        batching: str = "pad",
        loss_on: str = "target",
        pad_id: int = 0,
        rank: int = 0,
        world_size: int = 1,
        length: int | None = None,
    ) -> None:
        if data.rows == 0:
            raise DiffmixError("mixture: no rows to train on")
        if batch_size % world_size:
            raise DiffmixError(f"batch_size: {batch_size} is not divisible by the world size {world_size}")
        self.data = data
        self.B = batch_size
        self.T = block_size
        self.batching = batching
        self.loss_on = loss_on
        self.pad_id = pad_id
        self.rank = rank
        self.world_size = world_size
        self.length = length if length is not None else 1 << 62
        self._row_len = np.minimum(data.lengths, block_size + 1)  # tokens used per row (pad mode)

    def __len__(self) -> int:
        return self.length

    # --- the global batch ------------------------------------------------------

    @property
    def steps_per_pass(self) -> int:
        """Global batches in one pass over the mixture."""
        return steps_per_pass(self.data, self.B, self.T, self.batching)

    def _pad_rows(self, k: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Pad-mode global batch k: its rows (B, an empty slot repeats the last row), which slots
        hold a row, and the unwrapped stream positions of its first row and one past its last."""
        total = self.data.rows
        epoch, j = divmod(k, self.steps_per_pass)
        slots = j * self.B + np.arange(self.B, dtype=np.int64)
        real = slots < total
        start = epoch * total + j * self.B
        return np.minimum(slots, total - 1), real, start, epoch * total + min((j + 1) * self.B, total)

    def _pad_batch(self, k: int) -> dict[str, np.ndarray]:
        d = self.data
        rows, real, _, _ = self._pad_rows(k)
        n = np.where(real, self._row_len[rows], 1)  # tokens per sequence incl. the last label
        L = int(n.max()) - 1  # padded input length of the global batch
        j = np.arange(L + 1)[None, :]
        inside = (j < n[:, None]) & real[:, None]
        flat = np.where(inside, d.offsets[rows, None] + j, 0)
        seq = np.where(inside, d.tokens[flat], self.pad_id)
        # label j+1 is trained on when it exists and (loss_on target) lies in the target
        label_ok = inside[:, 1:]
        if self.loss_on == "target":
            label_ok = label_ok & (j[:, 1:] >= d.target_start[rows, None])
        src = np.broadcast_to(d.source[rows, None], (len(rows), L))
        return {"x": seq[:, :-1], "y": seq[:, 1:], "mask": label_ok, "source": src, "tokens": int(n.sum() - len(n))}

    def _pack_labels(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pack-mode global batch k: token positions in the pass (B x T+1, clipped to the stream),
        which of them lie in the stream, each label's row, and the loss mask."""
        d = self.data
        total = len(d.tokens)
        j = k % self.steps_per_pass
        windows = np.arange(j * self.B, (j + 1) * self.B, dtype=np.int64)
        pos = windows[:, None] * self.T + np.arange(self.T + 1)[None, :]
        inside = pos < total
        clipped = np.minimum(pos, total - 1)
        label_row = np.searchsorted(d.offsets, clipped[:, 1:], side="right") - 1
        mask = inside[:, 1:]
        if self.loss_on == "target":
            mask = mask & (clipped[:, 1:] - d.offsets[label_row] >= d.target_start[label_row])
        return clipped, inside, label_row, mask

    def _pack_batch(self, k: int) -> dict[str, np.ndarray]:
        clipped, inside, label_row, mask = self._pack_labels(k)
        seq = np.where(inside, self.data.tokens[clipped], self.pad_id)
        tokens = int(inside[:, :-1].sum())
        return {"x": seq[:, :-1], "y": seq[:, 1:], "mask": mask, "source": self.data.source[label_row], "tokens": tokens}

    def global_batch(self, k: int) -> dict[str, np.ndarray]:
        return self._pad_batch(k) if self.batching == "pad" else self._pack_batch(k)

    def info(self, k: int) -> BatchInfo:
        """Rows and tokens of global batch k without gathering its tokens (the loop's per-step accounting)."""
        d = self.data
        if self.batching == "pad":
            rows, real, first, stop = self._pad_rows(k)
            n = self._row_len[rows[real]]
            if self.loss_on == "target":
                loss = np.clip(n - np.maximum(d.target_start[rows[real]], 1), 0, None)
            else:
                loss = n - 1
            return BatchInfo(first, stop, int((n - 1).sum()), int(loss.sum()), int(d.phase[rows[real][-1]]))
        epoch, j = divmod(k, self.steps_per_pass)
        span = self.B * self.T
        start, stop = j * span, min((j + 1) * span, len(d.tokens))  # the pass's token range of the inputs
        # Rows whose first token lies in [start, stop): counted as consumed by this batch.
        first = int(np.searchsorted(d.offsets[:-1], start, side="left"))
        end = int(np.searchsorted(d.offsets[:-1], stop, side="left"))
        _, inside, label_row, mask = self._pack_labels(k)
        # The phase of the row holding the batch's last label: a batch inside one long document
        # starts no row, and the row after it may not exist or be of the next phase.
        last = int(label_row[inside[:, 1:]][-1])
        return BatchInfo(epoch * d.rows + first, epoch * d.rows + end, int(inside[:, :-1].sum()), int(mask.sum()), int(d.phase[last]))

    # --- this rank's slice -------------------------------------------------------

    def __getitem__(self, k: int) -> dict[str, Any]:
        batch = self.global_batch(k)
        mask = batch["mask"]
        n_loss = max(int(mask.sum()), 1)
        per = self.B // self.world_size
        part = slice(self.rank * per, (self.rank + 1) * per)
        return {
            "step": k,
            "x": torch.from_numpy(np.ascontiguousarray(batch["x"][part], dtype=np.int64)),
            "y": torch.from_numpy(np.ascontiguousarray(batch["y"][part], dtype=np.int64)),
            # each label's share of the global mean loss
            "weight": torch.from_numpy(np.ascontiguousarray(mask[part], dtype=np.float32) / n_loss),
            "source": torch.from_numpy(np.ascontiguousarray(batch["source"][part], dtype=np.int64)),
        }


def steps_per_pass(data: MixtureTokens, batch_size: int, block_size: int, batching: str) -> int:
    """Global batches in one pass over the mixture: its rows (pad) or its labels (pack), the last batch short."""
    if batching == "pad":
        return -(-data.rows // batch_size)
    return max(1, -(-(len(data.tokens) - 1) // (batch_size * block_size)))


def make_loader(batches: MixtureBatches, start: int, stop: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches `start .. stop-1` in order; workers build them ahead, each batch a pure function of its index.

    Workers are spawned, not forked: under a Prefect flow or a Dask worker the
    process has event-loop and logging threads that a forked child inherits in
    an undefined state (it then dies at exit). The loader draws its workers' base
    seed from a generator of its own: from torch's global one, that draw would shift
    the dropout masks of a resumed run against an uninterrupted one.
    """
    return DataLoader(
        batches,
        batch_size=None,
        generator=torch.Generator().manual_seed(0),
        sampler=range(start, stop),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        multiprocessing_context="spawn" if num_workers else None,
    )


def stream_stats(data: MixtureTokens, first_row: int, stop_row: int) -> dict[str, float | int]:
    """Examples seen, unique examples seen (by source and source row) and epoch once a batch is done.

    Rows are unwrapped stream positions. The epoch counts passes over the mixture's distinct
    examples completed before the batch started: a mixture that shows each of 200 rows 4 times
    is 4 epochs in one pass (the repeats are where memorisation shows).
    """
    return {
        "examples": int(stop_row),
        "unique_examples": int(data.unique_before[min(stop_row, data.rows)]),
        "epoch": first_row / max(data.distinct, 1),
    }


def env_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment (0, 1 outside it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))



# --- reading a mixture -----------------------------------------------------------

# Columns the trainer reads from a mixture (the token columns only when it is pre-tokenised).
READ_COLUMNS = ("position", "source", "phase", "source_row", "text", "format", "target_start")
READ_TOKEN_COLUMNS = ("input_ids", "target_token_start")


@dataclass(frozen=True)
class SourceRef:
    """A mixture source: its name in the `source` column and its dataset directory (held-out docs live there)."""

    name: str
    path: str
    where: str | None = None  # the recipe's row selection: the probes take the held-out rows it selects


def open_mixture(data_dir: str | os.PathLike[str]) -> tuple[pa.Table, list[SourceRef], dict[str, Any]]:
    """All rows of a mixture in training order (through `MixtureReader`), its sources and its manifest."""
    reader = MixtureReader(data_dir)
    wanted = [c for c in (*READ_COLUMNS, *READ_TOKEN_COLUMNS) if c in reader.columns]
    table = reader.rows(0, len(reader), columns=wanted)
    sources = [SourceRef(s.name, str(s.path), s.where) for s in reader.sources]
    return table, sources, reader.manifest.to_json_dict()


def source_documents(source: SourceRef) -> pa.Table | None:
    """A source's documents with their `split`, those its recipe's `where` selects (None when
    the source has no directory): a source of Python files is probed on Python files."""
    if not source.path:
        return None
    columns = ["text", "format", "target_start", "split"]
    if source.where is None:
        return load_table(source.path, columns=columns)
    expression = where_expression(source.where)  # the mixture evaluated it on these very shards
    table = load_table(source.path, columns=list(dict.fromkeys([*columns, *expression.meta.root_names()])))
    return table.filter(where_mask(table, expression)).select(columns)


# --- tokenizer for a mixture without pre-tokenised ids ---------------------------------


# Characters of training text a tokenizer is built from (the first rows up to this many).
RUN_TOKENIZER_CHARS = 50_000_000


def _sample(texts: pa.ChunkedArray) -> pa.Array:
    """The first rows of `texts` holding about `RUN_TOKENIZER_CHARS` characters."""
    array = texts.combine_chunks()
    lengths = pc.utf8_length(array).to_numpy(zero_copy_only=False)
    rows = int(np.searchsorted(np.cumsum(lengths), RUN_TOKENIZER_CHARS)) + 1
    return array.slice(0, rows)


def alphabet(texts: pa.Array) -> str:
    """The distinct characters of `texts`, sorted."""
    chars = pl.Series(texts).cast(pl.String).str.split("").explode().unique().drop_nulls()
    return "".join(sorted(c for c in chars.to_list() if c))


def build_tokenizer_for(texts: pa.ChunkedArray, config: TokenizerConfig) -> Tokenizer:
    """A char tokenizer for small-alphabet (synthetic) text, byte-level BPE otherwise (`kind: auto`).

    Both are built from a prefix of the training text (`RUN_TOKENIZER_CHARS`);
    a character outside it maps to <unk> under the char tokenizer.
    """
    sample = _sample(texts)
    kind = config.kind
    chars = alphabet(sample) if kind != "bpe" else ""
    if kind == "auto":
        kind = "char" if len(chars) <= config.char_max_alphabet else "bpe"
    if kind == "char":
        return char_tokenizer(alphabet=chars)
    return train_bpe((sample[i].as_py() for i in range(len(sample))), config.vocab_size)


def eos_id(tokenizer: Tokenizer) -> int:
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise DiffmixError(f"tokenizer: no {EOS!r} token")
    return eos
