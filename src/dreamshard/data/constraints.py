"""User constraints on a placement: pinned tables, tables kept together, tables kept apart.

A constraints file is JSON::

    {"pin": {"user_id": "gpu0", "item_id": 1},
     "together": [["ad_id", "ad_category"]],
     "apart": [["user_id", "item_id", "query"]]}

``pin`` puts a table on one device, named or by index (rank). Each ``together`` group
lands on one device. The tables of each ``apart`` group land on pairwise different
devices. Every key is optional.

Two values: :class:`ConstraintSpec` is the file as written, by name, and applies to any
task (placers hold it and resolve it per task); :class:`Constraints` is a spec resolved
against one task, by index, checked up front for contradictions that are cheap to find,
and the thing placers and checks use. Together groups that share a table are merged: "a
with b" and "b with c" can only mean a, b and c on one device.

Sequential placers use :class:`ConstraintTracker`: which devices each next table may
take given the tables placed so far (one or many episodes at once), with a together
group's whole memory reserved on its device when its first table is placed, so a
group never finds its device full halfway.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dreamshard.errors import InfeasiblePlacementError, InputError, InvalidPlacementError
from dreamshard.types import IntArray, Placement, Task

#: The keys of a constraints file.
CONSTRAINT_KEYS: tuple[str, ...] = ("pin", "together", "apart")

#: The most bytes the tracker counts (in int64, as the MDP does).
INT64_MAX = 2**63 - 1

#: Boolean arrays: the device masks of :meth:`ConstraintTracker.legal`.
BoolArray = npt.NDArray[np.bool_]


# -- the file, by name ------------------------------------------------------------------


@dataclass(frozen=True)
class ConstraintSpec:
    """Constraints as written, by table and device name (or device index).

    Attributes:
        pins: (table, device) pairs; a device is a name or an index.
        together: Groups of tables that share one device.
        apart: Groups of tables on pairwise different devices.
        where: Where the spec came from, for error messages (a file name).
        pool: Tables the spec may name beyond a task's own (a suite's tables): a
            constraint on a pool table that a task lacks does not apply to that task.
            None: every table named must be in the task.
    """

    pins: tuple[tuple[str, str | int], ...] = ()
    together: tuple[tuple[str, ...], ...] = ()
    apart: tuple[tuple[str, ...], ...] = ()
    where: str = "constraints"
    pool: frozenset[str] | None = None

    def __post_init__(self) -> None:
        pinned = [name for name, _ in self.pins]
        twice = [n for k, n in enumerate(pinned) if n in pinned[:k]]
        if twice:
            raise InputError(f"{self.where}: pin: table {twice[0]!r} is pinned twice")
        for key, groups in (("together", self.together), ("apart", self.apart)):
            for k, group in enumerate(groups):
                loc = f"{self.where}: {key}[{k}]"
                if len(group) < 2:
                    raise InputError(f"{loc}: a group needs at least 2 tables, got {len(group)}")
                twice = [n for j, n in enumerate(group) if n in group[:j]]
                if twice:
                    raise InputError(f"{loc}: table {twice[0]!r} is named twice")

    @property
    def is_empty(self) -> bool:
        return not (self.pins or self.together or self.apart)

    def within(self, tables: Iterable[str]) -> ConstraintSpec:
        """This spec for the tasks of a suite whose tables are ``tables``."""
        return ConstraintSpec(self.pins, self.together, self.apart, self.where, frozenset(tables))

    def resolve(self, task: Task) -> Constraints:
        """The spec for ``task``, by index (see :func:`resolve_constraints`)."""
        return resolve_constraints(self, task)


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it saw twice (``json`` keeps the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        keys = [k for k, _ in pairs]
        self.duplicates = [k for n, k in enumerate(keys) if k in keys[:n]]


def _table_name(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InputError(f"{where}: a table must be named by a non-empty string, got {raw!r}")
    return raw.strip()


def _group(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise InputError(f"{where}: expected a list of table names, got {raw!r}")
    return tuple(_table_name(n, where) for n in raw)


def parse_constraints(payload: Any, where: str = "constraints") -> ConstraintSpec:
    """Validate the payload of a constraints file (as parsed JSON).

    Checks the shape only (and :class:`ConstraintSpec` that no table is pinned twice,
    every group has 2 tables or more and names each once); what depends on a task
    (names, memory, contradictions) is checked by :func:`resolve_constraints`.

    Raises:
        InputError: naming ``where`` and the constraint.
    """
    if not isinstance(payload, dict):
        raise InputError(f"{where}: expected an object with 'pin', 'together' or 'apart'")
    if isinstance(payload, _Object) and payload.duplicates:
        raise InputError(f"{where}: key {payload.duplicates[0]!r} appears twice")
    unknown = sorted(set(payload) - set(CONSTRAINT_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (keys: pin, together, apart)")
    pin_raw = payload.get("pin", {})
    if not isinstance(pin_raw, dict):
        raise InputError(f"{where}: pin: expected an object table -> device, got {pin_raw!r}")
    if isinstance(pin_raw, _Object) and pin_raw.duplicates:
        raise InputError(f"{where}: pin: table {pin_raw.duplicates[0]!r} is pinned twice")
    pins: list[tuple[str, str | int]] = []
    for name_raw, device in pin_raw.items():
        name = _table_name(name_raw, f"{where}: pin")
        loc = f"{where}: pin {name!r}"
        if isinstance(device, bool) or not isinstance(device, str | int):
            raise InputError(f"{loc}: a device is a name or an index, got {device!r}")
        if isinstance(device, str) and not device.strip():
            raise InputError(f"{loc}: the device name is empty")
        pins.append((name, device.strip() if isinstance(device, str) else device))
    groups: dict[str, tuple[tuple[str, ...], ...]] = {}
    for key in ("together", "apart"):
        raw = payload.get(key, [])
        if not isinstance(raw, list):
            raise InputError(f"{where}: {key}: expected a list of groups of table names")
        groups[key] = tuple(_group(g, f"{where}: {key}[{k}]") for k, g in enumerate(raw))
    return ConstraintSpec(tuple(pins), groups["together"], groups["apart"], where)


def read_constraints(path: str | Path) -> ConstraintSpec:
    """Read a constraints file (JSON), by name; resolve it per task with ``spec.resolve(task)``.

    Raises:
        InputError: a missing or malformed file, or a malformed constraint, naming the
            file and the constraint.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    try:
        payload = json.loads(source.read_text(encoding="utf-8-sig"), object_pairs_hook=_Object)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a UTF-8 text file") from None
    return parse_constraints(payload, str(source))


