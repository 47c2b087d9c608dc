from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import (
    SuiteConfig,
    TaskSuite,
    fits_memory,
    generate_suite,
    load_suite,
    make_devices,
    make_task,
    save_suite,
)
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.types import Device, TableSpec, Task

from .conftest import table

# generate_table_pool(max_rows=10000, dim 16): every table holds at most 640,000 bytes.
MEMORY = 1_500_000
CONFIG = SuiteConfig(
    num_train=6, num_test=4, min_tables=3, max_tables=6, num_devices=2, memory_bytes=MEMORY, seed=0
)


@pytest.fixture(scope="module")
def pool() -> list[TableSpec]:
    return generate_table_pool(num_tables=60, seed=0, max_rows=10000)


@pytest.fixture(scope="module")
def suite(pool: list[TableSpec]) -> TaskSuite:
    return generate_suite(pool, CONFIG)


# -- devices and tasks ------------------------------------------------------------------------


def test_make_devices() -> None:
    assert make_devices(2, 100) == (Device("dev0", 100), Device("dev1", 100))


@pytest.mark.parametrize("count", [0, -1])
def test_make_devices_needs_one(count: int) -> None:
    with pytest.raises(InputError, match=f"number of devices must be at least 1, got {count}"):
        make_devices(count, 10**9)


def test_make_task_table_exactly_filling_a_device() -> None:
    t = table("a", rows=100, dim=4)  # 1,600 bytes
    task = make_task("job", [t], make_devices(2, 1_600))
    assert task.tables == (t,) and task.num_devices == 2


def test_make_task_accepts_a_table_larger_than_every_device() -> None:
    # Placers that split tables place its shards; the others name it (test_sharding.py).
    tables = [table("small", rows=10, dim=4), table("big", rows=100, dim=4)]  # 160, 1,600 bytes
    devices = (Device("d0", 1_000), Device("d1", 1_599))
    assert make_task("job", tables, devices).tables[1].name == "big"


def test_make_task_refuses_tables_beyond_all_devices_together() -> None:
    tables = [table("small", rows=10, dim=4), table("big", rows=100, dim=4)]  # 1,760 bytes
    devices = (Device("d0", 1_000), Device("d1", 759))
    with pytest.raises(InputError) as err:
        make_task("job", tables, devices)
    assert str(err.value) == (
        "task 'job': its tables need 1,760 bytes in all (the largest, table 'big', 1,600), "
        "more than the 2 devices have together (1,759 bytes)"
    )


def test_make_task_counts_optimizer_state() -> None:
    # rowwise_adagrad keeps 4 bytes per row: 100 rows x (16 + 4) bytes = 2,000 > 1,600.
    t = table("a", rows=100, dim=4)
    make_task("job", [t], make_devices(1, 1_600), optimizer="sgd")
    with pytest.raises(InputError, match="tables need 2,000 bytes in all"):
        make_task("job", [t], make_devices(1, 1_600), optimizer="rowwise_adagrad")


@pytest.mark.parametrize(
    ("tables", "devices", "problem"),
    [
        ([table("a")], (), "task 'job': needs at least one device"),
        ([], make_devices(1, 10**9), "task 'job': needs at least one table"),
        ([table("a"), table("a")], make_devices(1, 10**9), "duplicate table name 'a'"),
    ],
)
def test_make_task_errors(
    tables: list[TableSpec], devices: tuple[Device, ...], problem: str
) -> None:
    with pytest.raises(InputError) as err:
        make_task("job", tables, devices)
    assert problem in str(err.value)


def test_make_task_unknown_optimizer() -> None:
    with pytest.raises(InputError, match="unknown optimizer 'adam'"):
        make_task("job", [table("a")], make_devices(1, 10**9), optimizer="adam")


# -- suites ------------------------------------------------------------------------------------


def test_suite_counts_and_names(suite: TaskSuite) -> None:
    assert [t.name for t in suite.train] == [f"train-{k}" for k in range(6)]
    assert [t.name for t in suite.test] == [f"test-{k}" for k in range(4)]
    assert suite.config == CONFIG
    assert suite.split("train") == suite.train and suite.split("test") == suite.test


def test_suite_train_and_test_tables_disjoint(suite: TaskSuite, pool: list[TableSpec]) -> None:
    train = {t.name for task in suite.train for t in task.tables}
    test = {t.name for task in suite.test for t in task.tables}
    assert train and test
    assert not train & test
    # Each split draws from its own half of the pool (30 tables).
    assert len(train) <= 30 and len(test) <= 30
    by_name = {t.name: t for t in pool}
    for task in (*suite.train, *suite.test):
        assert all(by_name[t.name] == t for t in task.tables)


