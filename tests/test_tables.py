from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tables import (
    BIN_FIELDS,
    CSV_COLUMNS,
    load_tables,
    save_tables,
    table_to_record,
)
from dreamshard.errors import InputError
from dreamshard.types import TableSpec

#: A skewed 17-bin histogram whose floats do not sum to exactly 1.0.
HIST = (0.4, 0.3, 0.1, 0.1, 0.05, 0.05) + (0.0,) * 11


def good_records() -> list[dict[str, Any]]:
    """Three valid flat records (CSV column names), the second in fp16."""
    tables = [
        TableSpec("t0", rows=1000, dim=8, pooling_factor=2.5, access_hist=HIST),
        TableSpec("t1", rows=200, dim=16, pooling_factor=0.75, access_hist=HIST, dtype="fp16"),
        TableSpec("t2", rows=5000, dim=4, pooling_factor=1.0, access_hist=(1.0,) + (0.0,) * 16),
    ]
    return [table_to_record(t) for t in tables]


def write_csv(path: Path, records: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    cols = columns if columns is not None else list(CSV_COLUMNS)
    lines = [",".join(cols)]
    lines += [",".join("" if r.get(c) is None else str(r[c]) for c in cols) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_json(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"tables": records}, indent=2), encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(InputError) as err:
        load_tables(path)
    return str(err.value)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".csv", ".CSV"])
def test_round_trip_hand_made(tmp_path: Path, suffix: str) -> None:
    tables = [TableSpec(**_spec_kwargs(r)) for r in good_records()]
    path = tmp_path / f"pool{suffix}"
    save_tables(path, tables)
    assert load_tables(path) == tables


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip_synthetic_pool_is_exact(tmp_path: Path, suffix: str) -> None:
    # Synthetic histograms sum to 1 only up to float rounding; they must load back bit for bit.
    pool = generate_table_pool(num_tables=60, seed=0, max_rows=10000, dims=[4, 8, 16])
    path = tmp_path / f"pool{suffix}"
    save_tables(path, pool)
    assert load_tables(path) == pool
    save_tables(path, load_tables(path))
    assert load_tables(path) == pool


def test_csv_and_json_agree(tmp_path: Path) -> None:
    records = good_records()
    from_csv = load_tables(write_csv(tmp_path / "p.csv", records))
    from_json = load_tables(write_json(tmp_path / "p.json", records))
    assert from_csv == from_json
    assert [t.name for t in from_csv] == ["t0", "t1", "t2"]
    assert [t.dtype for t in from_csv] == ["fp32", "fp16", "fp32"]
    assert from_csv[1].size_bytes == 200 * 16 * 2


def test_save_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"pool\.txt: unknown table file format '\.txt'"):
        save_tables(tmp_path / "pool.txt", [TableSpec(**_spec_kwargs(good_records()[0]))])
    assert not (tmp_path / "pool.txt").exists()


def test_json_access_hist_list_form(tmp_path: Path) -> None:
    record = {"name": "a", "rows": 10, "dim": 4, "pooling_factor": 1, "access_hist": list(HIST)}
    (table,) = load_tables(write_json(tmp_path / "p.json", [record]))
    assert table == TableSpec("a", rows=10, dim=4, pooling_factor=1.0, access_hist=HIST)


def test_histogram_within_tolerance_is_normalised(tmp_path: Path) -> None:
    record = good_records()[0] | {"access_bin_0": 0.4005}  # sums to 1.0005 (tolerance 1e-3)
    (table,) = load_tables(write_csv(tmp_path / "p.csv", [record]))
    assert sum(table.access_hist) == pytest.approx(1.0, abs=1e-12)
    assert table.access_hist[0] == pytest.approx(0.4005 / 1.0005)


def test_optional_dtype_column_may_be_left_out(tmp_path: Path) -> None:
    cols = [c for c in CSV_COLUMNS if c != "dtype"]
    tables = load_tables(write_csv(tmp_path / "p.csv", good_records(), cols))
    assert [t.dtype for t in tables] == ["fp32", "fp32", "fp32"]