def load_constraints(path: str | Path, task: Task) -> Constraints:
    """Read a constraints file and resolve it against ``task``.

    Raises:
        InputError: as :func:`read_constraints` and :func:`resolve_constraints`.
    """
    return resolve_constraints(read_constraints(path), task)


# -- resolved against one task, by index ------------------------------------------------


@dataclass(frozen=True)
class Constraints:
    """Constraints of one task, by index; build with :func:`resolve_constraints`.

    Attributes:
        pins: Table index -> device index.
        together: Disjoint groups of table indices (merged where the file's groups
            share a table), each sorted, each of at least 2 tables.
        apart: Groups of table indices on pairwise different devices, each sorted.
    """

    pins: Mapping[int, int] = field(default_factory=dict)
    together: tuple[tuple[int, ...], ...] = ()
    apart: tuple[tuple[int, ...], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.pins or self.together or self.apart)

    def group_of(self, table: int) -> tuple[int, ...]:
        """The together group holding ``table`` (just ``(table,)`` when in none)."""
        return next((g for g in self.together if table in g), (table,))

    def reserved_bytes(self, task: Task, table: int) -> int:
        """Memory the device of ``table`` must hold for its whole together group."""
        return sum(task.table_memory_bytes(task.tables[i]) for i in self.group_of(table))

    def pinned_device(self, table: int) -> int | None:
        """The device of ``table`` fixed by a pin on it or on a together-mate."""
        return next((self.pins[i] for i in self.group_of(table) if i in self.pins), None)

    def check(self, placement: Placement, task: Task) -> None:
        """Raise InvalidPlacementError naming the first constraint ``placement`` breaks.

        Memory and device ranges are :meth:`Placement.validate`'s job; this checks the
        constraints only. In a split placement, a table a constraint names must be whole.
        """
        units = placement.units(task)
        if len(placement.device_of) != len(units):
            raise InvalidPlacementError(
                f"placement covers {len(placement.device_of)} tables, task {task.name!r} has "
                f"{len(units)}"
            )
        device_of = placement.device_of
        if not placement.is_table_wise:
            # Device of each whole table (-1: split), by table index.
            split = {s.table for s in placement.splits}
            named = {*self.pins, *(i for g in (*self.together, *self.apart) for i in g)}
            for i in sorted(named & split):
                raise InvalidPlacementError(
                    f"table {task.tables[i].name!r} is named in constraints but split"
                )
            unit_of = {u.name: k for k, u in enumerate(units)}
            device_of = tuple(
                -1 if i in split else placement.device_of[unit_of[t.name]]
                for i, t in enumerate(task.tables)
            )

        def name(d: int) -> str:
            return task.devices[d].name if 0 <= d < task.num_devices else str(d)

        tables = task.tables
        for i, d in sorted(self.pins.items()):
            if device_of[i] != d:
                raise InvalidPlacementError(
                    f"table {tables[i].name!r} is pinned to device {name(d)!r} but placed on "
                    f"{name(device_of[i])!r}"
                )
        for group in self.together:
            first = group[0]
            other = next((i for i in group if device_of[i] != device_of[first]), None)
            if other is not None:
                raise InvalidPlacementError(
                    f"together group {_names(task, group)}: {tables[first].name!r} is on "
                    f"{name(device_of[first])!r} but {tables[other].name!r} on "
                    f"{name(device_of[other])!r}"
                )
        for group in self.apart:
            for k, i in enumerate(group):
                j = next((j for j in group[:k] if device_of[j] == device_of[i]), None)
                if j is not None:
                    raise InvalidPlacementError(
                        f"apart group {_names(task, group)}: {tables[j].name!r} and "
                        f"{tables[i].name!r} are both on {name(device_of[i])!r}"
                    )