def test_suite_tasks_within_range_and_placeable(suite: TaskSuite) -> None:
    sizes = set()
    for task in (*suite.train, *suite.test):
        assert 3 <= task.num_tables <= 6
        assert len({t.name for t in task.tables}) == task.num_tables
        assert task.devices == make_devices(2, MEMORY)
        GreedyPlacer("size").place(task).validate(task)
        sizes.add(task.num_tables)
    assert len(sizes) > 1  # the count is drawn, not fixed


def test_suite_fixed_table_count(pool: list[TableSpec]) -> None:
    config = dataclasses.replace(CONFIG, min_tables=4, max_tables=4)
    suite = generate_suite(pool, config)
    assert {task.num_tables for task in (*suite.train, *suite.test)} == {4}


def test_suite_same_seed_same_suite(pool: list[TableSpec], suite: TaskSuite) -> None:
    assert generate_suite(pool, CONFIG) == suite


def test_suite_other_seed_other_suite(pool: list[TableSpec], suite: TaskSuite) -> None:
    other = generate_suite(pool, dataclasses.replace(CONFIG, seed=1))
    names = [[t.name for t in task.tables] for task in (*suite.train, *suite.test)]
    other_names = [[t.name for t in task.tables] for task in (*other.train, *other.test)]
    assert names != other_names


def test_suite_tight_memory_redraws_until_placeable(pool: list[TableSpec]) -> None:
    # Two devices of 700 kB: some draws of 4-6 tables do not fit and must be redrawn.
    config = dataclasses.replace(CONFIG, memory_bytes=700_000, num_train=10, num_test=10)
    suite = generate_suite(pool, config)
    for task in (*suite.train, *suite.test):
        GreedyPlacer("size").place(task).validate(task)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"num_devices": 0}, "number of devices must be at least 1, got 0"),
        ({"min_tables": 0}, "tables per task must be a range 1 <= min <= max, got 0-6"),
        ({"min_tables": 7}, "tables per task must be a range 1 <= min <= max, got 7-6"),
        ({"num_test": -1}, "numbers of tasks must be >= 0"),
        ({"max_tables": 31}, "the train half of the pool has 30 tables, fewer than the 31"),
        ({"memory_bytes": 100}, "could not draw task 'train-0'"),
    ],
)
def test_suite_errors(pool: list[TableSpec], change: dict[str, int], problem: str) -> None:
    with pytest.raises(InputError) as err:
        generate_suite(pool, dataclasses.replace(CONFIG, **change))
    assert problem in str(err.value)


def test_suite_unknown_split(suite: TaskSuite) -> None:
    with pytest.raises(InputError, match="unknown split 'valid'"):
        suite.split("valid")


# -- suite files --------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, suite: TaskSuite) -> None:
    path = tmp_path / "suite.json"
    save_suite(path, suite)
    assert load_suite(path) == suite


def test_save_load_round_trip_optimizer(tmp_path: Path) -> None:
    task = make_task("job", [table("a"), table("b")], make_devices(2, 10**6), "rowwise_adagrad")
    config = dataclasses.replace(CONFIG, num_train=1, num_test=0)
    suite = TaskSuite(config=config, train=(task,), test=())
    save_suite(tmp_path / "s.json", suite)
    assert load_suite(tmp_path / "s.json") == suite


@pytest.fixture
def suite_payload(tmp_path: Path, suite: TaskSuite) -> dict:
    save_suite(tmp_path / "suite.json", suite)
    return json.loads((tmp_path / "suite.json").read_text())


