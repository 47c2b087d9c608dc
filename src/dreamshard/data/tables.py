"""Table files: reading and writing pools of tables (JSON and CSV), with validation.

Schema (one record per table; see the README section "Table files"):

=================  ========  ===================================================
field              required  meaning
=================  ========  ===================================================
name               yes       unique table name (no control characters)
rows               yes       number of rows (integer > 0)
dim                yes       embedding dimension (integer > 0, multiple of 4)
pooling_factor     no        mean ids per sample (> 0); default 1.0
access_bin_0..16   no        17 access-histogram fractions (>= 0, sum to 1): all
                             17 or none; default below
dtype              no        "fp32" (default) or "fp16"
source_file        no        DLRM dataset file with the table's real ids
source_table       no        index of the table in that file (with source_file)
=================  ========  ===================================================

Numbers are plain decimal numbers in ASCII digits (``1000``, ``2.5``, ``1e6``): Python
would also read ``1_000`` and non-ASCII digits such as ``١٠٠``, which in a table file are
far more likely a typing or encoding slip than meant, so they are refused.

Defaults for tables without access statistics, so that a pool needs only ``name``,
``rows`` and ``dim``: a table without ``pooling_factor`` gets
:data:`DEFAULT_POOLING_FACTOR` (1.0, one id per sample, as TorchRec's planner assumes),
and a table without a histogram gets :func:`default_access_histograms`: the expected
histogram, at batch ``DEFAULT_BATCH_SIZE``, of ids that follow a Zipf law with exponent
:data:`DEFAULT_ZIPF_SKEW` (0.6, the middle of the synthetic pools' range, 0 to 1.2) over
the table's rows at its pooling factor. Real ids are rarely uniform, and a mid-range skew
errs less on either side than uniform or heavily skewed ids would. Reading a file whose
tables got defaults logs one warning naming the file and how many tables. A histogram is
given whole or not at all: some bins given and others missing is an error.

A table with ``source_file``/``source_table`` is measured on its real ids (dlrm_data.py);
a relative ``source_file`` in a table file is relative to the table file's folder. CSV
files have the two source columns only when some table has a source.

JSON files hold ``{"tables": [...]}`` where each record may give the histogram either as
``access_bin_0``..``access_bin_16`` or as one list ``access_hist``. CSV files have a
header row with the column names above, each once; ``name``, ``rows`` and ``dim`` are
the required columns, and the bin columns come all 17 or none. In a CSV with bin
columns, a row whose 17 bin cells are all empty gets the default histogram.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dreamshard.constants import (
    BYTES_PER_ELEMENT,
    DEFAULT_BATCH_SIZE,
    DIM_MULTIPLE,
    NUM_ACCESS_BINS,
)
from dreamshard.errors import InputError
from dreamshard.fileio import atomic_write_text, read_json, write_json
from dreamshard.types import DataSource, TableSpec

logger = logging.getLogger(__name__)

BIN_FIELDS: tuple[str, ...] = tuple(f"access_bin_{k}" for k in range(NUM_ACCESS_BINS))
REQUIRED_FIELDS: tuple[str, ...] = ("name", "rows", "dim")
OPTIONAL_FIELDS: tuple[str, ...] = ("pooling_factor", "dtype")
#: The columns ``save_tables`` writes (plus the source columns where a table has one).
CSV_COLUMNS: tuple[str, ...] = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS, *BIN_FIELDS)
#: Optional fields that point a table at real ids (types.DataSource); both or neither.
SOURCE_FIELDS: tuple[str, ...] = ("source_file", "source_table")

#: Histogram fractions may be rounded in files; they must sum to 1 within this.
HIST_SUM_TOLERANCE = 1e-3

#: Pooling factor of a table that gives none: one id per sample, TorchRec's own
#: planner default (``torchrec.distributed.planner.constants.POOLING_FACTOR``).
DEFAULT_POOLING_FACTOR = 1.0
#: Zipf exponent of the ids assumed for a table without an access histogram: the middle
#: of the synthetic pools' range (``dreamshard.data.synthetic.SKEW_RANGE``, 0 to 1.2).
DEFAULT_ZIPF_SKEW = 0.6
#: Tables per call when computing default histograms (bounds the temporary arrays of
#: ``expected_access_histograms`` to tens of MB; each table's result is independent).
_DEFAULT_HIST_CHUNK = 1024

#: A plain decimal number in ASCII, or an infinity/NaN word (refused later as not
#: finite, with that message). float() would also take "1_000" and non-ASCII digits.
_NUMBER_RE = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\s*",
    re.ASCII | re.IGNORECASE,
)


def default_access_histograms(
    rows: Sequence[int], pooling_factors: Sequence[float]
) -> list[tuple[float, ...]]:
    """The access histograms assumed for tables that give none.

    Each is the expected histogram, at batch ``DEFAULT_BATCH_SIZE``, of ids drawn from a
    Zipf law with exponent :data:`DEFAULT_ZIPF_SKEW` over the table's rows
    (``synthetic.expected_access_histograms``); a table's result does not depend on the
    other tables in the call.

    Args:
        rows: Rows of each table (>= 1).
        pooling_factors: Mean ids per sample of each table (> 0).

    Returns:
        One 17-bin histogram per table, each summing to 1.
    """
    from dreamshard.data.synthetic import expected_access_histograms

    hists: list[tuple[float, ...]] = []
    for start in range(0, len(rows), _DEFAULT_HIST_CHUNK):
        chunk = slice(start, start + _DEFAULT_HIST_CHUNK)
        r, pf = list(rows[chunk]), list(pooling_factors[chunk])
        expected = expected_access_histograms(
            r, pf, [DEFAULT_ZIPF_SKEW] * len(r), DEFAULT_BATCH_SIZE
        )
        hists.extend(tuple(float(v) for v in row) for row in expected)
    return hists


def _number(where: str, field: str, raw: Any) -> float:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InputError(f"{where}: field {field!r} is missing")
    if isinstance(raw, str) and not _NUMBER_RE.fullmatch(raw):
        hint = " in plain ASCII digits" if "_" in raw or not raw.isascii() else ""
        raise InputError(f"{where}: field {field!r} must be a number{hint}, got {raw!r}")
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


@dataclass(frozen=True)
class _Parsed:
    """A validated record; ``hist`` and ``pooling`` are None where the record has none."""

    name: str
    rows: int
    dim: int
    pooling: float | None
    hist: tuple[float, ...] | None
    dtype: str
    source: DataSource | None


def table_from_record(record: Mapping[str, Any], where: str) -> TableSpec:
    """Validate one table record and build its TableSpec.

    A record without ``pooling_factor`` or histogram gets the defaults of the module
    docstring (:data:`DEFAULT_POOLING_FACTOR`, :func:`default_access_histograms`).

    Args:
        record: Field name -> value, as read from a file.
        where: Location for error messages, e.g. ``"pool.csv: line 3"``.

    Raises:
        InputError: naming ``where``, the table and the field.
    """
    (table,), _ = _with_defaults([_parse_record(record, where)])
    return table


def _parse_record(record: Mapping[str, Any], where: str) -> _Parsed:
    name_raw = record.get("name")
    if name_raw is None or not str(name_raw).strip():
        raise InputError(f"{where}: field 'name' is missing")
    name = str(name_raw).strip()
    where = f"{where} (table {name!r})"
    # A newline or escape sequence in a name would break one-line messages and reports.
    if not all(ch == " " or ch.isprintable() for ch in name):
        raise InputError(f"{where}: field 'name' must not contain control characters")

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
    pooling: float | None = None
    if not _absent(record.get("pooling_factor")):
        pooling = _number(where, "pooling_factor", record.get("pooling_factor"))
        if pooling <= 0:
            raise InputError(f"{where}: field 'pooling_factor' must be positive, got {pooling}")

    dtype_raw = record.get("dtype")
    dtype = "fp32" if dtype_raw is None or str(dtype_raw).strip() == "" else str(dtype_raw)
    if dtype not in BYTES_PER_ELEMENT:
        raise InputError(
            f"{where}: field 'dtype' must be one of {sorted(BYTES_PER_ELEMENT)}, got {dtype!r}"
        )

    return _Parsed(
        name=name,
        rows=rows,
        dim=dim,
        pooling=pooling,
        hist=_histogram(record, where),
        dtype=dtype,
        source=_source(record, where),
    )


def _with_defaults(parsed: Sequence[_Parsed]) -> tuple[list[TableSpec], tuple[int, int]]:
    """The tables of ``parsed`` records, defaults filled in, and how many got them.

    Returns:
        The tables, and ``(tables without a histogram, tables without a pooling factor)``.
    """
    pooling = [DEFAULT_POOLING_FACTOR if p.pooling is None else p.pooling for p in parsed]
    need = [i for i, p in enumerate(parsed) if p.hist is None]
    defaults: dict[int, tuple[float, ...]] = {}
    if need:  # the Zipf model imports scipy, which files with histograms do not need
        hists = default_access_histograms(
            [parsed[i].rows for i in need], [pooling[i] for i in need]
        )
        defaults = dict(zip(need, hists, strict=True))
    tables = [
        TableSpec(
            name=p.name,
            rows=p.rows,
            dim=p.dim,
            pooling_factor=pooling[i],
            access_hist=defaults[i] if p.hist is None else p.hist,
            dtype=p.dtype,
            source=p.source,
        )
        for i, p in enumerate(parsed)
    ]
    return tables, (len(need), sum(p.pooling is None for p in parsed))


def _warn_defaults(where: str, total: int, counts: tuple[int, int]) -> None:
    """One warning line for a file whose tables got defaults (none if none did)."""
    no_hist, no_pooling = counts
    if not no_hist and not no_pooling:
        return
    parts = []
    if no_hist:
        parts.append(
            f"{no_hist} of {total} tables have no access histogram, "
            f"assumed Zipf({DEFAULT_ZIPF_SKEW}) ids"
        )
    if no_pooling:
        tables = "" if no_hist else " tables"
        parts.append(
            f"{no_pooling} of {total}{tables} have no pooling_factor, "
            f"assumed {DEFAULT_POOLING_FACTOR}"
        )
    logger.warning("%s: %s (see README 'Table files')", where, "; ".join(parts))


def _absent(raw: Any) -> bool:
    """Whether a field's value counts as not given (missing, null, or an empty cell)."""
    return raw is None or (isinstance(raw, str) and not raw.strip())


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


