"""Tables described from a DLRM dataset file (``dreamshard tables-from-data``).

Above :mod:`dreamshard.data.ids`: a table's statistics are taken from the very ids the
backends will feed it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dreamshard.constants import DEFAULT_BATCH_SIZE, DEFAULT_SEED
from dreamshard.data.dlrm import load_dlrm_file
from dreamshard.data.features import MIN_ROWS_FROM_IDS, table_from_ids
from dreamshard.data.ids import table_ids
from dreamshard.errors import InputError
from dreamshard.types import DataSource, TableSpec


def tables_from_dlrm(
    path: str | Path,
    tables: Sequence[int] | None = None,
    dim: int = 16,
    dtype: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    progress: Callable[[int, int], None] | None = None,
) -> list[TableSpec]:
    """Table specs (the 21 features) of tables of a DLRM dataset file, with their source.

    Per table, as the DreamShard authors did: rows = max id + 1 but at least
    ``MIN_ROWS_FROM_IDS``; pooling factor = mean bag length over the whole file. The access
    histogram describes one batch of ``batch_size`` samples (the batch at which the package's
    histograms are defined and its backends measure), taken from the file's bags exactly as
    the backends will take them with this seed (:func:`dreamshard.data.ids.table_ids`). Names are
    ``<file stem>_t<index>``.

    Args:
        path: The dataset file.
        tables: Indices of the tables to take; None takes all.
        dim: Embedding dim of every table (the files hold no dims), a multiple of 4.
        dtype: Training precision of the weights.
        batch_size: Samples of the batch the histogram describes.
        seed: Seed the backends will use (the batch is resampled with it).
        progress: Called with (done, total) tables.

    Raises:
        InputError: A bad file, a missing table, a table without ids or a bad dim.
    """
    data = load_dlrm_file(path)
    chosen = list(range(data.num_tables)) if tables is None else list(tables)
    stem = Path(data.path).name.split(".")[0]
    resolved = str(Path(data.path).resolve())
    out = []
    for done, index in enumerate(chosen, start=1):
        indices, _ = data.table_ids(index)
        name = f"{stem}_t{index}"
        if indices.size == 0:
            raise InputError(
                f"{data.path}: table {index} has no ids in its {data.batch_size} samples; "
                f"leave it out with --tables"
            )
        rows = max(int(indices.max()) + 1, MIN_ROWS_FROM_IDS)
        source = DataSource(file=resolved, table=index)
        placeholder = TableSpec(name, rows, dim, 1.0, (1.0,) + (0.0,) * 16, dtype, source)
        sample_ids, sample_offsets = table_ids(placeholder, batch_size, seed)
        try:
            spec = table_from_ids(name, sample_ids, sample_offsets, rows=rows, dim=dim, dtype=dtype)
        except ValueError as err:
            raise InputError(f"{data.path}: table {index}: {err}") from None
        out.append(replace(spec, pooling_factor=indices.size / data.batch_size, source=source))
        if progress is not None:
            progress(done, len(chosen))
    return out
