from __future__ import annotations

import pytest

from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.placers.registry import make_placer
from dreamshard.placers.rules import GreedyPlacer, RandomPlacer

from .conftest import table, task

BIG = 10**9


def test_greedy_size_hand_made_case(four_tables) -> None:
    # sizes d 128k, a 64k, b 32k, c 16k -> d:dev0, a:dev1, b:dev1 (64k<128k), c:dev1 (96k<128k)
    placement = GreedyPlacer("size").place(task(four_tables, [BIG, BIG]))
    assert placement.device_of == (1, 1, 1, 0)


def test_greedy_dim_hand_made_case(four_tables) -> None:
    # dims b 32, a 16, c 8, d 4 -> b:dev0, a:dev1, c:dev1 (16<32), d:dev1 (24<32)
    placement = GreedyPlacer("dim").place(task(four_tables, [BIG, BIG]))
    assert placement.device_of == (1, 0, 1, 1)


def test_greedy_lookup_hand_made_case(four_tables) -> None:
    # dim*pooling: c 80, a 32, b 32, d 4 -> c:dev0, a:dev1, b:dev1 (32<80), d:dev1 (64<80)
    placement = GreedyPlacer("lookup").place(task(four_tables, [BIG, BIG]))
    assert placement.device_of == (1, 1, 0, 1)


def test_greedy_size_lookup_uses_log_rows(four_tables) -> None:
    # dim*pooling*log10(rows): a 96, b 76.8, c 216, d 15.6
    # -> c:0, a:1, b:1 (96 < 216), d:1 (172.8 < 216)
    placement = GreedyPlacer("size-lookup").place(task(four_tables, [BIG, BIG]))
    assert placement.device_of == (1, 1, 0, 1)


def test_greedy_respects_memory(four_tables) -> None:
    # dev0 holds 20,000 bytes: only c (16k) fits there. Unconstrained dim gives (1, 0, 1, 1);
    # here b, a, d must go to dev1 and c, whose turn finds dev0 empty, goes to dev0.
    t = task(four_tables, [20_000, BIG])
    placement = GreedyPlacer("dim").place(t)
    placement.validate(t)
    assert placement.device_of == (1, 1, 0, 1)


def test_greedy_tie_goes_to_less_used_memory() -> None:
    # Equal dims: after a (big) on dev0 and b on dev1, c's tie on load goes to less memory.
    tables = [table("a", rows=4000), table("b", rows=1000), table("c", rows=1000)]
    placement = GreedyPlacer("dim").place(task(tables, [BIG, BIG]))
    # dims all 16: a->dev0, b->dev1 (load 0 < 16), c: loads tie 16/16, dev1 uses less memory.
    assert placement.device_of == (0, 1, 1)


@pytest.mark.parametrize("name", ["random", "size", "dim", "lookup", "size-lookup"])
def test_infeasible_names_the_table(name: str) -> None:
    tables = [table("small", rows=100), table("huge", rows=100_000)]
    with pytest.raises(InfeasiblePlacementError, match="'huge' needs 6,400,000 bytes"):
        make_placer(name).place(task(tables, [10_000, 10_000]))


def test_infeasible_when_memory_runs_out_on_all_devices() -> None:
    tables = [table(f"t{i}", rows=100, dim=4) for i in range(3)]  # 1,600 bytes each
    with pytest.raises(InfeasiblePlacementError, match="'t2'"):
        GreedyPlacer("size").place(task(tables, [1_600, 1_600]))


def test_random_is_valid_seeded_and_per_task(four_tables) -> None:
    t = task(four_tables, [BIG, BIG, BIG])
    a = RandomPlacer(seed=1).place(t)
    a.validate(t)
    assert a == RandomPlacer(seed=1).place(t)
    others = {RandomPlacer(seed=s).place(t).device_of for s in range(20)}
    assert len(others) > 1


def test_make_placer_unknown_name() -> None:
    with pytest.raises(InputError, match=r"unknown placer .best.*size-lookup"):
        make_placer("best")
