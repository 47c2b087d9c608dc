"""Table files: reading and writing pools of tables (JSON and CSV), with validation.

Schema (one record per table; see docs/table-files.md):

=================  ========  ===================================================
field              required  meaning
=================  ========  ===================================================
name               yes       unique table name
rows               yes       number of rows (integer > 0)
dim                yes       embedding dimension (integer > 0, multiple of 4)
pooling_factor     yes       mean ids per sample (> 0)
access_bin_0..16   yes       17 access-histogram fractions (>= 0, sum to 1)
dtype              no        "fp32" (default) or "fp16"
source_file        no        DLRM dataset file with the table's real ids
source_table       no        index of the table in that file (with source_file)
=================  ========  ===================================================

A table with ``source_file``/``source_table`` is measured on its real ids (dlrm_data.py);
a relative ``source_file`` in a table file is relative to the table file's folder. CSV
files have the two source columns only when some table has a source.

JSON files hold ``{"tables": [...]}`` where each record may give the histogram either as
``access_bin_0``..``access_bin_16`` or as one list ``access_hist``. CSV files have a
header row with the column names above.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dreamshard.constants import BYTES_PER_ELEMENT, DIM_MULTIPLE, NUM_ACCESS_BINS
from dreamshard.errors import InputError
from dreamshard.fileio import atomic_write_text, read_json, write_json
from dreamshard.types import DataSource, TableSpec

BIN_FIELDS: tuple[str, ...] = tuple(f"access_bin_{k}" for k in range(NUM_ACCESS_BINS))
REQUIRED_FIELDS: tuple[str, ...] = ("name", "rows", "dim", "pooling_factor")
OPTIONAL_FIELDS: tuple[str, ...] = ("dtype",)
CSV_COLUMNS: tuple[str, ...] = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS, *BIN_FIELDS)
#: Optional fields that point a table at real ids (types.DataSource); both or neither.
SOURCE_FIELDS: tuple[str, ...] = ("source_file", "source_table")

#: Histogram fractions may be rounded in files; they must sum to 1 within this.
HIST_SUM_TOLERANCE = 1e-3


def _number(where: str, field: str, raw: Any) -> float:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InputError(f"{where}: field {field!r} is missing")
    if isinstance(raw, bool):
        raise InputError(f"{where}: field {field!r} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InputError(f"{where}: field {field!r} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: field {field!r} must be finite, got {raw!r}")
    return value


def _positive_int(where: str, field: str, raw: Any) -> int:
    value = _number(where, field, raw)
    if value <= 0:
        raise InputError(f"{where}: field {field!r} must be positive, got {raw!r}")
    if value != int(value):
        raise InputError(f"{where}: field {field!r} must be an integer, got {raw!r}")
    return int(value)


def table_from_record(record: Mapping[str, Any], where: str) -> TableSpec:
    """Validate one table record and build its TableSpec.

    Args:
        record: Field name -> value, as read from a file.
        where: Location for error messages, e.g. ``"pool.csv: line 3"``.

    Raises:
        InputError: naming ``where``, the table and the field.
    """
    name_raw = record.get("name")
    if name_raw is None or not str(name_raw).strip():
        raise InputError(f"{where}: field 'name' is missing")
    name = str(name_raw).strip()
    where = f"{where} (table {name!r})"

    allowed = {*REQUIRED_FIELDS, *OPTIONAL_FIELDS, *BIN_FIELDS, *SOURCE_FIELDS, "access_hist"}
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r}")

    rows = _positive_int(where, "rows", record.get("rows"))
    dim = _positive_int(where, "dim", record.get("dim"))
    if dim % DIM_MULTIPLE:
        raise InputError(
            f"{where}: field 'dim' must be a multiple of {DIM_MULTIPLE} for FBGEMM, got {dim}"
        )
    pooling = _number(where, "pooling_factor", record.get("pooling_factor"))
    if pooling <= 0:
        raise InputError(f"{where}: field 'pooling_factor' must be positive, got {pooling}")

    dtype_raw = record.get("dtype")
    dtype = "fp32" if dtype_raw is None or str(dtype_raw).strip() == "" else str(dtype_raw)
    if dtype not in BYTES_PER_ELEMENT:
        raise InputError(
            f"{where}: field 'dtype' must be one of {sorted(BYTES_PER_ELEMENT)}, got {dtype!r}"
        )

    hist = _histogram(record, where)
    return TableSpec(
        name=name,
        rows=rows,
        dim=dim,
        pooling_factor=pooling,
        access_hist=hist,
        dtype=dtype,
        source=_source(record, where),
    )


def _source(record: Mapping[str, Any], where: str) -> DataSource | None:
    """The table's data source from ``source_file``/``source_table`` (empty = absent)."""
    given = {f: record.get(f) for f in SOURCE_FIELDS if record.get(f) not in (None, "")}
    if not given:
        return None
    if len(given) == 1:
        missing = next(f for f in SOURCE_FIELDS if f not in given)
        raise InputError(f"{where}: field {missing!r} is missing (give both source fields)")
    if not isinstance(given["source_file"], str):
        raise InputError(f"{where}: field 'source_file' must be a path string")
    index = _number(where, "source_table", given["source_table"])
    if index < 0 or index != int(index):
        raise InputError(
            f"{where}: field 'source_table' must be a table index >= 0, "
            f"got {given['source_table']!r}"
        )
    return DataSource(file=given["source_file"], table=int(index))


