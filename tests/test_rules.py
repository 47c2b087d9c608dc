from __future__ import annotations

import pytest

from dreamshard.data.constraints import (
    ConstrainedInfeasibleError,
    ConstraintSpec,
    parse_constraints,
    resolve_constraints,
)
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.placers.registry import PlacerOptions, make_placer
from dreamshard.placers.rules import GreedyPlacer, RandomPlacer
from dreamshard.types import Task

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


# -- devices of different memory --------------------------------------------------------


def one_big_device() -> Task:
    """huge (64 MB) fits only dev1 (80 MB); dev0 (20 MB) takes one 12 MB table, dev1 the
    other: every feasible placement is huge and one m on dev1, the other m on dev0."""
    tables = [table("huge", rows=1_000_000), table("m1", rows=187_500), table("m2", rows=187_500)]
    return task(tables, [20_000_000, 80_000_000])


@pytest.mark.parametrize("name", ["size", "dim", "lookup", "size-lookup"])
def test_greedy_puts_the_big_table_on_the_big_device(name: str) -> None:
    # Every rule visits huge first or finds dev1 the only room for it later; "size" then
    # puts m1 on the empty dev0 and m2 where it still fits (dev1).
    t = one_big_device()
    placement = GreedyPlacer(name).place(t)
    placement.validate(t)
    assert placement.device_of[0] == 1
    assert sorted(placement.device_of[1:]) == [0, 1]
    if name == "size":
        assert placement.device_of == (1, 0, 1)


def test_random_finds_the_only_feasible_shape_on_different_devices() -> None:
    t = one_big_device()
    placements = {RandomPlacer(seed=s).place(t).device_of for s in range(12)}
    assert placements == {(1, 0, 1), (1, 1, 0)}


# -- constraints ------------------------------------------------------------------------


def spec(**raw: object) -> ConstraintSpec:
    return parse_constraints(raw, "rules.json")


def test_greedy_places_pinned_tables_first(four_tables) -> None:
    # size order with a pinned first: a:0 (pinned), d:1, b:0 (64k < 128k), c:0 (96k < 128k).
    # Unconstrained the rule gives (1, 1, 1, 0).
    t = task(four_tables, [BIG, BIG])
    placement = GreedyPlacer("size", spec(pin={"a": "dev0"})).place(t)
    assert placement.device_of == (0, 0, 0, 1)


def test_greedy_honours_together_and_apart(four_tables) -> None:
    # size order d, a, b, c: d:0 (tie), a:1 (load 0), b apart from a: 0, c joins d: 0.
    t = task(four_tables, [BIG, BIG])
    rules = spec(together=[["d", "c"]], apart=[["a", "b"]])
    placement = GreedyPlacer("size", rules).place(t)
    assert placement.device_of == (1, 0, 0, 0)
    resolve_constraints(rules, t).check(placement, t)


def test_greedy_reserves_room_for_a_together_group(four_tables) -> None:
    # Devices of 200,000 bytes, c (16k) with d (128k). Dim order b, a, c, d: b:0, a:1;
    # c would go to dev1 (load 16 < 32), but the group's 144k does not fit beside a
    # (64k) there, so c:0 and d joins it. Judging c alone, d would find no room later.
    t = task(four_tables, [200_000, 200_000])
    placement = GreedyPlacer("dim", spec(together=[["c", "d"]])).place(t)
    placement.validate(t)
    assert placement.device_of == (1, 0, 0, 0)


@pytest.mark.parametrize("name", ["random", "size", "dim", "lookup", "size-lookup"])
def test_every_rule_honours_constraints(name: str, four_tables) -> None:
    t = task([*four_tables, table("e", rows=100)], [BIG, BIG, BIG])
    raw = spec(pin={"e": 2}, together=[["a", "c"]], apart=[["a", "b", "d"], ["c", "e"]])
    rules = resolve_constraints(raw, t)
    for seed in range(5):
        placement = make_placer(name, PlacerOptions(seed=seed, constraints=raw)).place(t)
        placement.validate(t)
        rules.check(placement, t)


@pytest.mark.parametrize("name", ["random", "size"])
def test_constraints_that_leave_no_room_are_reported(name: str, four_tables) -> None:
    # d (128k) fills dev0 (130k); a must avoid it and takes dev1 (100k); the group b + c
    # (48k) then finds 2k and 36k free: no placement exists.
    t = task(four_tables, [130_000, 100_000])
    placer = make_placer(
        name, PlacerOptions(constraints=spec(apart=[["a", "d"]], together=[["b", "c"]]))
    )
    with pytest.raises(
        ConstrainedInfeasibleError,
        match=r"table 'b' cannot be placed: its together group \['b', 'c'\] needs one device; "
        r"no device it may take has 48,000 bytes free",
    ):
        placer.place(t)


def test_impossible_constraints_are_refused_naming_the_constraint(four_tables) -> None:
    t = task(four_tables, [150_000, 150_000])
    with pytest.raises(InputError, match=r"rules\.json: together\[0\]: its tables need 192,000"):
        GreedyPlacer("size", spec(together=[["a", "d"]])).place(t)
