"""Placement tasks and train/test task suites (METHOD.md section 7).

The table pool is split into two disjoint halves at random; training tasks draw their
tables from the first half and test tasks from the second, so test tasks hold tables no
model has seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dreamshard.constants import MAX_DEVICES
from dreamshard.data.tables import table_to_record, tables_from_json
from dreamshard.errors import InputError
from dreamshard.fileio import read_json, write_json
from dreamshard.types import Device, Placement, TableSpec, Task

SUITE_FORMAT = "dreamshard-task-suite"
SUITE_VERSION = 1
SPLITS = ("train", "test")

#: How many random draws of a task's tables are tried before giving up on memory.
MAX_DRAWS_PER_TASK = 200


def make_devices(num_devices: int, memory_bytes: int) -> tuple[Device, ...]:
    """``num_devices`` identical devices named ``dev0``, ``dev1``, ..."""
    if num_devices < 1:
        raise InputError(f"number of devices must be at least 1, got {num_devices}")
    if num_devices > MAX_DEVICES:
        raise InputError(f"number of devices must be at most {MAX_DEVICES:,}, got {num_devices}")
    return tuple(Device(name=f"dev{i}", memory_bytes=memory_bytes) for i in range(num_devices))


def make_task(
    name: str,
    tables: Sequence[TableSpec],
    devices: Sequence[Device],
    optimizer: str = "sgd",
    devices_per_host: int | None = None,
) -> Task:
    """A task whose tables fit in its devices' memory together.

    Args:
        devices_per_host: Devices per host (TorchRec's ``local_world_size``); None: one
            host holds every device.

    Raises:
        InputError: no devices, no tables, duplicate table or device names, a host size
            that does not divide the devices, or tables needing more memory than all
            devices have.
    """
    if not devices:
        raise InputError(f"task {name!r}: needs at least one device")
    # Placements name devices; two of one name would make them ambiguous.
    twice = _first_repeat(d.name for d in devices)
    if twice is not None:
        raise InputError(f"task {name!r}: duplicate device name {twice!r}")
    if not tables:
        raise InputError(f"task {name!r}: needs at least one table")
    try:
        task = Task(
            name=name,
            tables=tuple(tables),
            devices=tuple(devices),
            optimizer=optimizer,
            devices_per_host=devices_per_host,
        )
    except ValueError as err:
        raise InputError(str(err)) from None
    # A table larger than every device is allowed: placers that split tables place its
    # shards (method/split.py), the others say they cannot place it.
    needed = sum(task.table_memory_bytes(t) for t in task.tables)
    total = sum(d.memory_bytes for d in task.devices)
    if needed > total:
        largest = max(task.tables, key=task.table_memory_bytes)
        raise InputError(
            f"task {name!r}: its tables need {needed:,} bytes in all (the largest, table "
            f"{largest.name!r}, {task.table_memory_bytes(largest):,}), more than the "
            f"{task.num_devices} devices have together ({total:,} bytes)"
        )
    return task


def _first_repeat(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def first_fit_decreasing(task: Task) -> Placement | None:
    """A placement of ``task`` that fits memory by first-fit decreasing, or None: largest
    table first, each onto the device with the least memory in use among those with room
    (ties: the lower index).

    A memory packing, not a cost-aware placer: suite generation uses it to check a draw
    (:func:`fits_memory`) and training falls back to it where a policy dead-ends. On
    tasks with SGD it places exactly as the ``size`` expert rule does (whose proxy is then
    the memory itself). A task it cannot pack may still have a placement.
    """
    need = [task.table_memory_bytes(t) for t in task.tables]
    used = [0] * task.num_devices
    device_of = [0] * task.num_tables
    for i in sorted(range(task.num_tables), key=lambda i: -need[i]):
        room = [
            d for d in range(task.num_devices) if used[d] + need[i] <= task.devices[d].memory_bytes
        ]
        if not room:
            return None
        device_of[i] = min(room, key=lambda d: (used[d], d))
        used[device_of[i]] += need[i]
    return Placement(tuple(device_of))


def fits_memory(task: Task) -> bool:
    """Whether :func:`first_fit_decreasing` packs the tables of ``task`` into its devices."""
    return first_fit_decreasing(task) is not None


@dataclass(frozen=True)
class SuiteConfig:
    """How a suite was generated (saved with it).

    Attributes:
        num_train: Training tasks.
        num_test: Test tasks.
        min_tables: Fewest tables per task.
        max_tables: Most tables per task (equal to ``min_tables`` for a fixed count).
        num_devices: Devices per task.
        memory_bytes: Memory of each device.
        seed: Seed of the split and the draws.
    """

    num_train: int
    num_test: int
    min_tables: int
    max_tables: int
    num_devices: int
    memory_bytes: int
    seed: int


@dataclass(frozen=True)
class TaskSuite:
    """Training and test tasks drawn from disjoint halves of one table pool."""

    config: SuiteConfig
    train: tuple[Task, ...]
    test: tuple[Task, ...]

    def __post_init__(self) -> None:
        # Results and placements are keyed by task name: two tasks of one name would mix.
        twice = _first_repeat(t.name for t in (*self.train, *self.test))
        if twice is not None:
            raise InputError(f"task suite: duplicate task name {twice!r}")

    def split(self, name: str) -> tuple[Task, ...]:
        """The tasks of split ``"train"`` or ``"test"``."""
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r} (use {' or '.join(SPLITS)})")
        return self.train if name == "train" else self.test


def generate_suite(
    pool: Sequence[TableSpec],
    config: SuiteConfig,
    devices: Sequence[Device] | None = None,
) -> TaskSuite:
    """Draw train and test tasks from disjoint random halves of ``pool``.

    Each task's tables are drawn without replacement from its half; a draw whose tables
    cannot be placed within the devices' memory (:func:`fits_memory`) is redrawn.

    Args:
        pool: The tables to draw from.
        config: Sizes and seed.
        devices: The devices of every task (a topology file's, which may differ in
            memory); default ``config.num_devices`` devices of ``config.memory_bytes``.
            Given, they must number ``config.num_devices``, and ``config.memory_bytes``
            should be the largest one's memory (what the suite file records).

    Raises:
        InputError: bad sizes, or memory too small for any draw.
    """
    if config.num_train < 0 or config.num_test < 0:
        raise InputError("numbers of tasks must be >= 0")
    if not 1 <= config.min_tables <= config.max_tables:
        raise InputError(
            f"tables per task must be a range 1 <= min <= max, got "
            f"{config.min_tables}-{config.max_tables}"
        )
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(pool))
    half = len(pool) // 2
    halves = {"train": [pool[i] for i in order[:half]], "test": [pool[i] for i in order[half:]]}
    if devices is None:
        task_devices = make_devices(config.num_devices, config.memory_bytes)
    else:
        task_devices = tuple(devices)
        if len(task_devices) != config.num_devices:
            raise InputError(
                f"{len(task_devices)} devices given for a suite of {config.num_devices} devices"
            )
    suites: dict[str, list[Task]] = {"train": [], "test": []}
    for split, count in (("train", config.num_train), ("test", config.num_test)):
        candidates = halves[split]
        if count and len(candidates) < config.max_tables:
            raise InputError(
                f"the {split} half of the pool has {len(candidates)} tables, fewer than the "
                f"{config.max_tables} tables per task asked for (use a larger pool)"
            )
        for k in range(count):
            suites[split].append(_draw_task(f"{split}-{k}", candidates, task_devices, config, rng))
    return TaskSuite(config=config, train=tuple(suites["train"]), test=tuple(suites["test"]))


def _draw_task(
    name: str,
    candidates: Sequence[TableSpec],
    devices: tuple[Device, ...],
    config: SuiteConfig,
    rng: np.random.Generator,
) -> Task:
    for _ in range(MAX_DRAWS_PER_TASK):
        size = int(rng.integers(config.min_tables, config.max_tables + 1))
        chosen = rng.choice(len(candidates), size=size, replace=False)
        tables = [candidates[i] for i in sorted(chosen)]
        largest = max(d.memory_bytes for d in devices)
        fits_alone = all(t.size_bytes <= largest for t in tables)
        if not fits_alone:
            continue
        task = Task(name=name, tables=tuple(tables), devices=devices)
        if fits_memory(task):
            return task
    raise InputError(
        f"could not draw task {name!r}: in {MAX_DRAWS_PER_TASK} draws no set of tables fit on "
        f"{config.num_devices} devices of {config.memory_bytes:,} bytes (give more memory)"
    )


def suite_to_json(suite: TaskSuite) -> dict[str, Any]:
    """The JSON payload of a suite file: every table once, tasks by table name."""
    tables: dict[str, TableSpec] = {}
    for task in (*suite.train, *suite.test):
        for table in task.tables:
            tables[table.name] = table

    def task_record(task: Task) -> dict[str, Any]:
        return {
            "name": task.name,
            "tables": [t.name for t in task.tables],
            "devices": [{"name": d.name, "memory_bytes": d.memory_bytes} for d in task.devices],
            "optimizer": task.optimizer,
        }

    return {
        "format": SUITE_FORMAT,
        "version": SUITE_VERSION,
        "config": vars(suite.config),
        "tables": [table_to_record(t) for t in tables.values()],
        "train": [task_record(t) for t in suite.train],
        "test": [task_record(t) for t in suite.test],
    }


def save_suite(path: str | Path, suite: TaskSuite) -> None:
    """Write a suite file (JSON), atomically."""
    write_json(path, suite_to_json(suite))


def load_suite(path: str | Path) -> TaskSuite:
    """Read and validate a suite file written by :func:`save_suite`.

    Raises:
        InputError: naming the file and the bad field, task or table.
    """
    where = str(path)
    if Path(path).is_dir():
        raise InputError(f"{where}: is a folder, expected a task suite file")
    payload = read_json(path)
    if not isinstance(payload, dict) or payload.get("format") != SUITE_FORMAT:
        raise InputError(
            f"{where}: not a task suite file (field 'format' must be {SUITE_FORMAT!r})"
        )
    if payload.get("version") != SUITE_VERSION:
        raise InputError(
            f"{where}: suite file version {payload.get('version')!r}, this program reads "
            f"version {SUITE_VERSION}"
        )
    try:
        config = SuiteConfig(**payload["config"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{where}: field 'config' is invalid ({err})") from None
    for field in fields(SuiteConfig):
        value = getattr(config, field.name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(
                f"{where}: field 'config.{field.name}' must be an integer, got {value!r}"
            )
    tables = {t.name: t for t in tables_from_json(payload, where)}
    splits: dict[str, list[Task]] = {}
    first_at: dict[str, str] = {}
    for split in SPLITS:
        records = payload.get(split)
        if not isinstance(records, list):
            raise InputError(f"{where}: field {split!r} must be a list of tasks")
        splits[split] = []
        for i, record in enumerate(records):
            task = _task_from_record(record, tables, f"{where}: {split}[{i}]")
            if task.name in first_at:
                raise InputError(
                    f"{where}: {split}[{i}]: duplicate task name {task.name!r} "
                    f"(first at {first_at[task.name]})"
                )
            first_at[task.name] = f"{split}[{i}]"
            splits[split].append(task)
    return TaskSuite(config=config, train=tuple(splits["train"]), test=tuple(splits["test"]))


def _task_from_record(record: Any, tables: dict[str, TableSpec], where: str) -> Task:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object")
    try:
        names = list(record["tables"])
        device_records = list(record["devices"])
        name = str(record["name"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{where}: missing or invalid field {err}") from None
    unknown = [n for n in names if n not in tables]
    if unknown:
        raise InputError(f"{where}: unknown table {unknown[0]!r}")
    devices = []
    for j, device in enumerate(device_records):
        try:
            memory = device["memory_bytes"]
            device_name = str(device["name"])
        except (KeyError, TypeError) as err:
            raise InputError(f"{where}: devices[{j}]: missing or invalid field {err}") from None
        # Suite files hold whole bytes as JSON integers; int() would also take "1_000",
        # non-ASCII digits and 2.5 (truncated), so anything else is refused.
        if isinstance(memory, bool) or not isinstance(memory, int):
            raise InputError(
                f"{where}: devices[{j}]: field 'memory_bytes' must be a positive integer, "
                f"got {memory!r}"
            )
        if memory <= 0:
            raise InputError(f"{where}: devices[{j}]: 'memory_bytes' must be positive")
        devices.append(Device(name=device_name, memory_bytes=memory))
    optimizer = str(record.get("optimizer", "sgd"))
    try:
        return make_task(name, [tables[n] for n in names], devices, optimizer)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