#: No constraints (any task).
NO_CONSTRAINTS = Constraints()


def _names(task: Task, group: Iterable[int]) -> str:
    return "[" + ", ".join(repr(task.tables[i].name) for i in group) + "]"


def constraints_for(spec: ConstraintSpec | None, task: Task) -> Constraints:
    """``spec`` resolved against ``task``; :data:`NO_CONSTRAINTS` for None or an empty spec."""
    if spec is None or spec.is_empty:
        return NO_CONSTRAINTS
    return resolve_constraints(spec, task)


def resolve_constraints(
    raw: ConstraintSpec | Mapping[str, Any], task: Task, where: str | None = None
) -> Constraints:
    """Resolve constraints against ``task`` and refuse what cannot be satisfied.

    Refused, with one line naming the constraint: an unknown table or device; a pin,
    together or apart group that contradicts another (a together group holding tables
    pinned to different devices, or an apart pair; an apart pair pinned to one
    device); memory that cannot suffice (a pinned table, or the tables pinned to one
    device, larger than it; a together group larger than every device); an apart
    group with more tables than the task has devices. Passing these checks does not
    promise a placement exists (that is a search); placers report what they cannot
    place.

    Args:
        raw: A :class:`ConstraintSpec`, or a constraints-file payload (a mapping).
        task: The task.
        where: Location for error messages (default: the spec's ``where``).

    Raises:
        InputError: naming ``where`` and the constraint.
    """
    spec = (
        raw if isinstance(raw, ConstraintSpec) else parse_constraints(raw, where or "constraints")
    )
    where = where or spec.where
    index = {t.name: i for i, t in enumerate(task.tables)}
    known: Collection[str] = index if spec.pool is None else spec.pool

    def table(name: str, loc: str) -> int | None:
        """The index of a table named in a constraint; None if the task lacks it."""
        if name not in index and name not in known:
            listed = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
            raise InputError(f"{loc}: unknown table {name!r} (tables: {listed})")
        return index.get(name)

    pins: dict[int, int] = {}
    for name, device in spec.pins:
        loc = f"{where}: pin {name!r}"
        i = table(name, loc)
        d = _device(device, task, loc)
        if i is not None:
            pins[i] = d
    together_raw = [
        (f"together[{k}]", [i for n in g if (i := table(n, f"{where}: together[{k}]")) is not None])
        for k, g in enumerate(spec.together)
    ]
    apart_raw = [
        (f"apart[{k}]", [i for n in g if (i := table(n, f"{where}: apart[{k}]")) is not None])
        for k, g in enumerate(spec.apart)
    ]
    groups = _merge([(label, g) for label, g in together_raw if len(g) >= 2])
    apart = [(label, tuple(sorted(g))) for label, g in apart_raw if len(g) >= 2]
    _check_satisfiable(task, pins, groups, apart, where)
    return Constraints(
        pins=pins,
        together=tuple(sorted(g for _, g in groups)),
        apart=tuple(g for _, g in apart),
    )


