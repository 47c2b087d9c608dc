"""Real ids: Meta's public DLRM embedding dataset files, read, checked and turned into tables.

A file of the dataset (github.com/facebookresearch/dlrm_datasets; see
shared/data/dlrm_dataset_stats.md) holds one batch of ids of many tables::

    indices, offsets, lengths = torch.load(path)
    # lengths [tables, batch]: ids per (table, sample) bag
    # offsets [tables * batch + 1]: prefix sum over the flattened bags
    # indices [offsets[-1]]: all ids; table t's are indices[offsets[t*B] : offsets[(t+1)*B]]

Files may be gzip-compressed (``.pt.gz``, the 2022 release). :func:`load_dlrm_file`
validates a file and keeps the last few loaded (they are large; uncompressed files
are memory-mapped, compressed ones decompressed to a temporary file in ``TMPDIR`` and
mapped); :func:`tables_from_dlrm`
derives each table's 21 features as the DreamShard authors did (rows = max id + 1, at
least 100; pooling factor = mean bag length; access histogram of one batch) and points the
table at its ids (``TableSpec.source``), so that the measuring backends feed them real ids
(:func:`source_ids`, called by ids.table_ids) instead of generated ones.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamshard.errors import InputError
from dreamshard.types import IntArray, TableSpec

log = logging.getLogger(__name__)

#: Loaded files kept in memory (a 2021 release file holds several GB of ids).
CACHED_FILES = 2

#: The public files' names say their shape: ``fbgemm_t856_bs65536_0.pt``.
_NAME_SHAPE = re.compile(r"_t(\d+)_bs(\d+)")

_GZIP_MAGIC = b"\x1f\x8b"
_COPY_CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class DlrmBatch:
    """One validated DLRM dataset file: a batch of ids of ``num_tables`` tables.

    Attributes:
        path: The file, resolved.
        indices: All ids, int64, ``[offsets[-1]]``.
        offsets: Bag offsets, int64, ``[num_tables * batch_size + 1]``, table-major.
        num_tables: Tables in the file.
        batch_size: Samples (bags per table).
    """

    path: str
    indices: torch.Tensor
    offsets: torch.Tensor
    num_tables: int
    batch_size: int

    def table_ids(self, table: int) -> tuple[IntArray, IntArray]:
        """Table ``table``'s ``(indices, offsets)`` (FBGEMM layout, offsets from 0), int64.

        Raises:
            InputError: No such table in the file.
        """
        if not 0 <= table < self.num_tables:
            raise InputError(
                f"{self.path}: no table {table} (the file has tables 0..{self.num_tables - 1})"
            )
        bags = self.offsets[table * self.batch_size : (table + 1) * self.batch_size + 1].numpy()
        start, end = int(bags[0]), int(bags[-1])
        indices = self.indices[start:end].numpy().astype(np.int64, copy=True)
        return indices, (bags - start).astype(np.int64)


_cache: OrderedDict[tuple[str, int, int], DlrmBatch] = OrderedDict()


def load_dlrm_file(path: str | Path) -> DlrmBatch:
    """Read and validate a DLRM dataset file (``.pt`` or gzip-compressed ``.pt.gz``).

    The last ``CACHED_FILES`` files loaded stay in memory, keyed by path, size and
    modification time. Loading uses ``torch.load(weights_only=True)``: a file that holds
    anything but tensors is refused rather than executed. Uncompressed files are
    memory-mapped.

    Raises:
        InputError: One line naming the file and what is wrong: not found, not a torch
            file, not three integer tensors, shapes that disagree (tables x batch),
            offsets that do not match the lengths, or negative ids.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    resolved = source.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    batch = _validate(source, _read(source))
    _cache[key] = batch
    while len(_cache) > CACHED_FILES:
        _cache.popitem(last=False)
    return batch