def test_csv_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", good_records())
    lines = path.read_text().splitlines()
    lines.insert(2, "")  # a blank line between the first and second records: t1 is on line 4
    path.write_text("\n".join(lines).replace(",200,16,", ",-200,16,") + "\n")
    assert re.search(
        r"p\.csv: line 4 \(table 't1'\): field 'rows' must be positive", error_of(path)
    )


def test_csv_utf8_bom_header(tmp_path: Path) -> None:
    # Spreadsheet programs write a byte-order mark before the header.
    path = write_csv(tmp_path / "p.csv", good_records())
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [t.name for t in load_tables(path)] == ["t0", "t1", "t2"]


# -- bad field values -------------------------------------------------------------------------

BAD_VALUES = [
    ("rows", None, "is missing"),
    ("rows", -5, "must be positive"),
    ("rows", 0, "must be positive"),
    ("rows", "abc", "must be a number"),
    ("rows", "nan", "must be finite"),
    ("rows", "inf", "must be finite"),
    ("rows", 2.5, "must be an integer"),
    ("dim", None, "is missing"),
    ("dim", -8, "must be positive"),
    ("dim", 0, "must be positive"),
    ("dim", "x8", "must be a number"),
    ("dim", "NaN", "must be finite"),
    ("dim", "-inf", "must be finite"),
    ("dim", 6, "must be a multiple of 4"),
    ("pooling_factor", -1.5, "must be positive"),
    ("pooling_factor", 0, "must be positive"),
    ("pooling_factor", "two", "must be a number"),
    ("pooling_factor", "nan", "must be finite"),
    ("pooling_factor", "inf", "must be finite"),
    ("dtype", "bf16", "must be one of"),
    ("access_bin_3", None, "is missing"),
    ("access_bin_3", "x", "must be a number"),
    ("access_bin_3", "nan", "must be finite"),
]


@pytest.mark.parametrize(("field", "value", "problem"), BAD_VALUES)
def test_csv_bad_value_names_file_line_table_field(
    tmp_path: Path, field: str, value: Any, problem: str
) -> None:
    records = good_records()
    records[1][field] = value  # header is line 1, t0 line 2, t1 line 3
    path = write_csv(tmp_path / "pool.csv", records)
    message = error_of(path)
    assert message.startswith(f"{path}: line 3 (table 't1'): field '{field}' ")
    assert problem in message


@pytest.mark.parametrize(("field", "value", "problem"), BAD_VALUES)
def test_json_bad_value_names_file_position_table_field(
    tmp_path: Path, field: str, value: Any, problem: str
) -> None:
    records = good_records()
    if value is None:
        del records[2][field]
    else:
        records[2][field] = float(value) if value in ("nan", "NaN", "inf", "-inf") else value
    path = write_json(tmp_path / "pool.json", records)
    message = error_of(path)
    assert message.startswith(f"{path}: tables[2] (table 't2'): field '{field}' ")
    assert problem in message


def test_json_bool_is_not_a_number(tmp_path: Path) -> None:
    records = good_records()
    records[0]["rows"] = True
    message = error_of(write_json(tmp_path / "p.json", records))
    assert "tables[0] (table 't0'): field 'rows' must be a number, got True" in message


@pytest.mark.parametrize("name", [None, "", "  "])
def test_missing_name(tmp_path: Path, name: str | None) -> None:
    records = good_records()
    records[1]["name"] = name
    path = write_csv(tmp_path / "p.csv", records)
    assert error_of(path) == f"{path}: line 3: field 'name' is missing"


def test_csv_unknown_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", good_records(), [*CSV_COLUMNS, "colour"])
    assert error_of(path) == f"{path}: line 1: unknown column 'colour'"


def test_csv_missing_column(tmp_path: Path) -> None:
    cols = [c for c in CSV_COLUMNS if c != "dim"]
    path = write_csv(tmp_path / "p.csv", good_records(), cols)
    assert error_of(path) == f"{path}: line 1: missing column 'dim'"


