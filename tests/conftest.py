"""Shared tiny fixtures: a few hand-made tables and tasks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dreamshard.runtime import one_thread
from dreamshard.types import Device, TableSpec, Task

#: Every accessed row read once: the simplest valid access histogram.
ONCE = (1.0,) + (0.0,) * 16


def table(name: str, rows: int = 1000, dim: int = 16, pooling: float = 2.0) -> TableSpec:
    """A tiny FP32 table (memory = rows * dim * 4 bytes)."""
    return TableSpec(name=name, rows=rows, dim=dim, pooling_factor=pooling, access_hist=ONCE)


def task(tables: list[TableSpec], memory: list[int], name: str = "t") -> Task:
    devices = tuple(Device(f"dev{i}", m) for i, m in enumerate(memory))
    return Task(name=name, tables=tuple(tables), devices=devices)


@pytest.fixture
def four_tables() -> list[TableSpec]:
    # sizes (bytes): a 64,000  b 32,000  c 16,000  d 128,000
    # dims:          a 16      b 32      c 8       d 4
    # lookups:       a 32      b 32      c 80      d 4
    return [
        table("a", rows=1000, dim=16, pooling=2.0),
        table("b", rows=250, dim=32, pooling=1.0),
        table("c", rows=500, dim=8, pooling=10.0),
        table("d", rows=8000, dim=4, pooling=1.0),
    ]


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Torch on one thread: the tiny networks run many times faster on a busy machine."""
    with one_thread():
        yield