def _read(source: Path) -> Any:
    """The unpickled payload; gzip files are decompressed to a temporary file first."""
    with source.open("rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    try:
        if not compressed:
            return _load(source)
        # A 2022 file holds ~11 GB of ids: decompress to disk (TMPDIR) and map it rather
        # than hold the bytes and the tensors in memory at once. The mapping outlives
        # the file's deletion.
        with tempfile.NamedTemporaryFile(suffix=".pt") as plain:
            with gzip.open(source, "rb") as packed:
                shutil.copyfileobj(packed, plain, _COPY_CHUNK_BYTES)
            plain.flush()
            return _load(Path(plain.name))
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        zipfile.BadZipFile,
    ) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        # torch's refusal goes on about its weights_only default; its first sentence says it.
        reason = reason.split(". ")[0]
        raise InputError(f"{source}: not a readable torch file ({reason})") from None


def _load(path: Path) -> Any:
    mmap = zipfile.is_zipfile(path)  # only the zip format (torch >= 1.6) can be mapped
    # torch warns about the pickle protocol of a file it is about to refuse; the refusal
    # is the one line the user needs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _validate(source: Path, payload: Any) -> DlrmBatch:
    """Check the loaded object is ``(indices, offsets, lengths)`` as the dataset defines it."""
    if not isinstance(payload, tuple | list) or len(payload) != 3:
        what = f"a {type(payload).__name__}"
        if isinstance(payload, tuple | list):
            what += f" of {len(payload)} items"
        raise InputError(
            f"{source}: expected (indices, offsets, lengths) as saved by torch.save, got {what}"
        )
    for name, value in zip(("indices", "offsets", "lengths"), payload, strict=True):
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{source}: {name} must be a tensor, got {type(value).__name__}")
        if not _is_integer(value):
            raise InputError(f"{source}: {name} must hold integers, got dtype {value.dtype}")
    indices, offsets, lengths = payload
    if lengths.dim() != 2 or lengths.shape[0] < 1 or lengths.shape[1] < 1:
        raise InputError(
            f"{source}: lengths must have shape [tables, batch] with both >= 1, "
            f"got {list(lengths.shape)}"
        )
    num_tables, batch_size = (int(n) for n in lengths.shape)
    named = _NAME_SHAPE.search(source.name)
    if named and (int(named[1]), int(named[2])) != (num_tables, batch_size):
        raise InputError(
            f"{source}: the file name says {named[1]} tables x batch {named[2]} but lengths "
            f"is [{num_tables}, {batch_size}]"
        )
    if indices.dim() != 1:
        raise InputError(f"{source}: indices must be 1-D, got shape {list(indices.shape)}")
    expected = num_tables * batch_size + 1
    if offsets.dim() != 1 or offsets.numel() != expected:
        raise InputError(
            f"{source}: offsets must be 1-D with tables x batch + 1 = {expected} entries "
            f"(lengths is [{num_tables}, {batch_size}]), got shape {list(offsets.shape)}"
        )
    offsets = offsets.to(torch.int64)
    flat_lengths = lengths.reshape(-1).to(torch.int64)
    if int(offsets[0]) != 0:
        raise InputError(f"{source}: offsets must start at 0, got {int(offsets[0])}")
    negative = flat_lengths < 0
    if bool(negative.any()):
        table, sample = divmod(int(negative.nonzero()[0, 0]), batch_size)
        raise InputError(f"{source}: negative length at table {table}, sample {sample}")
    mismatch = (offsets[1:] - offsets[:-1]) != flat_lengths
    if bool(mismatch.any()):
        table, sample = divmod(int(mismatch.nonzero()[0, 0]), batch_size)
        raise InputError(
            f"{source}: offsets do not match lengths (first at table {table}, sample {sample}: "
            f"offsets must be the prefix sum of the flattened lengths)"
        )
    if int(offsets[-1]) != indices.numel():
        raise InputError(
            f"{source}: offsets end at {int(offsets[-1])} but there are {indices.numel()} indices"
        )
    if indices.numel() and int(indices.min()) < 0:
        position = int((indices < 0).nonzero()[0, 0])
        table = int(torch.searchsorted(offsets, position, right=True)) - 1
        raise InputError(
            f"{source}: negative id {int(indices[position])} in table {table // batch_size}"
        )
    return DlrmBatch(
        path=str(source),
        indices=indices if indices.dtype == torch.int64 else indices.to(torch.int64),
        offsets=offsets,
        num_tables=num_tables,
        batch_size=batch_size,
    )