def _histogram(record: Mapping[str, Any], where: str) -> tuple[float, ...]:
    if "access_hist" in record:
        if any(f in record for f in BIN_FIELDS):
            raise InputError(f"{where}: give either 'access_hist' or access_bin_* fields, not both")
        raw = record["access_hist"]
        if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != NUM_ACCESS_BINS:
            raise InputError(
                f"{where}: field 'access_hist' must be a list of {NUM_ACCESS_BINS} numbers"
            )
        values = [_number(where, f"access_hist[{k}]", v) for k, v in enumerate(raw)]
        names = [f"access_hist[{k}]" for k in range(NUM_ACCESS_BINS)]
    else:
        values = [_number(where, f, record.get(f)) for f in BIN_FIELDS]
        names = list(BIN_FIELDS)
    for field, value in zip(names, values, strict=True):
        if value < 0:
            raise InputError(f"{where}: field {field!r} must be >= 0, got {value}")
    total = sum(values)
    if abs(total - 1.0) > HIST_SUM_TOLERANCE:
        raise InputError(f"{where}: access histogram must sum to 1, sums to {total:.6g}")
    # Renormalise only real rounding, so a saved histogram loads back bit for bit.
    return tuple(values) if abs(total - 1.0) < 1e-9 else tuple(v / total for v in values)


def _check_unique(tables: Sequence[TableSpec], where: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for table, loc in zip(tables, where, strict=True):
        if table.name in seen:
            raise InputError(
                f"{loc}: duplicate table name {table.name!r} (first at {seen[table.name]})"
            )
        seen[table.name] = loc


def table_to_record(table: TableSpec) -> dict[str, Any]:
    """The file record of a table (flat, CSV-compatible field names)."""
    record: dict[str, Any] = {
        "name": table.name,
        "rows": table.rows,
        "dim": table.dim,
        "pooling_factor": table.pooling_factor,
        "dtype": table.dtype,
    }
    record.update({f: v for f, v in zip(BIN_FIELDS, table.access_hist, strict=True)})
    if table.source is not None:
        record.update(source_file=table.source.file, source_table=table.source.table)
    return record


def load_tables(path: str | Path) -> list[TableSpec]:
    """Read a table file (``.json`` or ``.csv``) and validate every record.

    Raises:
        InputError: a missing file, unknown format, or the first bad record, naming the
            file, its line (CSV) or position (JSON), the table and the field.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InputError(f"{source}: unknown table file format {suffix!r} (use .json or .csv)")
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    if suffix == ".json":
        tables = tables_from_json(read_json(source), str(source))
    else:
        tables = _load_csv(source)
    return [_resolve_source(t, source.parent) for t in tables]


def _resolve_source(table: TableSpec, folder: Path) -> TableSpec:
    """``table`` with a relative source file made absolute against ``folder``."""
    if table.source is None or Path(table.source.file).is_absolute():
        return table
    resolved = DataSource(
        file=str((folder / table.source.file).resolve()), table=table.source.table
    )
    return replace(table, source=resolved)


def tables_from_json(payload: Any, where: str) -> list[TableSpec]:
    """Validate the ``{"tables": [...]}`` payload of a JSON table file."""
    records = payload.get("tables") if isinstance(payload, dict) else None
    if not isinstance(records, list):
        raise InputError(f"{where}: expected an object with a 'tables' list")
    if not records:
        raise InputError(f"{where}: 'tables' is empty")
    tables, locations = [], []
    for i, record in enumerate(records):
        loc = f"{where}: tables[{i}]"
        if not isinstance(record, dict):
            raise InputError(f"{loc}: expected an object, got {type(record).__name__}")
        tables.append(table_from_record(record, loc))
        locations.append(loc)
    _check_unique(tables, locations)
    return tables


def _load_csv(source: Path) -> list[TableSpec]:
    try:
        text = source.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if not header:
        raise InputError(f"{source}: empty file (expected a header row)")
    unknown = [c for c in header if c not in (*CSV_COLUMNS, *SOURCE_FIELDS)]
    if unknown:
        raise InputError(f"{source}: line 1: unknown column {unknown[0]!r}")
    missing = [c for c in (*REQUIRED_FIELDS, *BIN_FIELDS) if c not in header]
    if missing:
        raise InputError(f"{source}: line 1: missing column {missing[0]!r}")
    tables, locations = [], []
    for row in reader:
        loc = f"{source}: line {reader.line_num}"
        if None in row:
            raise InputError(f"{loc}: more values than columns")
        tables.append(table_from_record(row, loc))
        locations.append(loc)
    if not tables:
        raise InputError(f"{source}: no tables (only a header row)")
    _check_unique(tables, locations)
    return tables


def save_tables(path: str | Path, tables: Sequence[TableSpec]) -> None:
    """Write tables as ``.json`` or ``.csv`` (by suffix), atomically."""
    target = Path(path)
    suffix = target.suffix.lower()
    records = [table_to_record(t) for t in tables]
    if suffix == ".json":
        write_json(target, {"tables": records})
    elif suffix == ".csv":
        buffer = io.StringIO()
        columns = [*CSV_COLUMNS, *(SOURCE_FIELDS if any(t.source for t in tables) else ())]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(target, buffer.getvalue())
    else:
        raise InputError(f"{target}: unknown table file format {suffix!r} (use .json or .csv)")