def test_csv_more_values_than_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", good_records())
    lines = path.read_text().splitlines()
    lines[2] += ",7"
    path.write_text("\n".join(lines) + "\n")
    assert error_of(path) == f"{path}: line 3: more values than columns"


def test_json_unknown_field(tmp_path: Path) -> None:
    records = good_records()
    records[1]["colour"] = "red"
    path = write_json(tmp_path / "p.json", records)
    assert error_of(path) == f"{path}: tables[1] (table 't1'): unknown field 'colour'"


def test_csv_duplicate_names(tmp_path: Path) -> None:
    records = good_records()
    records[2]["name"] = "t0"
    path = write_csv(tmp_path / "p.csv", records)
    assert error_of(path) == (
        f"{path}: line 4: duplicate table name 't0' (first at {path}: line 2)"
    )


def test_json_duplicate_names(tmp_path: Path) -> None:
    records = good_records()
    records[1]["name"] = "t0"
    path = write_json(tmp_path / "p.json", records)
    assert error_of(path) == (
        f"{path}: tables[1]: duplicate table name 't0' (first at {path}: tables[0])"
    )


# -- histograms -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_histogram_not_summing_to_one(tmp_path: Path, fmt: str) -> None:
    records = good_records()
    records[0]["access_bin_0"] = 0.5  # sums to 1.1
    path = (write_csv if fmt == "csv" else write_json)(tmp_path / f"p.{fmt}", records)
    message = error_of(path)
    where = "line 2" if fmt == "csv" else "tables[0]"
    assert message == f"{path}: {where} (table 't0'): access histogram must sum to 1, sums to 1.1"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_negative_bin(tmp_path: Path, fmt: str) -> None:
    records = good_records()
    records[0]["access_bin_6"] = -0.1
    records[0]["access_bin_7"] = 0.1  # still sums to 1
    path = (write_csv if fmt == "csv" else write_json)(tmp_path / f"p.{fmt}", records)
    assert "(table 't0'): field 'access_bin_6' must be >= 0, got -0.1" in error_of(path)


def _list_record(hist: Any) -> dict[str, Any]:
    return {"name": "a", "rows": 10, "dim": 4, "pooling_factor": 1, "access_hist": hist}


def test_json_access_hist_negative_bin(tmp_path: Path) -> None:
    hist = [*HIST]
    hist[6], hist[7] = -0.1, 0.1
    path = write_json(tmp_path / "p.json", [_list_record(hist)])
    assert "tables[0] (table 'a'): field 'access_hist[6]' must be >= 0" in error_of(path)


@pytest.mark.parametrize("hist", [[1.0] + [0.0] * 15, [1.0] + [0.0] * 17, "0.5,0.5", 1.0])
def test_json_access_hist_wrong_shape(tmp_path: Path, hist: Any) -> None:
    path = write_json(tmp_path / "p.json", [_list_record(hist)])
    assert "field 'access_hist' must be a list of 17 numbers" in error_of(path)


def test_json_access_hist_and_bins_both_given(tmp_path: Path) -> None:
    record = _list_record(list(HIST)) | {f: 0.0 for f in BIN_FIELDS}
    path = write_json(tmp_path / "p.json", [record])
    assert "give either 'access_hist' or access_bin_* fields, not both" in error_of(path)


def test_json_access_hist_non_numeric(tmp_path: Path) -> None:
    hist: list[Any] = [*HIST]
    hist[2] = "lots"
    path = write_json(tmp_path / "p.json", [_list_record(hist)])
    assert "field 'access_hist[2]' must be a number, got 'lots'" in error_of(path)


# -- whole-file problems ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.csv", "missing.json"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert error_of(path) == f"{path}: file not found"


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "pool.xlsx"
    path.write_text("name,rows\n")
    assert error_of(path) == f"{path}: unknown table file format '.xlsx' (use .json or .csv)"


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("")
    assert error_of(path) == f"{path}: empty file (expected a header row)"


def test_header_only_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", [])
    assert error_of(path) == f"{path}: no tables (only a header row)"


def test_non_utf8_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"name,rows\n\xff\xfe\n")
    assert error_of(path) == f"{path}: not a UTF-8 text file"


