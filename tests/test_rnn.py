"""The RNN baseline on the simulator: better than random, memory respected, seeded."""

from __future__ import annotations

import pytest

from dreamshard.backends.sim.model import SimBackend
from dreamshard.data.constraints import (
    ConstrainedInfeasibleError,
    parse_constraints,
    resolve_constraints,
)
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices
from dreamshard.errors import InfeasiblePlacementError, InputError
from dreamshard.placers.registry import PlacerOptions, make_placer
from dreamshard.placers.rnn import RnnConfig, RnnPlacer
from dreamshard.placers.rules import RandomPlacer
from dreamshard.types import Task

from .conftest import table, task


@pytest.fixture(scope="module")
def sim_task() -> Task:
    """12 DLRM-like tables on 3 devices with memory to spare."""
    tables = generate_table_pool(num_tables=12, seed=3, max_rows=200_000)
    return Task("rnn-small", tuple(tables), make_devices(3, 10**10))


def test_beats_random_placement(sim_task: Task) -> None:
    sim = SimBackend()
    placer = RnnPlacer(sim, RnnConfig(budget=60, samples_per_update=10), seed=0)
    rnn_cost = sim.cost_ms(sim_task, placer.place(sim_task))
    random_cost = sim.cost_ms(sim_task, RandomPlacer(seed=0).place(sim_task))
    assert rnn_cost < random_cost
    assert placer.last_measurements == 60


def test_respects_memory() -> None:
    # 6 tables of 64,000 bytes (plus one of 128,000) on devices of 200,000 bytes: at
    # most 3 small tables per device; an unconstrained sampler would overflow often.
    tables = [table(f"t{i}", rows=1000) for i in range(6)] + [table("big", rows=2000)]
    t = task(tables, [200_000, 200_000, 200_000])
    placer = RnnPlacer(SimBackend(), RnnConfig(budget=20, samples_per_update=5), seed=1)
    placement = placer.place(t)
    placement.validate(t)


def test_infeasible_names_a_table() -> None:
    tables = [table("a", rows=1000), table("b", rows=1000), table("c", rows=1000)]
    t = task(tables, [70_000, 70_000])  # one 64,000-byte table per device at most
    placer = RnnPlacer(SimBackend(), RnnConfig(budget=4, samples_per_update=2))
    with pytest.raises(InfeasiblePlacementError, match="needs 64,000 bytes"):
        placer.place(t)


def test_same_seed_same_placement(sim_task: Task) -> None:
    config = RnnConfig(budget=30, samples_per_update=10)
    first = RnnPlacer(SimBackend(), config, seed=5).place(sim_task)
    second = RnnPlacer(SimBackend(), config, seed=5).place(sim_task)
    assert first == second


def test_factory_needs_a_backend() -> None:
    with pytest.raises(InputError, match="needs a cost backend"):
        make_placer("rnn")
    placer = make_placer("rnn", PlacerOptions(backend="sim", budget=10))
    assert isinstance(placer, RnnPlacer)
    assert placer.config.budget == 10


def test_config_rejects_zero_budget() -> None:
    with pytest.raises(InputError, match="budget"):
        RnnConfig(budget=0)


def test_evaluation_counts_rnn_as_a_baseline(sim_task: Task) -> None:
    from dreamshard.evaluation.evaluate import evaluate
    from dreamshard.placers.rules import GreedyPlacer

    rnn = RnnPlacer(SimBackend(), RnnConfig(budget=30, samples_per_update=10), seed=0)
    result = evaluate([sim_task], [GreedyPlacer("size"), rnn], SimBackend())
    costs = {r.placer: r.cost.cost_ms for r in result.results if r.cost is not None}
    assert costs["rnn"] < costs["size"]  # the search beats the size rule on this task
    assert result.best_baseline() == "rnn"


def test_big_table_goes_on_the_big_device() -> None:
    # huge (64 MB) fits only dev1 (80 MB); dev0 (20 MB) holds one 12 MB table: the mask
    # leaves the search the placements huge and one m on dev1, the other m on dev0.
    tables = [table("huge", rows=1_000_000), table("m1", rows=187_500), table("m2", rows=187_500)]
    t = task(tables, [20_000_000, 80_000_000])
    placer = RnnPlacer(SimBackend(), RnnConfig(budget=6, samples_per_update=3), seed=0)
    placement = placer.place(t)
    assert placement.device_of in {(1, 0, 1), (1, 1, 0)}
    assert placer.last_measurements == 6  # every sample fit: none was discarded


def test_honours_constraints(sim_task: Task) -> None:
    names = [t.name for t in sim_task.tables]
    raw = parse_constraints(
        {
            "pin": {names[0]: "dev2"},
            "together": [[names[1], names[2], names[3]]],
            "apart": [[names[0], names[4]], [names[1], names[4], names[5]]],
        }
    )
    rules = resolve_constraints(raw, sim_task)
    placer = make_placer("rnn", PlacerOptions(backend="sim", budget=20, constraints=raw))
    placement = placer.place(sim_task)
    placement.validate(sim_task)
    rules.check(placement, sim_task)
    assert isinstance(placer, RnnPlacer) and placer.last_measurements == 20


def test_unplaceable_constraints_name_a_table(four_tables) -> None:
    # d (128k) fills dev0 (130k); a must avoid it and takes dev1 (100k); the group b + c
    # (48k) then finds no room: every sample dead-ends.
    t = task(four_tables, [130_000, 100_000])
    raw = parse_constraints({"apart": [["a", "d"]], "together": [["b", "c"]]})
    placer = RnnPlacer(SimBackend(), RnnConfig(budget=4, samples_per_update=2), constraints=raw)
    with pytest.raises(
        ConstrainedInfeasibleError,
        match=r"table 'b' cannot be placed: in 16 sampled placements it found no device",
    ):
        placer.place(t)
    assert placer.last_measurements == 0