def _histogram(record: Mapping[str, Any], where: str) -> tuple[float, ...] | None:
    """The record's histogram, or None where it gives none (all bins absent or empty)."""
    if "access_hist" in record and record["access_hist"] is not None:
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
        given = [not _absent(record.get(f)) for f in BIN_FIELDS]
        if not any(given):
            return None
        if not all(given):
            missing = BIN_FIELDS[given.index(False)]
            raise InputError(
                f"{where}: field {missing!r} is missing "
                f"(give all {NUM_ACCESS_BINS} access_bin_* fields or none)"
            )
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


def _check_unique(tables: Sequence[_Parsed], where: Sequence[str]) -> None:
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
    if source.is_dir():
        raise InputError(f"{source}: is a folder, expected a table file")
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
    parsed, locations = [], []
    for i, record in enumerate(records):
        loc = f"{where}: tables[{i}]"
        if not isinstance(record, dict):
            raise InputError(f"{loc}: expected an object, got {type(record).__name__}")
        parsed.append(_parse_record(record, loc))
        locations.append(loc)
    return _finish(parsed, locations, where)


def _finish(parsed: Sequence[_Parsed], locations: Sequence[str], where: str) -> list[TableSpec]:
    """The file's tables: names checked unique, defaults filled in and warned about once."""
    _check_unique(parsed, locations)
    tables, counts = _with_defaults(parsed)
    _warn_defaults(where, len(tables), counts)
    return tables