def test_bad_json_syntax_names_line(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{\n  "tables": [\n    {"name": "a",}\n  ]\n}\n')
    message = error_of(path)
    assert message.startswith(f"{path}: line 3: invalid JSON")


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ([], "expected an object with a 'tables' list"),
        ({"table": []}, "expected an object with a 'tables' list"),
        ({"tables": {}}, "expected an object with a 'tables' list"),
        ({"tables": []}, "'tables' is empty"),
        ({"tables": [["t0", 10]]}, "tables[0]: expected an object, got list"),
    ],
)
def test_json_bad_structure(tmp_path: Path, payload: Any, problem: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(payload))
    assert error_of(path) == f"{path}: {problem}"


def _spec_kwargs(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": record["name"],
        "rows": record["rows"],
        "dim": record["dim"],
        "pooling_factor": record["pooling_factor"],
        "access_hist": tuple(record[f] for f in BIN_FIELDS),
        "dtype": record["dtype"],
    }


# -- access statistics are optional (issue 12) ----------------------------------------------

MINIMAL_COLUMNS = ["name", "rows", "dim"]


def test_default_histogram_is_the_documented_zipf_one() -> None:
    from dreamshard.constants import DEFAULT_BATCH_SIZE
    from dreamshard.data.synthetic import expected_access_histograms
    from dreamshard.data.tables import DEFAULT_ZIPF_SKEW, default_access_histograms

    expected = expected_access_histograms([1000, 5000], [2.5, 1.0], [0.6, 0.6], DEFAULT_BATCH_SIZE)
    got = default_access_histograms([1000, 5000], [2.5, 1.0])
    assert DEFAULT_ZIPF_SKEW == 0.6
    assert got == [tuple(float(v) for v in row) for row in expected]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_name_rows_dim_only_gets_defaults(
    tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    from dreamshard.data.tables import default_access_histograms

    records = [{c: r[c] for c in MINIMAL_COLUMNS} for r in good_records()]
    if fmt == "csv":
        path = write_csv(tmp_path / "pool.csv", records, MINIMAL_COLUMNS)
    else:
        path = write_json(tmp_path / "pool.json", records)
    with caplog.at_level("WARNING"):
        tables = load_tables(path)
    assert [t.pooling_factor for t in tables] == [1.0, 1.0, 1.0]
    assert [t.access_hist for t in tables] == default_access_histograms(
        [1000, 200, 5000], [1.0] * 3
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 3 of 3 tables have no access histogram, assumed Zipf(0.6) ids; "
        f"3 of 3 have no pooling_factor, assumed 1.0 (see README 'Table files')"
    ]


def test_csv_without_bin_columns_keeps_pooling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dreamshard.data.tables import default_access_histograms

    columns = [*MINIMAL_COLUMNS, "pooling_factor"]
    path = write_csv(tmp_path / "pool.csv", good_records(), columns)
    with caplog.at_level("WARNING"):
        tables = load_tables(path)
    assert [t.pooling_factor for t in tables] == [2.5, 0.75, 1.0]
    assert tables[0].access_hist == default_access_histograms([1000], [2.5])[0]
    (record,) = caplog.records
    assert record.getMessage() == (
        f"{path}: 3 of 3 tables have no access histogram, assumed Zipf(0.6) ids "
        f"(see README 'Table files')"
    )


def test_mixed_file_warns_once_counting_only_defaulted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = good_records()
    for f in BIN_FIELDS:
        records[1][f] = None  # all 17 cells empty: this table gets the default
    path = write_csv(tmp_path / "pool.csv", records)
    with caplog.at_level("WARNING"):
        tables = load_tables(path)
    assert tables[0].access_hist == HIST
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 1 of 3 tables have no access histogram, assumed Zipf(0.6) ids "
        f"(see README 'Table files')"
    ]


def test_full_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        load_tables(write_csv(tmp_path / "pool.csv", good_records()))
    assert caplog.records == []


