"""Where a table's ids come from when a backend runs it.

Measuring backends never invent ids themselves: they ask :func:`table_ids` for one batch
of a table's ids, seeded per table so that every backend and every process sees the same
ids for the same table and seed. A table with a data source (``TableSpec.source``) gets
real ids from its DLRM dataset file, resampled to the batch size
(:func:`dreamshard.data.dlrm.source_ids`); any other table gets ids generated from its
statistics (:func:`dreamshard.data.synthetic.generate_ids`).
"""

from __future__ import annotations

import zlib

import numpy as np

from dreamshard.data.dlrm import source_ids
from dreamshard.data.synthetic import generate_ids
from dreamshard.types import TableSpec


def table_seed(seed: int, table: TableSpec) -> int:
    """The per-table seed derived from a run's seed and the table's name."""
    return zlib.crc32(f"{seed}:{table.name}".encode())


def table_ids(table: TableSpec, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch of ``table``'s ids: ``(indices, offsets)`` in FBGEMM layout.

    Raises:
        InputError: The table's data file is missing or malformed.
    """
    if table.source is not None:
        return source_ids(table, batch_size, table_seed(seed, table))
    return generate_ids(table, batch_size, table_seed(seed, table))