def _load_csv(source: Path) -> list[TableSpec]:
    try:
        text = source.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
    except OSError as err:
        raise InputError(f"{source}: cannot read ({err.strerror or err})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if not header:
        raise InputError(f"{source}: empty file (expected a header row)")
    # DictReader keeps the last of two same-named columns and silently drops the first.
    twice = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if twice is not None:
        raise InputError(f"{source}: line 1: column {twice!r} appears twice")
    unknown = [c for c in header if c not in (*CSV_COLUMNS, *SOURCE_FIELDS)]
    if unknown:
        raise InputError(f"{source}: line 1: unknown column {unknown[0]!r}")
    missing = [c for c in REQUIRED_FIELDS if c not in header]
    if missing:
        raise InputError(f"{source}: line 1: missing column {missing[0]!r}")
    missing_bins = [c for c in BIN_FIELDS if c not in header]
    if missing_bins and len(missing_bins) < len(BIN_FIELDS):
        raise InputError(
            f"{source}: line 1: missing column {missing_bins[0]!r} "
            f"(give all {NUM_ACCESS_BINS} access_bin_* columns or none)"
        )
    parsed, locations = [], []
    for row in reader:
        loc = f"{source}: line {reader.line_num}"
        if None in row:
            raise InputError(f"{loc}: more values than columns")
        parsed.append(_parse_record(row, loc))
        locations.append(loc)
    if not parsed:
        raise InputError(f"{source}: no tables (only a header row)")
    return _finish(parsed, locations, str(source))


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
