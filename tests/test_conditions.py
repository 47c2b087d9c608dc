"""Detecting a loaded machine while measuring (backends/base.py assess_conditions)."""

from __future__ import annotations

import pytest

from dreamshard.backends.base import assess_conditions
from dreamshard.data.tasks import make_devices, make_task
from dreamshard.evaluation.evaluate import evaluate
from dreamshard.placers.rules import GreedyPlacer
from dreamshard.types import MeasurementConditions

from .conftest import table


def test_quiet_machine_has_no_warnings() -> None:
    c = assess_conditions([2.5, 2.4, 2.6], 2.48, load_average=0.9, cpu_count=2)
    assert not c.loaded
    assert c.reference_slowdown == pytest.approx(2.5 / 2.48 - 1)
    assert c.free_cores == 1


def test_slow_reference_is_flagged_with_its_figure() -> None:
    c = assess_conditions([3.5, 3.6, 3.4], 2.48, load_average=None, cpu_count=2)
    (warning,) = c.warnings
    assert "41% slower than nominal (3.500 vs 2.480 ms)" in warning


def test_spread_reference_is_flagged() -> None:
    c = assess_conditions([2.0, 3.0, 2.0, 3.0], None, load_average=None, cpu_count=2)
    assert c.reference_slowdown is None
    assert c.reference_spread == pytest.approx(0.5 / 2.5)
    (warning,) = c.warnings
    assert "spread 20%" in warning


def test_load_beyond_the_free_cores_is_flagged() -> None:
    # 2 cores, the measurement keeps one busy: a load of 2.0 is one other job (fits the
    # free core); 3.1 is more than the free core can take.
    assert not assess_conditions([], None, load_average=2.0, cpu_count=2).loaded
    c = assess_conditions([], None, load_average=3.1, cpu_count=2)
    (warning,) = c.warnings
    assert "load average 3.10 on 2 cores" in warning


class _LoadedBackend:
    """A stand-in backend (the sim's costs) that reports a loaded machine."""

    name = "loaded"

    def __init__(self) -> None:
        from dreamshard.backends.sim.model import SimBackend

        self.sim = SimBackend()

    def measure(self, task, placements):  # type: ignore[no-untyped-def]
        return self.sim.measure(task, placements)

    def conditions(self) -> MeasurementConditions:
        return assess_conditions([], None, load_average=5.0, cpu_count=2)


def test_evaluate_records_conditions_in_its_json() -> None:
    task = make_task("t", [table("a"), table("b")], make_devices(2, 10**9))
    result = evaluate([task], [GreedyPlacer("size")], _LoadedBackend())
    payload = result.to_json()
    assert payload["measurement_conditions"]["loaded"] is True
    assert payload["measurement_conditions"]["load_average"] == 5.0


def test_sim_evaluation_has_no_conditions() -> None:
    from dreamshard.backends.sim.model import SimBackend

    task = make_task("t", [table("a"), table("b")], make_devices(2, 10**9))
    payload = evaluate([task], [GreedyPlacer("size")], SimBackend()).to_json()
    assert "measurement_conditions" not in payload
