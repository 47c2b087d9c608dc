"""Typed results of a benchmark run, and their ``results.json`` form.

:class:`BenchmarkResults` holds everything a run produced: per suite the per-placer
statistics (:class:`SuiteSummary`), per family the training summary
(:class:`FamilySummary`), the generalisation matrix, the hardware and versions, and every
placement with its measured cost (the :class:`~dreamshard.evaluation.evaluate.Evaluation`
of each suite). ``to_json()`` gives results.json's payload (field names and order are the
file format, :data:`RESULTS_FORMAT` version :data:`RESULTS_VERSION`); ``from_json()``
reads it back, so the report and the plots can be redrawn from a saved run::

    results = load_results("runs/benchmark/results.json")
    write_plots(results, Path("runs/benchmark"))
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dreamshard.bench.config import BenchmarkConfig, FamilySpec, SuiteSpec
from dreamshard.errors import InputError
from dreamshard.evaluation.evaluate import Evaluation, TaskResult, split_from_json
from dreamshard.evaluation.stats import PairedComparison
from dreamshard.fileio import read_json
from dreamshard.method.train import IterationReport
from dreamshard.types import MeasurementConditions, Placement, PlacementCost, StageCosts

RESULTS_FORMAT = "dreamshard-benchmark"
RESULTS_VERSION = 1


def _fields(cls: type[Any], data: Any, where: str) -> dict[str, Any]:
    """``data`` checked to hold exactly the fields of dataclass ``cls``."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown field")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise InputError(f"{where}.{missing[0]}: missing")
    return dict(data)


# -- per suite ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacerStats:
    """One placer on one suite, over the tasks every placer placed.

    Attributes:
        mean_cost_ms: Mean measured cost.
        std_cost_ms: Its standard deviation over tasks.
        mean_ratio_to_strongest: Mean per-task cost relative to the strongest baseline's
            (None without a strongest baseline).
        std_ratio_to_strongest: Its standard deviation over tasks.
        mean_measurement_rel_spread: Mean relative spread of the measurements (None on a
            deterministic backend).
        mean_place_time_ms: Mean wall time to place one task (all tasks).
        failures: Tasks it found no placement within memory for.
        paired_to_strongest: Geometric mean of the per-task cost ratios to the strongest
            baseline, its bootstrap 95% CI and the tasks won/lost/tied
            (:mod:`dreamshard.evaluation.stats`); None for the strongest itself, without
            one, and in results written before it existed.
        pct_above_reference: Geometric mean of the per-task cost ratios to the suite's
            reference placer (the ORACLE), minus 1, in percent (None without one).
    """

    mean_cost_ms: float
    std_cost_ms: float
    mean_ratio_to_strongest: float | None
    std_ratio_to_strongest: float | None
    mean_measurement_rel_spread: float | None
    mean_place_time_ms: float
    failures: int
    paired_to_strongest: PairedComparison | None = None
    pct_above_reference: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "placer") -> PlacerStats:
        fields = _fields(cls, data, where)
        paired = fields.get("paired_to_strongest")
        if paired is not None:
            fields["paired_to_strongest"] = PairedComparison(
                **_fields(PairedComparison, paired, f"{where}.paired_to_strongest")
            )
        return cls(**fields)


@dataclass(frozen=True)
class TaskWins:
    """Tasks of a suite where DreamShard is cheaper than (``wins``) or as cheap as
    (``ties``) one baseline."""

    wins: int
    ties: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "wins") -> TaskWins:
        return cls(**_fields(cls, data, where))