def _device(device: str | int, task: Task, loc: str) -> int:
    if isinstance(device, int):
        if not 0 <= device < task.num_devices:
            raise InputError(
                f"{loc}: device index {device} is out of range (devices 0..{task.num_devices - 1})"
            )
        return device
    names = [d.name for d in task.devices]
    if device not in names:
        listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise InputError(f"{loc}: unknown device {device!r} (devices: {listed})")
    return names.index(device)


def _merge(groups: Sequence[tuple[str, list[int]]]) -> list[tuple[str, tuple[int, ...]]]:
    """Together groups that share a table merged into one, labelled by their sources."""
    merged: list[tuple[list[str], set[int]]] = []
    for label, group in groups:
        members = set(group)
        labels = [label]
        for other in [m for m in merged if m[1] & members]:
            merged.remove(other)
            labels = other[0] + labels
            members |= other[1]
        merged.append((labels, members))
    return [("+".join(labels), tuple(sorted(members))) for labels, members in merged]


def _check_satisfiable(
    task: Task,
    pins: Mapping[int, int],
    together: Sequence[tuple[str, tuple[int, ...]]],
    apart: Sequence[tuple[str, tuple[int, ...]]],
    where: str,
) -> None:
    tables, devices = task.tables, task.devices
    memory = [task.table_memory_bytes(t) for t in tables]
    group_of = {i: (label, g) for label, g in together for i in g}
    # The device each table is fixed to, by its pin or a together-mate's.
    fixed: dict[int, int] = {}
    for label, group in together:
        pinned = [(i, pins[i]) for i in group if i in pins]
        for (i, d), (j, e) in itertools.pairwise(pinned):
            if d != e:
                raise InputError(
                    f"{where}: {label}: tables {tables[i].name!r} and {tables[j].name!r} must "
                    f"share a device but are pinned to {devices[d].name!r} and {devices[e].name!r}"
                )
        if pinned:
            fixed.update((i, pinned[0][1]) for i in group)
    for i, d in pins.items():
        fixed.setdefault(i, d)
    for label, group in apart:
        if len(group) > task.num_devices:
            raise InputError(
                f"{where}: {label}: {len(group)} tables must be on different devices but the "
                f"task has {task.num_devices} devices"
            )
        for k, i in enumerate(group):
            for j in group[:k]:
                if i in group_of and j in group_of[i][1]:
                    raise InputError(
                        f"{where}: {label}: tables {tables[j].name!r} and {tables[i].name!r} "
                        f"must be apart but {group_of[i][0]} puts them together"
                    )
                if i in fixed and fixed.get(j) == fixed[i]:
                    raise InputError(
                        f"{where}: {label}: tables {tables[j].name!r} and {tables[i].name!r} "
                        f"must be apart but are both pinned to {devices[fixed[i]].name!r}"
                    )
    largest = max(d.memory_bytes for d in devices)
    for label, group in together:
        need = sum(memory[i] for i in group)
        if need > largest:
            raise InputError(
                f"{where}: {label}: its tables need {need:,} bytes on one device, more than "
                f"any device has ({largest:,} bytes)"
            )
    load = [0] * task.num_devices
    for i, d in fixed.items():
        load[d] += memory[i]
    for d, device in enumerate(devices):
        if load[d] > device.memory_bytes:
            on_d = [i for i, e in sorted(fixed.items()) if e == d]
            what = (
                f"pin {tables[on_d[0]].name!r}: the table needs"
                if len(on_d) == 1
                else f"pin: tables {_names(task, on_d)} (pinned or together with a pinned "
                f"table) need"
            )
            raise InputError(
                f"{where}: {what} {load[d]:,} bytes but device {device.name!r} has "
                f"{device.memory_bytes:,} bytes"
            )


