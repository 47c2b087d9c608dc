"""The expert rules and the random placer: the DreamShard paper's baselines (METHOD.md s. 6).

The "human expert" rules sort the tables by a cost proxy, largest first, and put each
on the device with the smallest running sum of that proxy among the devices with room
(ties: the device with less memory used, then the lower index). The random placer puts
each table on a device drawn uniformly among those with room.

Both honour user constraints (:mod:`dreamshard.data.constraints`): a table may only take
the devices its pins, together groups and apart groups allow, and a together group's
memory is reserved on its device when its first table is placed. The expert rules place
the tables whose device is pinned first, so they balance the others around them. Without
constraints both place exactly as the rules above.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np

from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import ConstraintSpec, ConstraintTracker, constraints_for
from dreamshard.errors import InputError
from dreamshard.types import Placement, TableSpec, Task

#: Cost proxies of the expert rules, by placer name.
PROXIES: dict[str, Callable[[TableSpec], float]] = {
    "size": lambda t: float(t.size_bytes),
    "dim": lambda t: float(t.dim),
    "lookup": lambda t: t.dim * t.pooling_factor,
    "size-lookup": lambda t: t.dim * t.pooling_factor * math.log10(t.rows),
}


class GreedyPlacer:
    """Expert rule: largest proxy first, onto the device with the smallest proxy sum.

    Args:
        proxy: The cost proxy, a key of :data:`PROXIES`.
        constraints: User constraints, resolved against each task placed.
    """

    def __init__(self, proxy: str, constraints: ConstraintSpec | None = None) -> None:
        if proxy not in PROXIES:
            raise InputError(f"unknown proxy {proxy!r} (known: {', '.join(PROXIES)})")
        self.name = proxy
        self.constraints = constraints
        self._proxy = PROXIES[proxy]

    def place(self, task: Task) -> Placement:
        constraints = constraints_for(self.constraints, task)
        proxies = [self._proxy(t) for t in task.tables]
        # Stable sort: equal proxies keep table order, so the result is deterministic.
        # Tables with a pinned device come first, so the others balance around them.
        order = sorted(
            range(task.num_tables),
            key=lambda i: (constraints.pinned_device(i) is None, -proxies[i]),
        )
        tracker = ConstraintTracker(task, constraints)
        used = tracker.used[0]
        load = [0.0] * task.num_devices
        device_of = [0] * task.num_tables
        for i in order:
            room = tracker.allowed(i)
            if not room:
                raise tracker.infeasible(i)
            best = min(room, key=lambda d: (load[d], int(used[d]), d))
            device_of[i] = best
            load[best] += proxies[i]
            tracker.place(i, [best])
        return Placement(tuple(device_of))


class RandomPlacer:
    """Each table on a uniformly random device with room, largest tables first.

    The random stream depends on the seed and the task's name only, so a task gets the
    same placement whatever else was placed before it.

    Args:
        seed: Seed of the draws.
        constraints: User constraints, resolved against each task placed.
    """

    name = "random"

    def __init__(self, seed: int = DEFAULT_SEED, constraints: ConstraintSpec | None = None) -> None:
        self.seed = seed
        self.constraints = constraints

    def place(self, task: Task) -> Placement:
        rng = np.random.default_rng([self.seed, zlib.crc32(task.name.encode())])
        tracker = ConstraintTracker(task, constraints_for(self.constraints, task))
        memory = [task.table_memory_bytes(t) for t in task.tables]
        order = sorted(range(task.num_tables), key=lambda i: -memory[i])
        device_of = [0] * task.num_tables
        for i in order:
            room = tracker.allowed(i)
            if not room:
                raise tracker.infeasible(i)
            choice = room[int(rng.integers(len(room)))]
            device_of[i] = choice
            tracker.place(i, [choice])
        return Placement(tuple(device_of))
