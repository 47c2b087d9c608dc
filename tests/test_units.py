from __future__ import annotations

import pytest

from dreamshard.errors import InputError
from dreamshard.units import format_bytes, parse_memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5_000_000_000),
        ("512MiB", 512 * 2**20),
        ("1.5e9", 1_500_000_000),
        ("100", 100),
        ("100B", 100),
        ("2KB", 2_000),
        ("3MB", 3_000_000),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("2GiB", 2 * 2**30),
        ("1TiB", 2**40),
        ("0.5GiB", 2**29),
        ("1E3", 1000),
        ("2.5e-3GB", 2_500_000),
    ],
)
def test_parse_memory_units(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["5gb", "5Gb", "5gB", " 5GB", "5GB ", "5 GB", "  5  gb  "])
def test_parse_memory_ignores_case_and_spaces(text: str) -> None:
    assert parse_memory(text) == 5_000_000_000


@pytest.mark.parametrize("text", ["512mib", "512MIB", "512 MiB"])
def test_parse_memory_binary_units_ignore_case(text: str) -> None:
    assert parse_memory(text) == 512 * 2**20


def test_parse_memory_accepts_numbers() -> None:
    assert parse_memory(4096) == 4096
    assert parse_memory(1.5e9) == 1_500_000_000
    assert isinstance(parse_memory("1.5e9"), int)


@pytest.mark.parametrize("text", ["abc", "", "   ", "GB", "5 G B", "5GB5", "1,000", "-5GB", "True"])
def test_parse_memory_unparsable(text: str) -> None:
    with pytest.raises(InputError, match="cannot parse") as err:
        parse_memory(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize(("text", "unit"), [("5XB", "xb"), ("5 bytes", "bytes"), ("1g", "g")])
def test_parse_memory_unknown_unit(text: str, unit: str) -> None:
    with pytest.raises(InputError, match="unknown unit") as err:
        parse_memory(text)
    assert repr(unit) in str(err.value)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("text", ["0", "0GB", "0.0MiB", "0e9", "0.5", "1e400"])
def test_parse_memory_not_positive(text: str) -> None:
    # "0.5" bytes would truncate to a 0-byte device; "1e400" overflows to inf.
    with pytest.raises(InputError, match="must be positive") as err:
        parse_memory(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("value", [0, -1, -5e9, 0.25, float("inf"), float("nan")])
def test_parse_memory_not_positive_numbers(value: float) -> None:
    with pytest.raises(InputError, match="must be positive"):
        parse_memory(value)


def test_parse_memory_errors_name_what() -> None:
    with pytest.raises(InputError, match=r"^--memory: unknown unit 'xb' in '5XB'"):
        parse_memory("5XB", "--memory")
    with pytest.raises(InputError, match=r"^--memory: cannot parse '-1'"):
        parse_memory("-1", "--memory")


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (512 * 2**20, "512.00 MiB"),
        (1.5 * 2**30, "1.50 GiB"),
        (5 * 10**9, "4.66 GiB"),
        (2**40, "1.00 TiB"),
        (5 * 2**50, "5120.00 TiB"),
        (-2048, "-2.00 KiB"),
    ],
)
def test_format_bytes(num_bytes: float, text: str) -> None:
    assert format_bytes(num_bytes) == text


def test_format_then_parse_round_trip() -> None:
    assert parse_memory(format_bytes(3 * 2**30)) == 3 * 2**30


@pytest.mark.parametrize(
    "text", ["1_000GB", "1_0", "\u0661\u0660\u0660GB", "\uff11\uff10\uff10", "5\u0660MB", "5GB\x00"]
)
def test_parse_memory_refuses_underscores_and_non_ascii_digits(text: str) -> None:
    # float() reads "1_000" and non-ASCII digits; a memory size must not (issue 12).
    with pytest.raises(InputError, match=r"^--memory: cannot parse") as err:
        parse_memory(text, "--memory")
    assert repr(text) in str(err.value)