# -- for sequential placers -------------------------------------------------------------


class ConstrainedInfeasibleError(InfeasiblePlacementError):
    """A table found no device that its constraints allow and that has room for it."""

    def __init__(self, table: str, needed_bytes: int, free_bytes: list[int], message: str) -> None:
        Exception.__init__(self, message)
        self.table = table
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class ConstraintTracker:
    """Which devices each next table may take, in ``batch`` placements built in parallel.

    Tables may be placed in any order. The memory counted on a device (``used``)
    includes tables not placed yet whose device is already known: from the start, every
    pinned table with its together group on its pinned device; and placing a group's
    first table reserves room for the whole group. So a pinned table or a group's later
    table always finds its device with room. Without constraints every table is its own
    group, nothing is reserved ahead, and the tracker counts exactly the memory of the
    tables placed.

    Args:
        task: The task.
        constraints: Its constraints.
        batch: Placements built at once (episodes).
    """

    def __init__(self, task: Task, constraints: Constraints, batch: int = 1) -> None:
        self.task = task
        self.constraints = constraints
        num_tables = task.num_tables
        memory = [task.table_memory_bytes(t) for t in task.tables]
        total = sum(memory)
        if total > INT64_MAX:
            raise InputError(
                f"task {task.name!r}: its tables need {total:,} bytes in all, more than "
                f"{INT64_MAX:,}"
            )
        self.memory = np.array(memory, dtype=np.int64)
        # A device that can hold every table behaves the same however much more it has;
        # the clamp keeps the counts in int64 whatever size a topology gives.
        self.capacity = np.array([min(d.memory_bytes, total) for d in task.devices], np.int64)
        #: [B, T] device of each table, -1 where not placed yet.
        self.device_of: IntArray = np.full((batch, num_tables), -1, dtype=np.int64)
        #: [B, D] bytes held or reserved on each device.
        self.used: IntArray = np.zeros((batch, task.num_devices), dtype=np.int64)
        self._rows = np.arange(batch)
        if constraints.is_empty:  # every table its own group, free to go anywhere
            none = np.zeros(0, dtype=np.int64)
            self._mates = [none] * num_tables
            self._group_bytes = memory
            self._pin: list[int | None] = [None] * num_tables
            self._apart = [none] * num_tables
            self._free = [True] * num_tables
            return
        self._mates = [
            np.array([j for j in constraints.group_of(i) if j != i], dtype=np.int64)
            for i in range(num_tables)
        ]
        self._group_bytes = [constraints.reserved_bytes(task, i) for i in range(num_tables)]
        self._pin = [constraints.pinned_device(i) for i in range(num_tables)]
        for group in {constraints.group_of(i) for i in constraints.pins}:
            pin = self._pin[group[0]]
            assert pin is not None
            self.used[:, pin] += self._group_bytes[group[0]]
        apart: list[set[int]] = [set() for _ in range(num_tables)]
        for group in constraints.apart:
            for i in group:
                # An apart-mate's together-mates follow it onto its device, so they are
                # avoided too (a mate placed first decides where the group goes).
                for j in group:
                    if j != i:
                        apart[i].update(constraints.group_of(j))
        # A group shares one device, so every member avoids every member's apart-mates.
        self._apart = [
            np.array(sorted(set().union(*(apart[j] for j in constraints.group_of(i)))), np.int64)
            for i in range(num_tables)
        ]
        #: Per table: no pin, together-mate or apart-mate, so memory alone decides.
        self._free = [
            pin is None and len(mates) == 0 and len(others) == 0
            for pin, mates, others in zip(self._pin, self._mates, self._apart, strict=True)
        ]

    @property
    def batch(self) -> int:
        return int(self.device_of.shape[0])

    def _mate_device(self, table: int) -> IntArray:
        """[B] device of a placed together-mate of ``table``, -1 where none is placed."""
        mates = self._mates[table]
        if len(mates) == 0:
            return np.full(self.batch, -1, dtype=np.int64)
        placed: IntArray = self.device_of[:, mates].max(axis=1)  # placed mates share a device
        return placed

    def legal(self, table: int) -> BoolArray:
        """[B, D] devices ``table`` may take: its pin or its placed together-mates'
        device; no device that holds an apart-mate or that an apart-mate is pinned to;
        room for its whole group if it is the group's first table."""
        if self._free[table]:
            free: BoolArray = self.used + self._group_bytes[table] <= self.capacity
            return free
        rows = self._rows
        pin = self._pin[table]
        if pin is None:
            legal = self.used + self._group_bytes[table] <= self.capacity
        else:  # reserved from the start: the pinned device only, if it did not overflow
            legal = np.zeros(self.used.shape, dtype=np.bool_)
            legal[:, pin] = self.used[:, pin] <= self.capacity[pin]
        for j in self._apart[table]:
            other_pin = self._pin[j]
            if other_pin is not None:
                legal[:, other_pin] = False
            placed = self.device_of[:, j] >= 0
            legal[rows[placed], self.device_of[placed, j]] = False
        mate = self._mate_device(table)
        joined = mate >= 0
        if joined.any():
            legal[joined] = False
            legal[rows[joined], mate[joined]] = True  # its room was reserved by the mate
        return legal

    def allowed(self, table: int, episode: int = 0) -> list[int]:
        """The devices ``table`` may take in one placement, ascending."""
        return [int(d) for d in np.flatnonzero(self.legal(table)[episode])]

    def place(self, table: int, devices: IntArray | Sequence[int]) -> None:
        """Put ``table`` on ``devices[b]`` in every placement ``b`` (legal or not)."""
        chosen = np.asarray(devices, dtype=np.int64)
        if self._free[table]:  # its own group, not reserved ahead
            self.used[self._rows, chosen] += self._group_bytes[table]
            self.device_of[:, table] = chosen
            return
        first = self._mate_device(table) < 0
        if self._pin[table] is not None:
            first[:] = False  # reserved from the start
        rows = np.arange(self.batch)
        self.used[rows[first], chosen[first]] += self._group_bytes[table]
        self.device_of[:, table] = chosen

    def infeasible(self, table: int, episode: int = 0) -> InfeasiblePlacementError:
        """The error for ``table`` finding no legal device in one placement.

        Without constraints on the table it is the plain memory error (room for the
        table alone, free memory per device); otherwise it says what the constraints
        allowed.
        """
        t = self.task.tables[table]
        free = [
            d.memory_bytes - int(u)
            for d, u in zip(self.task.devices, self.used[episode], strict=True)
        ]
        need = self._group_bytes[table]
        reasons = []
        pin = self._pin[table]
        if pin is not None:
            reasons.append(f"it is pinned to {self.task.devices[pin].name!r}")
        if len(self._mates[table]):
            group = _names(self.task, self.constraints.group_of(table))
            reasons.append(f"its together group {group} needs one device")
        apart_pins = [self._pin[j] for j in self._apart[table]]
        excluded = sorted(
            {int(d) for d in self.device_of[episode, self._apart[table]] if d >= 0}
            | {d for d in apart_pins if d is not None}
        )
        if excluded:
            names = ", ".join(repr(self.task.devices[d].name) for d in excluded)
            reasons.append(f"its apart-mates hold {names}")
        if not reasons:
            return InfeasiblePlacementError(t.name, need, free)
        message = (
            f"table {t.name!r} cannot be placed: {'; '.join(reasons)}; no device it may take "
            f"has {need:,} bytes free"
        )
        return ConstrainedInfeasibleError(t.name, need, free, message)


def fits_with_constraints(task: Task, constraints: Constraints) -> bool:
    """Whether first-fit decreasing finds a placement of ``task`` that honours
    ``constraints``: tables with a pinned device first, then largest first, each onto
    the allowed device with the least memory in use (ties: the lower index).

    Without constraints it decides exactly as :func:`dreamshard.data.tasks.fits_memory`.
    A check for drawing tasks, not a search: a task it rejects may still have a
    placement.
    """
    tracker = ConstraintTracker(task, constraints)
    used = tracker.used[0]
    order = sorted(
        range(task.num_tables),
        key=lambda i: (constraints.pinned_device(i) is None, -int(tracker.memory[i])),
    )
    for i in order:
        room = tracker.allowed(i)
        if not room:
            return False
        tracker.place(i, [min(room, key=lambda d: (int(used[d]), d))])
    return True
