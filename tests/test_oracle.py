"""The ORACLE reference placer (placers/oracle.py)."""

from __future__ import annotations

import pytest

from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices, make_task
from dreamshard.errors import InputError
from dreamshard.method.search import greedy_placement
from dreamshard.placers.oracle import OraclePlacer
from dreamshard.placers.registry import PlacerOptions, is_reference, make_placer
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.types import Placement, PlacementCost, Task


def test_oracle_beats_the_rules_and_the_true_greedy() -> None:
    backend = SimBackend()
    pool = generate_table_pool(20, seed=8, dims=[16, 32, 64, 128], max_rows=500_000)
    t = make_task("o", pool, make_devices(4, 10**10))
    oracle = OraclePlacer(backend, evaluations=2000, restarts=2)
    placement = oracle.place(t)
    placement.validate(t)
    cost = backend.cost_ms(t, placement)
    greedy = greedy_placement(t, backend.stage_model(t))
    assert greedy is not None
    assert cost <= backend.cost_ms(t, greedy)
    assert cost < backend.cost_ms(t, GreedyPlacer("size-lookup").place(t))
    assert oracle.place(t) == placement  # seeded


def test_oracle_needs_a_backend_with_a_stage_model() -> None:
    class Measuring:
        name = "fake"

        def measure(self, task: Task, placements: list[Placement]) -> list[PlacementCost]:
            raise AssertionError("not called")

    with pytest.raises(InputError, match="backend 'fake' has none"):
        OraclePlacer(Measuring())


def test_oracle_from_the_registry_is_a_reference() -> None:
    placer = make_placer("oracle", PlacerOptions(backend="sim", oracle_evaluations=10))
    assert placer.name == "oracle" and is_reference("oracle")


def test_oracle_on_a_task_nothing_fits_names_the_table() -> None:
    from dreamshard.errors import InfeasiblePlacementError

    from .conftest import table, task

    # Three tables of 64,000 bytes, two devices of 64,000: no packing exists.
    t = task([table("a"), table("b"), table("c")], [64_000, 64_000])
    with pytest.raises(InfeasiblePlacementError, match=r"table '[abc]' needs 64,000 bytes"):
        OraclePlacer(SimBackend(), evaluations=10).place(t)
