"""TorchRec's planner as the ``torchrec-all`` placer: table-, column-, row- or (on two
hosts) table-row-wise, its plan turned back into a (split) placement, or refused where a
placement cannot say it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

pytest.importorskip("torchrec")

from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)

from dreamshard.errors import InvalidPlacementError
from dreamshard.placers.registry import PlacerKind, is_baseline, kind_of, make_placer
from dreamshard.placers.torchrec import (
    TorchRecAllPlacer,
    TorchRecPlacer,
    TorchRecPlannerError,
    placement_from_torchrec_plan,
    task_module,
    torchrec_topology,
)
from dreamshard.types import Placement, TableSpec, TableSplit, Task

from .conftest import table, task

#: A small batch: TorchRec then counts little memory for input and output buffers, so
#: its memory and ours agree on what fits.
BATCH_SIZE = 16


def test_easy_task_stays_table_wise(four_tables: list[TableSpec]) -> None:
    placed = task(four_tables, [10**6] * 2)
    placement = TorchRecAllPlacer(batch_size=BATCH_SIZE).place(placed)
    assert placement.is_table_wise
    placement.validate(placed)


def test_table_too_big_for_any_device_is_split_column_wise_on_cpu() -> None:
    # big: 2,000 x 256 fp32 = 2,048,000 bytes; each device 1,500,000: it fits only split.
    placed = task([table("big", rows=2000, dim=256), table("b", rows=250, dim=32)], [1_500_000] * 2)
    with pytest.raises(TorchRecPlannerError, match="TorchRec's planner found no plan"):
        TorchRecPlacer(batch_size=BATCH_SIZE).place(placed)
    placement = TorchRecAllPlacer(batch_size=BATCH_SIZE).place(placed)
    # TorchRec's column shards are 128 columns wide (its MIN_CW_DIM), one per device.
    assert placement.splits == (TableSplit(0, "column", (128, 128)),)
    assert sorted(placement.device_of[:2]) == [0, 1]
    placement.validate(placed)


def test_table_too_big_for_any_device_is_split_row_wise_on_cuda() -> None:
    # big: 10,000 x 16 fp32 = 640,000 bytes; each device 500,000. On CPU TorchRec's
    # sharder offers no row-wise sharding and a dim of 16 cannot be split column-wise.
    placed = task([table("big", rows=10_000, dim=16), table("b", rows=250, dim=32)], [500_000] * 2)
    with pytest.raises(TorchRecPlannerError):
        TorchRecAllPlacer(batch_size=BATCH_SIZE).place(placed)
    placement = TorchRecAllPlacer("cuda", batch_size=BATCH_SIZE).place(placed)
    assert placement.splits[0] == TableSplit(0, "row", (5000, 5000))
    assert placement.device_of[:2] == (0, 1)
    placement.validate(placed)


def _module_plan(placed: Task, shardings: dict[str, Any]) -> Any:
    return construct_module_sharding_plan(
        task_module(placed),
        shardings,
        local_size=placed.host_size,
        world_size=placed.num_devices,
        device_type="cpu",
    )


def test_column_shards_come_back_in_column_order_on_their_ranks(
    four_tables: list[TableSpec],
) -> None:
    placed = task(four_tables, [10**6] * 2)
    plan = _module_plan(
        placed,
        {
            "a": table_wise(rank=1),
            "b": column_wise(ranks=[1, 0]),  # 16 + 16 columns, shard 0 on rank 1
            "c": table_wise(rank=0),
            "d": row_wise(),
        },
    )
    placement = placement_from_torchrec_plan(placed, plan)
    assert placement == Placement(
        (1, 1, 0, 0, 0, 1), (TableSplit(1, "column", (16, 16)), TableSplit(3, "row", (4000, 4000)))
    )


def test_one_column_shard_is_the_whole_table(
    four_tables: list[TableSpec], caplog: pytest.LogCaptureFixture
) -> None:
    placed = task(four_tables, [10**6] * 2)
    shardings = {t.name: table_wise(rank=0) for t in four_tables}
    plan = _module_plan(placed, {**shardings, "b": column_wise(ranks=[1])})
    with caplog.at_level(logging.INFO, logger="dreamshard.placers.torchrec"):
        placement = placement_from_torchrec_plan(placed, plan)
    assert placement == Placement((0, 1, 0, 0))
    assert "table 'b' column-wise in one shard: the whole table on rank 1" in caplog.text


@pytest.mark.parametrize(
    ("tables", "devices", "sharding", "part"),
    [
        # Column shards of 6 and 10 columns: FBGEMM's dims must be multiples of 4.
        ([table("x", dim=16)], 2, column_wise(size_per_rank=[6, 10]),
         "TorchRec's plan shards table 'x' column_wise in a way a placement cannot express: "
         "table 'x': column shards of [6, 10] columns; every shard's dim must be a multiple "
         "of 4"),
        # 4 rows over 3 ranks: TorchRec's blocks are 2, 2 and an empty one.
        ([table("x", rows=4)], 3, row_wise(),
         "TorchRec's plan shards table 'x' row_wise in a way a placement cannot express: "
         "table 'x': row shards of [2, 2, 0] rows do not cover"),
        ([table("x")], 2, data_parallel(),
         "TorchRec's plan gives table 'x' data_parallel sharding; this placer takes "
         "table_wise, column_wise, row_wise"),
        # Table-row-wise on a task of one host: a placement says that as a row split.
        ([table("x", rows=10)], 2, table_row_wise(host_index=0),
         "TorchRec's plan shards table 'x' table_row_wise in a way a placement cannot "
         "express: table 'x': a table_row split needs at least 2 hosts"),
    ],
)  # fmt: skip
def test_plans_a_placement_cannot_express_are_refused(
    tables: list[TableSpec], devices: int, sharding: Any, part: str
) -> None:
    placed = task(tables, [10**6] * devices)
    plan = _module_plan(placed, {"x": sharding})
    with pytest.raises(InvalidPlacementError) as caught:
        placement_from_torchrec_plan(placed, plan)
    assert str(caught.value).startswith(part)


def test_registered_as_a_baseline_like_torchrec() -> None:
    placer = make_placer("torchrec-all")
    assert isinstance(placer, TorchRecAllPlacer) and placer.name == "torchrec-all"
    assert kind_of("torchrec-all") is kind_of("torchrec") is PlacerKind.EXTERNAL
    assert is_baseline("torchrec-all")


# -- hosts: table-row-wise --------------------------------------------------------------


def _two_hosts(tables: list[TableSpec], memory: int) -> Task:
    """4 devices of ``memory`` bytes, 2 per host."""
    return dataclasses.replace(task(tables, [memory] * 4), devices_per_host=2)


def test_table_row_wise_is_offered_only_on_two_hosts(four_tables: list[TableSpec]) -> None:
    one, two = task(four_tables, [10**6] * 4), _two_hosts(four_tables, 10**6)
    placer = TorchRecAllPlacer()
    assert placer.sharding_types_for(one) == ("table_wise", "column_wise", "row_wise")
    assert placer.sharding_types_for(two)[-1] == "table_row_wise"
    assert TorchRecPlacer().sharding_types_for(two) == ("table_wise",)
    assert torchrec_topology(one).local_world_size == 4
    assert torchrec_topology(two).local_world_size == 2


def test_table_too_big_for_any_device_is_split_table_row_wise_on_two_hosts() -> None:
    # big: 10,000 x 16 fp32 = 640,000 bytes; each device 500,000. On one host TorchRec
    # cuts it row-wise over all 4 devices; on two hosts of 2 it keeps it on one host.
    tables = [table("big", rows=10_000, dim=16), table("b", rows=250, dim=32)]
    placed = _two_hosts(tables, 500_000)
    placement = TorchRecAllPlacer("cuda", batch_size=BATCH_SIZE).place(placed)
    placement.validate(placed)
    (big, *_) = placement.splits
    assert (big.table, big.kind, big.sizes) == (0, "table_row", (5000, 5000))
    assert placement.device_of[:2] == (2 * big.host, 2 * big.host + 1)
    one_host = TorchRecAllPlacer("cuda", batch_size=BATCH_SIZE).place(task(tables, [500_000] * 4))
    assert one_host.splits[0] == TableSplit(0, "row", (2500,) * 4)


def test_table_row_wise_comes_back_on_its_hosts_ranks(four_tables: list[TableSpec]) -> None:
    placed = _two_hosts(four_tables, 10**6)
    plan = _module_plan(
        placed,
        {
            "a": table_wise(rank=3),
            "b": column_wise(ranks=[1, 2]),
            "c": table_wise(rank=0),
            "d": table_row_wise(host_index=1),
        },
    )
    placement = placement_from_torchrec_plan(placed, plan)
    assert placement == Placement(
        (3, 1, 2, 0, 2, 3),
        (TableSplit(1, "column", (16, 16)), TableSplit(3, "table_row", (4000, 4000), host=1)),
    )
    # Blocks on the host's ranks out of order: not TorchRec's layout, refused.
    swapped = {**plan, "d": dataclasses.replace(plan["d"], ranks=[3, 2])}
    with pytest.raises(InvalidPlacementError) as caught:
        placement_from_torchrec_plan(placed, swapped)
    assert str(caught.value) == (
        "TorchRec's plan shards table 'd' table-row-wise in blocks of [4000, 4000] rows on "
        "ranks [3, 2]; placements take block j on rank j of the host (ranks 2..3)"
    )
