"""The expert rules and the random placer: the DreamShard paper's baselines (METHOD.md s. 6).

The "human expert" rules sort the tables by a cost proxy, largest first, and put each
on the device with the smallest running sum of that proxy among the devices with room
(ties: the device with less memory used, then the lower index). The random placer puts
each table on a device drawn uniformly among those with room.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np

from dreamshard.constants import DEFAULT_SEED
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.types import Placement, TableSpec, Task

#: Cost proxies of the expert rules, by placer name.
PROXIES: dict[str, Callable[[TableSpec], float]] = {
    "size": lambda t: float(t.size_bytes),
    "dim": lambda t: float(t.dim),
    "lookup": lambda t: t.dim * t.pooling_factor,
    "size-lookup": lambda t: t.dim * t.pooling_factor * math.log10(t.rows),
}


def _infeasible(task: Task, table: int, used: list[int]) -> InfeasiblePlacementError:
    free = [d.memory_bytes - u for d, u in zip(task.devices, used, strict=True)]
    t = task.tables[table]
    return InfeasiblePlacementError(t.name, task.table_memory_bytes(t), free)


class GreedyPlacer:
    """Expert rule: largest proxy first, onto the device with the smallest proxy sum."""

    def __init__(self, proxy: str) -> None:
        if proxy not in PROXIES:
            raise InputError(f"unknown proxy {proxy!r} (known: {', '.join(PROXIES)})")
        self.name = proxy
        self._proxy = PROXIES[proxy]

    def place(self, task: Task) -> Placement:
        proxies = [self._proxy(t) for t in task.tables]
        # Stable sort: equal proxies keep table order, so the result is deterministic.
        order = sorted(range(task.num_tables), key=lambda i: -proxies[i])
        load = [0.0] * task.num_devices
        used = [0] * task.num_devices
        device_of = [0] * task.num_tables
        for i in order:
            need = task.table_memory_bytes(task.tables[i])
            room = [
                d for d in range(task.num_devices) if used[d] + need <= task.devices[d].memory_bytes
            ]
            if not room:
                raise _infeasible(task, i, used)
            best = min(room, key=lambda d: (load[d], used[d], d))
            device_of[i] = best
            load[best] += proxies[i]
            used[best] += need
        return Placement(tuple(device_of))


class RandomPlacer:
    """Each table on a uniformly random device with room, largest tables first.

    The random stream depends on the seed and the task's name only, so a task gets the
    same placement whatever else was placed before it.
    """

    name = "random"

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.seed = seed

    def place(self, task: Task) -> Placement:
        rng = np.random.default_rng([self.seed, zlib.crc32(task.name.encode())])
        memory = [task.table_memory_bytes(t) for t in task.tables]
        order = sorted(range(task.num_tables), key=lambda i: -memory[i])
        used = [0] * task.num_devices
        device_of = [0] * task.num_tables
        for i in order:
            room = [
                d
                for d in range(task.num_devices)
                if used[d] + memory[i] <= task.devices[d].memory_bytes
            ]
            if not room:
                raise _infeasible(task, i, used)
            choice = room[int(rng.integers(len(room)))]
            device_of[i] = choice
            used[choice] += memory[i]
        return Placement(tuple(device_of))
