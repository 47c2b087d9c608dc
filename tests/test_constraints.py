"""User constraints: the file, resolving against a task, the checks, and the tracker that
tells sequential placers which devices a table may take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dreamshard.data.constraints import (
    ConstrainedInfeasibleError,
    Constraints,
    ConstraintSpec,
    ConstraintTracker,
    constraints_for,
    fits_with_constraints,
    load_constraints,
    parse_constraints,
    read_constraints,
    resolve_constraints,
)
from dreamshard.data.tasks import fits_memory
from dreamshard.errors import InfeasiblePlacementError, InputError, InvalidPlacementError
from dreamshard.types import Placement, TableSpec, Task

from .conftest import table, task

BIG = 10**9


@pytest.fixture
def four(four_tables: list[TableSpec]) -> Task:
    """Tables a 64,000, b 32,000, c 16,000, d 128,000 bytes on three roomy devices."""
    return task(four_tables, [BIG, BIG, BIG])


def write(tmp_path: Path, payload: Any) -> Path:
    path = tmp_path / "rules.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


# -- the file and resolving -------------------------------------------------------------


def test_file_resolves_to_indices(tmp_path: Path, four: Task) -> None:
    path = write(
        tmp_path,
        {"pin": {"d": "dev2", "b": 0}, "together": [["c", "a"]], "apart": [["d", "a", "b"]]},
    )
    resolved = load_constraints(path, four)
    assert resolved == Constraints(pins={3: 2, 1: 0}, together=((0, 2),), apart=((0, 1, 3),))
    assert read_constraints(path).resolve(four) == resolved


def test_together_groups_sharing_a_table_are_merged(four: Task) -> None:
    resolved = resolve_constraints({"together": [["a", "b"], ["c", "d"], ["b", "c"]]}, four)
    assert resolved.together == ((0, 1, 2, 3),)
    assert resolved.group_of(2) == (0, 1, 2, 3)
    assert resolve_constraints({}, four).group_of(2) == (2,)


def test_empty_and_missing_specs_mean_no_constraints(four: Task) -> None:
    assert constraints_for(None, four).is_empty
    assert constraints_for(ConstraintSpec(), four).is_empty
    assert not constraints_for(ConstraintSpec(pins=(("a", 1),)), four).is_empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", r"rules\.json: expected an object"),
        ('{"pins": {}}', r"rules\.json: unknown key 'pins'"),
        ('{"pin": {"a": 0}, "pin": {"b": 1}}', r"rules\.json: key 'pin' appears twice"),
        ('{"pin": {"a": 0, "a": 1}}', r"rules\.json: pin: table 'a' is pinned twice"),
        ('{"pin": {"a": 0, " a": 1}}', r"rules\.json: pin: table 'a' is pinned twice"),
        ('{"pin": [["a", 0]]}', r"rules\.json: pin: expected an object"),
        ('{"pin": {"a": true}}', r"rules\.json: pin 'a': a device is a name or an index"),
        ('{"pin": {"a": 1.0}}', r"rules\.json: pin 'a': a device is a name or an index"),
        ('{"pin": {"a": " "}}', r"rules\.json: pin 'a': the device name is empty"),
        ('{"together": [["a"]]}', r"rules\.json: together\[0\]: a group needs at least 2"),
        ('{"apart": [["a", "b"], "c"]}', r"rules\.json: apart\[1\]: expected a list of table"),
        ('{"apart": [["a", "b", "a"]]}', r"rules\.json: apart\[0\]: table 'a' is named twice"),
        ('{"together": [["a", 3]]}', r"rules\.json: together\[0\]: a table must be named"),
        ('{"together": {"a": "b"}}', r"rules\.json: together: expected a list of groups"),
        ("{", r"rules\.json: line 1: invalid JSON"),
    ],
)
def test_malformed_file_names_the_constraint(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_constraints(write(tmp_path, text))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"none\.json: file not found"):
        read_constraints(tmp_path / "none.json")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"pin": {"z": 0}}, r"c: pin 'z': unknown table 'z' \(tables: a, b, c, d\)"),
        ({"pin": {"a": "gpu9"}}, r"c: pin 'a': unknown device 'gpu9' \(devices: dev0, dev1, dev2"),
        ({"pin": {"a": 3}}, r"c: pin 'a': device index 3 is out of range \(devices 0\.\.2\)"),
        ({"pin": {"a": -1}}, r"c: pin 'a': device index -1 is out of range"),
        ({"together": [["a", "zz"]]}, r"c: together\[0\]: unknown table 'zz'"),
        ({"apart": [["a", "b"], ["c", "q"]]}, r"c: apart\[1\]: unknown table 'q'"),
        (
            {"pin": {"a": 0, "b": 1}, "together": [["a", "b"]]},
            r"c: together\[0\]: tables 'a' and 'b' must share a device but are pinned to "
            r"'dev0' and 'dev1'",
        ),
        (
            {"pin": {"a": 0, "c": 1}, "together": [["a", "b"], ["b", "c"]]},
            r"c: together\[0\]\+together\[1\]: tables 'a' and 'c' must share a device",
        ),
        (
            {"together": [["a", "b", "c"]], "apart": [["d", "c", "a"]]},
            r"c: apart\[0\]: tables 'a' and 'c' must be apart but together\[0\] puts them",
        ),
        (
            {"together": [["a", "b"], ["b", "c"]], "apart": [["b", "d"], ["c", "a"]]},
            r"c: apart\[1\]: tables 'a' and 'c' must be apart but together\[0\]\+together\[1\]",
        ),
        (
            {"pin": {"a": 1, "d": "dev1"}, "apart": [["a", "d"]]},
            r"c: apart\[0\]: tables 'a' and 'd' must be apart but are both pinned to 'dev1'",
        ),
        (
            {"pin": {"c": 2}, "together": [["c", "b"]], "apart": [["b", "a"]], "x": 0},
            r"c: unknown key 'x'",
        ),
        (
            {"apart": [["a", "b", "c", "d"]]},
            r"c: apart\[0\]: 4 tables must be on different devices but the task has 3 devices",
        ),
    ],
)
def test_bad_or_contradictory_constraints_are_named(
    four: Task, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        resolve_constraints(raw, four, "c")


def test_memory_that_cannot_suffice_is_named(four_tables: list[TableSpec]) -> None:
    # a 64,000  b 32,000  c 16,000  d 128,000 bytes; devices of 100,000 and 200,000 bytes.
    small_big = task(four_tables, [100_000, 200_000])
    with pytest.raises(
        InputError, match=r"c: pin 'd': the table needs 128,000 bytes but device 'dev0' has 100,000"
    ):
        resolve_constraints({"pin": {"d": "dev0"}}, small_big, "c")
    with pytest.raises(
        InputError,
        match=r"c: pin: tables \['a', 'b', 'c'\] \(pinned or together with a pinned table\) "
        r"need 112,000 bytes but device 'dev0' has 100,000",
    ):
        resolve_constraints({"pin": {"a": 0, "c": 0}, "together": [["c", "b"]]}, small_big, "c")
    with pytest.raises(
        InputError,
        match=r"c: together\[0\]\+together\[1\]: its tables need 208,000 bytes on one "
        r"device, more than any device has \(200,000 bytes\)",
    ):
        resolve_constraints({"together": [["a", "c"], ["d", "c"]]}, small_big, "c")
    # The same tables fit where the memory suffices.
    resolve_constraints({"pin": {"d": "dev1"}, "together": [["a", "b", "c"]]}, small_big, "c")


def test_pool_spec_applies_to_the_tables_a_task_has(four_tables: list[TableSpec]) -> None:
    spec = parse_constraints(
        {"pin": {"a": 1, "x": 0}, "together": [["b", "x"], ["c", "d"]], "apart": [["x", "y"]]},
        "suite-rules.json",
    ).within(["a", "b", "c", "d", "x", "y"])
    resolved = spec.resolve(task(four_tables, [BIG, BIG]))
    assert resolved == Constraints(pins={0: 1}, together=((2, 3),), apart=())
    with pytest.raises(InputError, match=r"suite-rules\.json: pin 'x': unknown table 'x'"):
        ConstraintSpec(pins=(("x", 0),), where="suite-rules.json").resolve(task(four_tables, [BIG]))


# -- checking a placement ---------------------------------------------------------------


def test_check_names_the_broken_constraint(four: Task) -> None:
    rules = resolve_constraints(
        {"pin": {"d": "dev2"}, "together": [["a", "b"]], "apart": [["a", "c", "d"]]}, four
    )
    rules.check(Placement((0, 0, 1, 2)), four)
    with pytest.raises(
        InvalidPlacementError, match=r"table 'd' is pinned to device 'dev2' but placed on 'dev1'"
    ):
        rules.check(Placement((0, 0, 2, 1)), four)
    with pytest.raises(
        InvalidPlacementError, match=r"together group \['a', 'b'\]: 'a' is on 'dev0' but 'b' on"
    ):
        rules.check(Placement((0, 1, 1, 2)), four)
    with pytest.raises(
        InvalidPlacementError,
        match=r"apart group \['a', 'c', 'd'\]: 'a' and 'c' are both on 'dev0'",
    ):
        rules.check(Placement((0, 0, 0, 2)), four)
    with pytest.raises(InvalidPlacementError, match="placement covers 3 tables"):
        rules.check(Placement((0, 0, 1)), four)


# -- the tracker for sequential placers -------------------------------------------------


def test_tracker_without_constraints_counts_placed_memory_only(four: Task) -> None:
    tracker = ConstraintTracker(four, Constraints())
    assert tracker.allowed(0) == [0, 1, 2]
    tracker.place(0, [1])
    assert tracker.used.tolist() == [[0, 64_000, 0]]
    assert tracker.device_of.tolist() == [[1, -1, -1, -1]]


def test_tracker_pins_together_and_apart(four: Task) -> None:
    rules = resolve_constraints(
        {"pin": {"d": 2}, "together": [["a", "b"]], "apart": [["a", "c"], ["b", "d"]]}, four
    )
    tracker = ConstraintTracker(four, rules)
    assert tracker.used.tolist() == [[0, 0, 128_000]]  # d reserved on its pin from the start
    assert tracker.allowed(3) == [2]
    # a: not dev2, where b's apart-mate d is pinned.
    assert tracker.allowed(0) == [0, 1]
    tracker.place(0, [1])
    assert tracker.used.tolist() == [[0, 96_000, 128_000]]  # a and b reserved together
    assert tracker.allowed(1) == [1]  # b joins a
    assert tracker.allowed(2) == [0, 2]  # c avoids a
    tracker.place(1, [1])
    tracker.place(3, [2])
    assert tracker.used.tolist() == [[0, 96_000, 128_000]]  # nothing counted twice


def test_tracker_keeps_apart_from_a_mate_the_group_will_follow(four: Task) -> None:
    # a and b together, c apart from a: once b is placed, a must follow it, so c may not
    # take b's device even before a is placed (an rnn sample broke this).
    rules = resolve_constraints({"together": [["a", "b"]], "apart": [["a", "c"]]}, four)
    tracker = ConstraintTracker(four, rules)
    tracker.place(1, [0])
    assert tracker.allowed(2) == [1, 2]
    tracker.place(2, [1])
    assert tracker.allowed(0) == [0]
    tracker.place(0, [0])
    rules.check(Placement(tuple(int(d) for d in tracker.device_of[0])), four)


def test_tracker_reserves_a_groups_memory_at_its_first_table(four_tables: list[TableSpec]) -> None:
    # Devices of 100,000 bytes; a (64k) with c (16k) needs 80k. After a goes to dev0, b
    # (32k) no longer fits there, though a + b alone would.
    t = task(four_tables[:3], [100_000, 100_000])
    tracker = ConstraintTracker(t, resolve_constraints({"together": [["a", "c"]]}, t))
    tracker.place(0, [0])
    assert tracker.allowed(1) == [1]
    assert tracker.allowed(2) == [0]


def test_tracker_masks_episodes_independently(four: Task) -> None:
    rules = resolve_constraints({"together": [["a", "b"]], "apart": [["a", "c"]]}, four)
    tracker = ConstraintTracker(four, rules, batch=2)
    tracker.place(0, np.array([0, 2]))
    assert tracker.legal(1).tolist() == [[True, False, False], [False, False, True]]
    assert tracker.legal(2).tolist() == [[False, True, True], [True, True, False]]


def test_tracker_errors_say_why(four_tables: list[TableSpec]) -> None:
    t = task(four_tables, [100_000, 200_000])
    plain = ConstraintTracker(t, Constraints())
    plain.place(3, [1])
    plain.place(0, [0])
    error = plain.infeasible(1)
    assert type(error) is InfeasiblePlacementError
    assert error.free_bytes == [36_000, 72_000]
    rules = resolve_constraints({"together": [["a", "b"]], "apart": [["a", "d"]]}, t)
    tracker = ConstraintTracker(t, rules)
    tracker.place(3, [1])
    tracker.place(2, [0])
    assert tracker.allowed(0) == []
    message = str(tracker.infeasible(0))
    assert isinstance(tracker.infeasible(0), ConstrainedInfeasibleError)
    assert message == (
        "table 'a' cannot be placed: its together group ['a', 'b'] needs one device; its "
        "apart-mates hold 'dev1'; no device it may take has 96,000 bytes free"
    )
    pinned = ConstraintTracker(t, resolve_constraints({"pin": {"a": 0}}, t))
    assert "it is pinned to 'dev0'" in str(pinned.infeasible(0))


def test_a_small_placement_search_agrees_with_check(four: Task) -> None:
    """Every placement the tracker allows (built table by table) passes ``check``, and
    every placement that passes ``check`` and fits is reachable: exact on 3^4 cases."""
    rules = resolve_constraints(
        {"pin": {"c": 1}, "together": [["a", "d"]], "apart": [["a", "b"]]}, four
    )
    reachable: set[tuple[int, ...]] = set()

    def extend(prefix: list[int]) -> None:
        tracker = ConstraintTracker(four, rules)
        for i, d in enumerate(prefix):
            tracker.place(i, [d])
        if len(prefix) == four.num_tables:
            reachable.add(tuple(prefix))
            return
        for d in tracker.allowed(len(prefix)):
            extend([*prefix, d])

    extend([])
    valid = set()
    for k in range(3**4):
        device_of = tuple((k // 3**i) % 3 for i in range(4))
        try:
            rules.check(Placement(device_of), four)
        except InvalidPlacementError:
            continue
        valid.add(device_of)
    assert reachable == valid
    assert len(valid) == 6  # a, d on one of 3; b on another of the other 2; c on dev1


def test_spec_built_in_code_is_checked_as_a_file_is() -> None:
    with pytest.raises(InputError, match=r"api: pin: table 'a' is pinned twice"):
        ConstraintSpec(pins=(("a", 0), ("a", 1)), where="api")
    with pytest.raises(InputError, match=r"api: apart\[0\]: a group needs at least 2 tables"):
        ConstraintSpec(apart=(("a",),), where="api")
    with pytest.raises(InputError, match=r"api: together\[0\]: table 'b' is named twice"):
        ConstraintSpec(together=(("b", "b"),), where="api")


@pytest.mark.parametrize("memory", [10**19, 10**30])
def test_tracker_counts_devices_beyond_int64_as_ample(four: Task, memory: int) -> None:
    huge = task(list(four.tables), [memory, 100_000])
    tracker = ConstraintTracker(huge, Constraints())
    tracker.place(3, [0])
    assert tracker.allowed(0) == [0, 1]
    assert tracker.infeasible(0).free_bytes == [memory - 128_000, 100_000]


def test_tracker_refuses_tables_beyond_int64_bytes() -> None:
    t = task([table("huge", rows=10**18, dim=16)], [BIG])
    with pytest.raises(InputError, match="task 't': its tables need 64,000,000,000,000,000,000"):
        ConstraintTracker(t, Constraints())


def test_first_fit_with_constraints(four_tables: list[TableSpec]) -> None:
    # 240,000 bytes on two devices of 130,000: d alone on one, a + b + c on the other.
    t = task(four_tables, [130_000, 130_000])
    assert fits_with_constraints(t, Constraints()) and fits_memory(t)
    assert fits_with_constraints(t, resolve_constraints({"apart": [["a", "d"]]}, t))
    assert not fits_with_constraints(t, resolve_constraints({"apart": [["a", "b"]]}, t))
    tight = task(four_tables, [130_000, 100_000])
    assert not fits_with_constraints(tight, Constraints()) and not fits_memory(tight)