@dataclass(frozen=True)
class DreamShardStanding:
    """DreamShard against the baselines on one suite (results.json: the suite's
    ``dreamshard_*`` fields).

    Attributes:
        speedup: Strongest baseline's mean cost / DreamShard's.
        speedup_vs_measurement_free: The same against the strongest baseline that spends
            no backend measurements (None if there is none).
        not_better_than: Baselines whose mean cost is not above DreamShard's.
        task_wins: Per baseline, the tasks DreamShard wins and ties.
    """

    speedup: float
    speedup_vs_measurement_free: float | None
    not_better_than: tuple[str, ...]
    task_wins: dict[str, TaskWins]

    def to_json(self) -> dict[str, Any]:
        return {
            "dreamshard_speedup": self.speedup,
            "dreamshard_speedup_vs_measurement_free": self.speedup_vs_measurement_free,
            "dreamshard_not_better_than": list(self.not_better_than),
            "dreamshard_task_wins": {p: w.to_json() for p, w in self.task_wins.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "suite") -> DreamShardStanding | None:
        """From a suite's fields; None when the suite has no ``dreamshard_speedup``."""
        if "dreamshard_speedup" not in data:
            return None
        return cls(
            speedup=data["dreamshard_speedup"],
            speedup_vs_measurement_free=data["dreamshard_speedup_vs_measurement_free"],
            not_better_than=tuple(data["dreamshard_not_better_than"]),
            task_wins={
                p: TaskWins.from_json(w, f"{where}.dreamshard_task_wins.{p}")
                for p, w in data["dreamshard_task_wins"].items()
            },
        )


#: A suite's results.json fields that :class:`DreamShardStanding` holds.
_STANDING_KEYS = (
    "dreamshard_speedup",
    "dreamshard_speedup_vs_measurement_free",
    "dreamshard_not_better_than",
    "dreamshard_task_wins",
)


@dataclass(frozen=True)
class SuiteSummary:
    """Every placer on one suite.

    Attributes:
        spec: The suite.
        tasks: Test tasks.
        common_tasks: Tasks every placer placed (the statistics are over these).
        strongest_baseline: Baseline with the lowest mean cost (None without baselines
            or common tasks).
        strongest_measurement_free_baseline: The same among baselines that spend no
            backend measurements.
        placers: Statistics per placer (family variants ``dreamshard@<family>`` included).
        main_placers: The configured placers, in display order.
        memory_binds_tasks: Tasks where an expert rule ignoring memory would overflow a
            device.
        rnn_measurements: Backend measurements the ``rnn`` placer spent on the suite.
        wall_s: Wall time of placing and measuring the suite.
        dreamshard: DreamShard against the baselines (None if it was not evaluated).
        cost_net_mape: The suite's model's cost-network MAPE (%) on the suite's measured
            placements (None without a model).
        reference: The reference placer (the ORACLE: a long search on the backend's own
            costs, not a competitor) the placers' ``pct_above_reference`` is against
            (None without one).
    """

    spec: SuiteSpec
    tasks: int
    common_tasks: int
    strongest_baseline: str | None
    strongest_measurement_free_baseline: str | None
    placers: dict[str, PlacerStats]
    main_placers: tuple[str, ...]
    memory_binds_tasks: int
    rnn_measurements: int
    wall_s: float
    dreamshard: DreamShardStanding | None = None
    cost_net_mape: float | None = None
    reference: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "common_tasks": self.common_tasks,
            "strongest_baseline": self.strongest_baseline,
            "strongest_measurement_free_baseline": self.strongest_measurement_free_baseline,
            "placers": {p: s.to_json() for p, s in self.placers.items()},
        }
        if self.dreamshard is not None:
            out.update(self.dreamshard.to_json())
        out.update(
            spec=self.spec.to_json(),
            tasks=self.tasks,
            memory_binds_tasks=self.memory_binds_tasks,
            rnn_measurements=self.rnn_measurements,
            wall_s=self.wall_s,
            main_placers=list(self.main_placers),
        )
        if self.cost_net_mape is not None:
            out["cost_net_mape"] = self.cost_net_mape
        if self.reference is not None:
            out["reference"] = self.reference
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "suite") -> SuiteSummary:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object")
        fields = {k: v for k, v in data.items() if k not in _STANDING_KEYS}
        fields = _fields(cls, fields, where)
        fields["spec"] = SuiteSpec.from_json(fields["spec"], f"{where}.spec")
        fields["placers"] = {
            p: PlacerStats.from_json(s, f"{where}.placers.{p}")
            for p, s in fields["placers"].items()
        }
        fields["main_placers"] = tuple(fields["main_placers"])
        fields["dreamshard"] = DreamShardStanding.from_json(data, where)
        return cls(**fields)


