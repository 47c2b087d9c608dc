from __future__ import annotations

import pytest

from dreamshard.errors import InvalidPlacementError
from dreamshard.types import Device, Placement, StageCosts, Task, synchronized_costs

from .conftest import table, task


def test_stage_costs_total_is_sum_of_stages() -> None:
    assert StageCosts(1.0, 2.0, 3.0, 4.5).total_ms == 10.5


def test_synchronized_costs_give_stage_synchronous_cost() -> None:
    # METHOD.md section 1: max fwd + a2a fwd + a2a bwd + max bwd = 3 + 1 + 1 + 7.
    costs = synchronized_costs([1.0, 3.0], [7.0, 2.0], 1.0, 1.0)
    assert costs[0] == StageCosts(1.0, 3.0, 1.0, 7.0)
    assert costs[1] == StageCosts(3.0, 1.0, 1.0, 2.0)
    assert max(c.total_ms for c in costs) == 12.0


def test_size_bytes_by_dtype() -> None:
    assert table("a", rows=10, dim=8).size_bytes == 320


def test_validate_accepts_fitting_placement() -> None:
    t = task([table("a", rows=10, dim=8), table("b", rows=10, dim=8)], [320, 320])
    Placement((0, 1)).validate(t)


def test_validate_rejects_memory_overflow_naming_device() -> None:
    t = task([table("a", rows=10, dim=8), table("b", rows=10, dim=8)], [639, 640])
    with pytest.raises(InvalidPlacementError, match=r"device 0 .*640 bytes.*639"):
        Placement((0, 0)).validate(t)


def test_validate_rejects_unknown_device_and_wrong_length() -> None:
    t = task([table("a"), table("b")], [10**9])
    with pytest.raises(InvalidPlacementError, match="table 'b' is on device 1"):
        Placement((0, 1)).validate(t)
    with pytest.raises(InvalidPlacementError, match="covers 1 tables"):
        Placement((0,)).validate(t)


def test_shards_and_names() -> None:
    t = task([table("a"), table("b"), table("c")], [10**9, 10**9])
    p = Placement((1, 0, 1))
    assert p.shards(2) == [[1], [0, 2]]
    assert p.to_names(t) == {"a": "dev1", "b": "dev0", "c": "dev1"}


def test_task_refuses_duplicate_table_and_device_names() -> None:
    with pytest.raises(ValueError, match="duplicate table name 'a'"):
        Task("t", (table("a"), table("a")), (Device("d0", 10**9),))
    with pytest.raises(ValueError, match="duplicate device name 'd0'"):
        Task("t", (table("a"),), (Device("d0", 10**9), Device("d0", 10**9)))