def _load_error(tmp_path: Path, payload: dict) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError) as err:
        load_suite(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    return message


@pytest.mark.parametrize("fmt", ["dreamshard-tables", None])
def test_load_suite_wrong_format(tmp_path: Path, suite_payload: dict, fmt: str | None) -> None:
    suite_payload["format"] = fmt
    message = _load_error(tmp_path, suite_payload)
    assert "not a task suite file (field 'format' must be 'dreamshard-task-suite')" in message


def test_load_suite_table_file_is_not_a_suite(tmp_path: Path) -> None:
    message = _load_error(tmp_path, {"tables": []})
    assert "field 'format'" in message


def test_load_suite_wrong_version(tmp_path: Path, suite_payload: dict) -> None:
    suite_payload["version"] = 99
    assert "suite file version 99" in _load_error(tmp_path, suite_payload)


def test_load_suite_unknown_table(tmp_path: Path, suite_payload: dict) -> None:
    suite_payload["test"][1]["tables"][0] = "no-such-table"
    message = _load_error(tmp_path, suite_payload)
    assert message.endswith(": test[1]: unknown table 'no-such-table'")


def test_load_suite_bad_table_record(tmp_path: Path, suite_payload: dict) -> None:
    suite_payload["tables"][2]["dim"] = 6
    message = _load_error(tmp_path, suite_payload)
    assert ": tables[2] (table " in message and "field 'dim' must be a multiple of 4" in message


def test_load_suite_bad_config(tmp_path: Path, suite_payload: dict) -> None:
    del suite_payload["config"]["seed"]
    assert "field 'config' is invalid" in _load_error(tmp_path, suite_payload)


def test_load_suite_bad_device(tmp_path: Path, suite_payload: dict) -> None:
    suite_payload["train"][0]["devices"][1]["memory_bytes"] = 0
    message = _load_error(tmp_path, suite_payload)
    assert message.endswith(": train[0]: devices[1]: 'memory_bytes' must be positive")


def test_load_suite_missing_split(tmp_path: Path, suite_payload: dict) -> None:
    del suite_payload["train"]
    assert "field 'train' must be a list of tasks" in _load_error(tmp_path, suite_payload)


def test_load_suite_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_suite(tmp_path / "nope.json")


def test_fits_memory_hand_made_case() -> None:
    # Largest first onto the least-used device: 60 -> dev0, 50 -> dev1, 40 -> dev1 (50 < 60).
    tables = [table("a", rows=15), table("b", rows=10), table("c", rows=12)]  # 960, 640, 768 B
    assert fits_memory(Task("t", tuple(tables), (Device("d0", 960), Device("d1", 1408))))
    assert not fits_memory(Task("t", tuple(tables), (Device("d0", 960), Device("d1", 1407))))


def test_fits_memory_decides_as_the_size_rule_on_sgd_tasks(pool: list[TableSpec]) -> None:
    rng = np.random.default_rng(3)
    decided = set()
    for k in range(60):
        chosen = rng.choice(len(pool), size=12, replace=False)
        tables = tuple(pool[i] for i in chosen)
        # Around a third of the total, where first-fit decreasing sometimes fails.
        memory = int(sum(x.size_bytes for x in tables) / 3 * rng.uniform(1.0, 1.2))
        memory = max(memory, max(x.size_bytes for x in tables))
        t = Task(f"t{k}", tables, make_devices(3, memory))
        try:
            GreedyPlacer("size").place(t)
            placeable = True
        except InfeasiblePlacementError:
            placeable = False
        assert fits_memory(t) is placeable
        decided.add(placeable)
    assert decided == {True, False}  # the draws exercised both answers


# -- issue 12: duplicates and garbled fields in suite files ----------------------------------


def test_make_task_duplicate_device_name() -> None:
    devices = (Device("gpu", 10**9), Device("gpu", 10**9))
    with pytest.raises(InputError) as err:
        make_task("job", [table("a")], devices)
    assert str(err.value) == "task 'job': duplicate device name 'gpu'"


def test_load_suite_duplicate_device_name(tmp_path: Path, suite_payload: dict) -> None:
    task = suite_payload["train"][1]
    task["devices"][1]["name"] = task["devices"][0]["name"]
    message = _load_error(tmp_path, suite_payload)
    assert message.endswith(f": train[1]: task {task['name']!r}: duplicate device name 'dev0'")


def test_load_suite_duplicate_task_name(tmp_path: Path, suite_payload: dict) -> None:
    suite_payload["test"][2]["name"] = suite_payload["train"][0]["name"]
    message = _load_error(tmp_path, suite_payload)
    assert message.endswith(": test[2]: duplicate task name 'train-0' (first at train[0])")


def test_task_suite_refuses_duplicate_task_names(suite: TaskSuite) -> None:
    with pytest.raises(InputError, match="duplicate task name 'train-0'"):
        TaskSuite(config=suite.config, train=suite.train, test=(suite.train[0],))


@pytest.mark.parametrize("memory", ["lots", "1_000", "\u0661\u0660\u0660", 2.5, True, None])
def test_load_suite_garbled_device_memory_names_field(
    tmp_path: Path, suite_payload: dict, memory: object
) -> None:
    suite_payload["train"][0]["devices"][1]["memory_bytes"] = memory
    message = _load_error(tmp_path, suite_payload)
    assert message.endswith(
        f": train[0]: devices[1]: field 'memory_bytes' must be a positive integer, got {memory!r}"
    )


def test_load_suite_garbled_config_field(tmp_path: Path, suite_payload: dict) -> None:
    suite_payload["config"]["memory_bytes"] = "lots"
    message = _load_error(tmp_path, suite_payload)
    assert message.endswith(": field 'config.memory_bytes' must be an integer, got 'lots'")


def test_load_suite_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_suite(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a folder, expected a task suite file"


def test_suite_on_devices_of_different_memory(pool: list[TableSpec]) -> None:
    devices = (Device("big", 3_000_000), Device("small", 700_000))
    config = dataclasses.replace(CONFIG, memory_bytes=3_000_000)
    suite = generate_suite(pool, config, devices)
    assert all(t.devices == devices for t in (*suite.train, *suite.test))
    assert all(fits_memory(t) for t in (*suite.train, *suite.test))
    with pytest.raises(InputError, match="3 devices given for a suite of 2 devices"):
        generate_suite(pool, CONFIG, (*devices, Device("third", 10**9)))