# -- per family --------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySummary:
    """How one family's model was trained.

    Attributes:
        spec: The family.
        train_tasks: Training tasks.
        train_wall_s: Wall time of all training iterations.
        measurements: Backend measurements training spent.
        final_cost_mape_on_new: The cost network's error (%) on the last iteration's new
            measurements before fitting them (None after one iteration).
        history: One report per iteration.
    """

    spec: FamilySpec
    train_tasks: int
    train_wall_s: float
    measurements: int
    final_cost_mape_on_new: float | None
    history: tuple[IterationReport, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "train_tasks": self.train_tasks,
            "train_wall_s": self.train_wall_s,
            "measurements": self.measurements,
            "final_cost_mape_on_new": self.final_cost_mape_on_new,
            "history": [asdict(r) for r in self.history],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "family") -> FamilySummary:
        fields = _fields(cls, data, where)
        fields["spec"] = FamilySpec.from_json(fields["spec"], f"{where}.spec")
        fields["history"] = tuple(
            IterationReport(**_fields(IterationReport, r, f"{where}.history[{i}]"))
            for i, r in enumerate(fields["history"])
        )
        return cls(**fields)


# -- across families and suites ----------------------------------------------------------


@dataclass(frozen=True)
class Generalisation:
    """Each family's model on each suite, without retraining.

    Attributes:
        families: Rows: the families (empty when DreamShard was not run).
        suites: Columns: the suites (empty without families).
        speedup: ``speedup[i][j]``: the suite's strongest baseline's mean cost / that of
            family ``i``'s model on suite ``j`` (None without a strongest baseline).
    """

    families: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()
    speedup: tuple[tuple[float | None, ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "families": list(self.families),
            "suites": list(self.suites),
            "speedup": [list(row) for row in self.speedup],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "generalisation") -> Generalisation:
        fields = _fields(cls, data, where)
        return cls(
            families=tuple(fields.get("families", ())),
            suites=tuple(fields.get("suites", ())),
            speedup=tuple(tuple(row) for row in fields.get("speedup", ())),
        )


@dataclass(frozen=True)
class Environment:
    """Hardware and versions a run used (None: a package that is not installed)."""

    dreamshard: str
    python: str
    torch: str
    fbgemm_gpu_cpu: str | None
    torchrec: str | None
    numpy: str
    platform: str
    cpu_model: str
    cpu_count: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) in display order."""
        return list(self.to_json().items())

    @classmethod
    def from_json(cls, data: Any, where: str = "environment") -> Environment:
        return cls(**_fields(cls, data, where))


# -- evaluations -------------------------------------------------------------------------


def _conditions_from_json(data: Any) -> MeasurementConditions | None:
    if data is None:
        return None
    fields = {k: v for k, v in data.items() if k != "loaded"}  # ``loaded`` is derived
    return MeasurementConditions(**{**fields, "warnings": tuple(fields["warnings"])})


def evaluation_from_json(data: Any, where: str = "evaluation") -> Evaluation:
    """An :class:`Evaluation` back from its ``to_json()`` payload.

    Its derived fields (``common_tasks``, ``best_baseline``, ``summary``) are recomputed
    from the results. A cost's backend name is the evaluation's (``to_json`` keeps one).
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object")
    try:
        backend = data["backend"]
        results = []
        for r in data["results"]:
            cost = None
            if r["per_device"] is not None:
                cost = PlacementCost(
                    per_device=tuple(StageCosts(**c) for c in r["per_device"]),
                    backend=backend,
                    rel_spread=r["rel_spread"],
                    window_costs_ms=tuple(r["window_costs_ms"] or ()),
                )
            placement = None
            if r["device_of"] is not None:
                splits = tuple(split_from_json(s) for s in r.get("splits", ()))
                placement = Placement(tuple(r["device_of"]), splits)
            results.append(
                TaskResult(
                    placer=r["placer"],
                    task=r["task"],
                    placement=placement,
                    cost=cost,
                    place_time_ms=r["place_time_ms"],
                    error=r["error"],
                )
            )
        return Evaluation(
            backend=backend,
            placers=tuple(data["placers"]),
            tasks=tuple(data["tasks"]),
            results=tuple(results),
            conditions=_conditions_from_json(data.get("measurement_conditions")),
        )
    except (KeyError, TypeError) as err:
        raise InputError(f"{where}: not an evaluation ({err!r})") from None


