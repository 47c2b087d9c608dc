"""Parsing and printing of memory sizes ("5GB", "512MiB", "1.5e9")."""

from __future__ import annotations

import math
import re

from dreamshard.errors import InputError

_UNIT_BYTES: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str | int | float, what: str = "memory size") -> int:
    """Bytes in a memory size such as ``"5GB"`` (10^9), ``"512MiB"`` (2^20) or ``"1e9"``.

    Raises:
        InputError: naming ``what`` when the text is not a positive size.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(str(text))
        if match is None:
            raise InputError(f"{what}: cannot parse {text!r} (examples: 5GB, 512MiB, 1e9)")
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNIT_BYTES:
        raise InputError(
            f"{what}: unknown unit {unit!r} in {text!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    size = value * _UNIT_BYTES[unit]
    if not math.isfinite(size) or size < 1:  # under one byte would truncate to 0
        raise InputError(f"{what}: must be positive, got {text!r}")
    return int(size)


def format_bytes(num_bytes: float) -> str:
    """Human-readable size with binary units, e.g. ``1.50 GiB``."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"