def test_defaulted_tables_save_full_records(tmp_path: Path) -> None:
    records = [{c: r[c] for c in MINIMAL_COLUMNS} for r in good_records()]
    tables = load_tables(write_csv(tmp_path / "pool.csv", records, MINIMAL_COLUMNS))
    save_tables(tmp_path / "full.csv", tables)
    header = (tmp_path / "full.csv").read_text().splitlines()[0].split(",")
    assert header == list(CSV_COLUMNS)
    assert load_tables(tmp_path / "full.csv") == tables


def test_csv_some_bin_columns_missing(tmp_path: Path) -> None:
    cols = [c for c in CSV_COLUMNS if c != "access_bin_5"]
    path = write_csv(tmp_path / "p.csv", good_records(), cols)
    assert error_of(path) == (
        f"{path}: line 1: missing column 'access_bin_5' "
        f"(give all {len(BIN_FIELDS)} access_bin_* columns or none)"
    )


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_partial_histogram_names_file_line_table(tmp_path: Path, fmt: str) -> None:
    records = good_records()
    for f in BIN_FIELDS[3:]:
        records[1][f] = None
    if fmt == "json":
        for f in BIN_FIELDS[3:]:
            del records[1][f]
        path = write_json(tmp_path / "p.json", records)
        where = "tables[1]"
    else:
        path = write_csv(tmp_path / "p.csv", records)
        where = "line 3"
    assert error_of(path) == (
        f"{path}: {where} (table 't1'): field 'access_bin_3' is missing "
        f"(give all {len(BIN_FIELDS)} access_bin_* fields or none)"
    )


# -- garbled headers and values (issue 12, defects 3 and 15) ----------------------------------


def test_csv_duplicate_column(tmp_path: Path) -> None:
    records = good_records()
    path = write_csv(tmp_path / "p.csv", records, [*CSV_COLUMNS, "rows"])
    assert error_of(path) == f"{path}: line 1: column 'rows' appears twice"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", "1_000"),
        ("rows", "\u0661\u0660\u0660"),  # Arabic-Indic 100
        ("dim", "\uff11\uff16"),  # full-width 16
        ("pooling_factor", "2_5.0"),
        ("access_bin_0", "\u0660.4"),
    ],
)
def test_csv_garbled_numbers(tmp_path: Path, field: str, value: str) -> None:
    records = good_records()
    records[1][field] = value
    path = write_csv(tmp_path / "p.csv", records)
    message = error_of(path)
    assert message.startswith(f"{path}: line 3 (table 't1'): field '{field}' must be a number")
    assert repr(value) in message


def test_json_garbled_number_string(tmp_path: Path) -> None:
    records = good_records()
    records[0]["rows"] = "1_000"
    message = error_of(write_json(tmp_path / "p.json", records))
    assert "tables[0] (table 't0'): field 'rows' must be a number" in message


def test_plain_number_strings_still_accepted(tmp_path: Path) -> None:
    records = good_records()
    records[0]["rows"] = " 1e3 "
    records[0]["pooling_factor"] = "+.25"
    (t0, *_) = load_tables(write_json(tmp_path / "p.json", records))
    assert (t0.rows, t0.pooling_factor) == (1000, 0.25)


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "x\x00", "a\u2028b", "\x1b[31mred"])
def test_control_characters_in_table_name(tmp_path: Path, name: str) -> None:
    records = good_records()
    records[1]["name"] = name
    path = write_json(tmp_path / "p.json", records)
    message = error_of(path)
    assert message == (
        f"{path}: tables[1] (table {name!r}): field 'name' must not contain control characters"
    )
    assert "\n" not in message


def test_csv_newline_in_quoted_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", good_records())
    text = path.read_text().replace("\nt1,", '\n"t\n1",', 1)
    path.write_text(text)
    assert "(table 't\\n1'): field 'name' must not contain control characters" in error_of(path)


def test_folder_named_like_a_table_file(tmp_path: Path) -> None:
    folder = tmp_path / "pool.csv"
    folder.mkdir()
    assert error_of(folder) == f"{folder}: is a folder, expected a table file"


def test_unreadable_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "p.csv", good_records())

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    assert error_of(path) == f"{path}: cannot read (Permission denied)"