def resample_bags(
    indices: IntArray, offsets: IntArray, batch_size: int, seed: int
) -> tuple[IntArray, IntArray]:
    """One table's bags brought to ``batch_size`` samples, deterministically by ``seed``.

    The same number of bags is returned unchanged. Fewer: a uniformly random subset of
    the bags, without repetition, in their original order. More: every bag ``batch_size //
    n`` times, then a random subset for the rest (repeating bags keeps the distribution
    of bag lengths and ids, but a real batch that large would touch more distinct rows).

    Args:
        indices: The table's ids of all its bags.
        offsets: Its bag offsets, ``n + 1`` entries from 0.
        batch_size: Samples wanted.
        seed: Seed of the choice of bags.

    Returns:
        ``(indices, offsets)`` of ``batch_size`` bags (FBGEMM layout).
    """
    num_bags = len(offsets) - 1
    if batch_size == num_bags:
        return indices, offsets
    rng = np.random.default_rng(seed)
    repeats, rest = divmod(batch_size, num_bags)
    extra = np.sort(rng.choice(num_bags, size=rest, replace=False))
    bags = np.concatenate([np.tile(np.arange(num_bags), repeats), extra])
    lengths = np.diff(offsets)[bags]
    new_offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    # Id positions of each chosen bag: its start plus 0..length-1.
    starts = np.repeat(offsets[bags] - new_offsets[:-1], lengths)
    positions = starts + np.arange(int(new_offsets[-1]), dtype=np.int64)
    return indices[positions], new_offsets


def source_ids(table: TableSpec, batch_size: int, seed: int) -> tuple[IntArray, IntArray]:
    """One batch of real ids of a table with a data source (called by ids.table_ids).

    The table's bags are resampled to ``batch_size`` (:func:`resample_bags`). Ids at or
    beyond ``table.rows`` (a table run with fewer rows, e.g. under the fbgemm backend's
    row cap) are folded into range modulo ``table.rows``, as a smaller hash size would.

    Raises:
        InputError: The table has no source, or its file is missing, malformed or has no
            such table.
    """
    if table.source is None:
        raise InputError(f"table {table.name!r} has no data source")
    batch = load_dlrm_file(table.source.file)
    indices, offsets = batch.table_ids(table.source.table)
    indices, offsets = resample_bags(indices, offsets, batch_size, seed)
    if indices.size and int(indices.max()) >= table.rows:
        indices = indices % table.rows
    return indices, offsets


def parse_table_selection(text: str, num_tables: int) -> list[int]:
    """``"0-99"``, ``"3,5,7-9"`` -> sorted distinct table indices, each below ``num_tables``.

    Raises:
        InputError: Malformed text or an index out of range.
    """
    chosen: set[int] = set()
    for part in text.split(","):
        bounds = part.strip().split("-")
        try:
            values = [int(b) for b in bounds]
        except ValueError:
            raise InputError(f"--tables: expected N, N-M or a comma list, got {text!r}") from None
        if len(values) not in (1, 2) or values[0] < 0 or values[-1] < values[0]:
            raise InputError(f"--tables: bad range {part.strip()!r} in {text!r}")
        if values[-1] >= num_tables:
            raise InputError(
                f"--tables: table {values[-1]} does not exist (the file has tables "
                f"0..{num_tables - 1})"
            )
        chosen.update(range(values[0], values[-1] + 1))
    return sorted(chosen)