# -- the whole run -----------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkResults:
    """Everything one benchmark run produced (results.json).

    Attributes:
        command: The command line that ran it.
        config: The resolved config.
        environment: Hardware and versions.
        families: Training summary per family, in config order (empty without
            ``dreamshard``).
        suites: Summary per suite, in config order.
        generalisation: Each family's model on each suite.
        evaluations: Every placement and its measured cost, per suite.
        wall_s: Wall time of the whole run.
        plots: The plot files written, relative to the output folder.
    """

    command: str
    config: BenchmarkConfig
    environment: Environment
    families: dict[str, FamilySummary]
    suites: dict[str, SuiteSummary]
    generalisation: Generalisation
    evaluations: dict[str, Evaluation]
    wall_s: float
    plots: tuple[str, ...] = field(default=())

    @property
    def quick(self) -> bool:
        return self.config.quick

    @property
    def backend(self) -> str:
        return self.config.backend

    def to_json(self) -> dict[str, Any]:
        """results.json's payload."""
        return {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            "command": self.command,
            "quick": self.quick,
            "backend": self.backend,
            "config": self.config.to_json(),
            "environment": self.environment.to_json(),
            "families": {n: f.to_json() for n, f in self.families.items()},
            "suites": {n: s.to_json() for n, s in self.suites.items()},
            "generalisation": self.generalisation.to_json(),
            "evaluations": {n: e.to_json() for n, e in self.evaluations.items()},
            "wall_s": self.wall_s,
            "plots": list(self.plots),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "results") -> BenchmarkResults:
        """Read back :meth:`to_json`'s payload.

        Raises:
            InputError: Not a benchmark results payload of this version, or a bad field.
        """
        if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
            raise InputError(f"{where}: not a DreamShard benchmark results file")
        if data.get("version") != RESULTS_VERSION:
            raise InputError(
                f"{where}: results version {data.get('version')!r}; this dreamshard reads "
                f"version {RESULTS_VERSION}"
            )
        try:
            config = BenchmarkConfig.from_json(data["config"], f"{where}.config")
            results = cls(
                command=data["command"],
                config=config,
                environment=Environment.from_json(data["environment"], f"{where}.environment"),
                families={
                    n: FamilySummary.from_json(f, f"{where}.families.{n}")
                    for n, f in data["families"].items()
                },
                suites={
                    n: SuiteSummary.from_json(s, f"{where}.suites.{n}")
                    for n, s in data["suites"].items()
                },
                generalisation=Generalisation.from_json(
                    data["generalisation"], f"{where}.generalisation"
                ),
                evaluations={
                    n: evaluation_from_json(e, f"{where}.evaluations.{n}")
                    for n, e in data["evaluations"].items()
                },
                wall_s=data["wall_s"],
                plots=tuple(data.get("plots", ())),
            )
        except (KeyError, AttributeError) as err:
            raise InputError(f"{where}: missing or malformed field ({err!r})") from None
        for key in ("quick", "backend"):
            if key in data and data[key] != getattr(results, key):
                raise InputError(f"{where}.{key}: differs from config.{key}")
        return results


def load_results(path: str | Path) -> BenchmarkResults:
    """Read a saved ``results.json``.

    Raises:
        InputError: A missing or malformed file (named).
    """
    return BenchmarkResults.from_json(read_json(path), str(path))
