"""Where a table's ids come from when a backend runs it.

Measuring backends never invent ids themselves: they ask :func:`table_ids` for one batch
of a table's ids, seeded per table so that every backend and every process sees the same
ids for the same table and seed. A table with a data source (``TableSpec.source``) gets
real ids from its DLRM dataset file, resampled to the batch size
(:func:`dreamshard.data.dlrm.source_ids`); any other table gets ids generated from its
statistics (:func:`dreamshard.data.synthetic.generate_ids`).

A shard's ids are its table's: a column shard looks up exactly the table's ids; a row
shard looks up the table's ids that fall in its row range, shifted to start at 0, in the
same bags (TorchRec's row-wise input distribution), so its lookups follow the table's
access distribution, skew included.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from dreamshard.data.dlrm import source_ids
from dreamshard.data.synthetic import generate_ids
from dreamshard.types import TableSpec


def table_seed(seed: int, table: TableSpec) -> int:
    """The per-table seed derived from a run's seed and the table's name."""
    return zlib.crc32(f"{seed}:{table.name}".encode())


def table_ids(table: TableSpec, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch of ``table``'s ids: ``(indices, offsets)`` in FBGEMM layout.

    A shard that runs with fewer rows than it holds (a measuring backend's row cap) folds
    its ids into the rows it has (``id % rows``).

    Raises:
        InputError: The table's data file is missing or malformed.
    """
    part = table.shard
    if part is None:
        return _whole_ids(table, batch_size, seed)
    if part.kind == "column":
        # The table's ids; under a row cap, those of the table capped the same way.
        whole = (
            part.table if table.rows == part.table.rows else replace(part.table, rows=table.rows)
        )
        return _whole_ids(whole, batch_size, seed)
    indices, offsets = _whole_ids(part.table, batch_size, seed)
    inside = (indices >= part.offset) & (indices < part.offset + part.size)
    # Bag b keeps its ids inside the range: new offsets count them per bag.
    kept = np.concatenate(([0], np.cumsum(inside))).astype(np.int64)
    shard_indices = indices[inside] - part.offset
    if table.rows < part.size:
        shard_indices %= table.rows
    return shard_indices.astype(np.int64), kept[offsets]


def _whole_ids(table: TableSpec, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if table.source is not None:
        return source_ids(table, batch_size, table_seed(seed, table))
    return generate_ids(table, batch_size, table_seed(seed, table))
