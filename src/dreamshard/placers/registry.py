"""Every placer by name, with its kind and how to build it.

Adding a placer is one new module in this package plus one entry in :data:`PLACERS`.
The kind tells comparisons how to treat a placer: which ones are baselines, and which
spend backend measurements to place (so comparing them with measurement-free placers is
not like for like).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from dreamshard.backends import BackendOptions
from dreamshard.constants import DEFAULT_SEED
from dreamshard.data.constraints import ConstraintSpec
from dreamshard.errors import InputError
from dreamshard.placers.rules import PROXIES, GreedyPlacer, RandomPlacer
from dreamshard.types import Placer


class PlacerKind(StrEnum):
    """What a placer is (METHOD.md section 6)."""

    #: The paper's baselines: expert rules (and random), no measurements, no training.
    RULE = "rule"
    #: DreamShard: a trained model, no measurements when placing.
    LEARNED = "learned"
    #: Searches on the backend's measured costs for every task (the RNN baseline).
    MEASURED_SEARCH = "measured-search"
    #: Another system's planner (TorchRec's), no measurements.
    EXTERNAL = "external"
    #: A yardstick, not a competitor: a long search on the backend's own cost model.
    REFERENCE = "reference"


@dataclass(frozen=True)
class PlacerOptions:
    """Options a placer may need; each factory reads the ones it understands.

    Attributes:
        seed: Seed of any randomness.
        model_dir: Folder of a trained DreamShard model, or None (or ``"packaged"``) for
            the packaged pretrained model of the backend options' profile
            (``dreamshard`` only).
        samples: Extra sampled placements rated by the cost network (``dreamshard`` only).
        search: ``none``, ``greedy`` or ``local`` (``dreamshard`` only).
        time_budget_ms: Cap on the search time per task (``dreamshard`` only).
        refine: Best candidates measured on the backend, the best measured kept
            (``dreamshard`` only; it then spends that many measurements per task).
        backend: Cost backend name that placers searching on measurements use (``rnn``).
        backend_options: Options of that backend (``rnn``; defaults when None).
        budget: Backend measurements per task (``rnn``).
        oracle_evaluations: Annealing proposals per restart (``oracle``).
        constraints: User constraints (pins, together and apart groups), by name;
            every placer resolves them against each task and honours them, or refuses
            them when built (``torchrec``, ``dreamshard``).
        sharding: ``table``, ``column``, ``row`` or ``auto``: which splits ``dreamshard``
            and ``oracle`` may make (the rules, ``rnn`` and ``torchrec`` place whole
            tables; ``torchrec-all`` is TorchRec's planner with every sharding type).
    """

    seed: int = DEFAULT_SEED
    model_dir: str | None = None
    samples: int = 0
    search: str = "local"
    time_budget_ms: float | None = None
    refine: int = 0
    backend: str | None = None
    backend_options: BackendOptions | None = None
    budget: int = 500
    oracle_evaluations: int = 20_000
    constraints: ConstraintSpec | None = None
    sharding: str = "auto"


@dataclass(frozen=True)
class PlacerEntry:
    """One registered placer.

    Attributes:
        kind: What it is.
        build: Makes the placer from the options.
        description: One line for listings.
    """

    kind: PlacerKind
    build: Callable[[PlacerOptions], Placer]
    description: str


def _greedy(proxy: str) -> Callable[[PlacerOptions], Placer]:
    return lambda options: GreedyPlacer(proxy, options.constraints)


def _random(options: PlacerOptions) -> Placer:
    return RandomPlacer(options.seed, options.constraints)


def _dreamshard(options: PlacerOptions) -> Placer:
    from dreamshard.backends import make_backend
    from dreamshard.method.checkpoint import DreamShardModel, resolve_model_dir
    from dreamshard.placers.dreamshard import DreamShardPlacer

    if options.samples < 0:
        raise InputError(f"--samples must be >= 0, got {options.samples}")
    backend_options = options.backend_options or BackendOptions()
    model = DreamShardModel.load(resolve_model_dir(options.model_dir, backend_options.profile))
    backend = None
    if options.refine:
        if options.backend is None:
            raise InputError("--refine measures candidates: it needs a cost backend")
        backend = make_backend(options.backend, backend_options)
    return DreamShardPlacer(
        model,
        samples=options.samples,
        seed=options.seed,
        constraints=options.constraints,
        search=options.search,
        time_budget_ms=options.time_budget_ms,
        refine=options.refine,
        backend=backend,
        sharding=options.sharding,
    )


def _torchrec(options: PlacerOptions) -> Placer:
    from dreamshard.placers.torchrec import TorchRecPlacer

    return TorchRecPlacer(constraints=options.constraints)


def _torchrec_all(options: PlacerOptions) -> Placer:
    from dreamshard.placers.torchrec import TorchRecAllPlacer

    return TorchRecAllPlacer(constraints=options.constraints)


def _rnn(options: PlacerOptions) -> Placer:
    from dreamshard.backends import make_backend
    from dreamshard.placers.rnn import RnnConfig, RnnPlacer

    if options.backend is None:
        raise InputError("placer 'rnn' trains on measured costs: it needs a cost backend")
    backend = make_backend(options.backend, options.backend_options)
    return RnnPlacer(
        backend,
        RnnConfig(budget=options.budget),
        seed=options.seed,
        constraints=options.constraints,
    )


def _oracle(options: PlacerOptions) -> Placer:
    from dreamshard.backends import make_backend
    from dreamshard.placers.oracle import OraclePlacer

    if options.backend is None:
        raise InputError("placer 'oracle' searches the backend's own costs: it needs a backend")
    backend = make_backend(options.backend, options.backend_options)
    return OraclePlacer(
        backend,
        evaluations=options.oracle_evaluations,
        seed=options.seed,
        constraints=options.constraints,
        sharding=options.sharding,
    )


#: Every placer by name, in display order.
PLACERS: dict[str, PlacerEntry] = {
    "random": PlacerEntry(PlacerKind.RULE, _random, "uniform device with room"),
    **{
        proxy: PlacerEntry(PlacerKind.RULE, _greedy(proxy), f"expert rule on {proxy} cost")
        for proxy in PROXIES
    },
    "dreamshard": PlacerEntry(
        PlacerKind.LEARNED, _dreamshard, "DreamShard model (default: the packaged one) + search"
    ),
    "torchrec": PlacerEntry(PlacerKind.EXTERNAL, _torchrec, "TorchRec's planner, table-wise"),
    "torchrec-all": PlacerEntry(
        PlacerKind.EXTERNAL, _torchrec_all, "TorchRec's planner, table-, column- or row-wise"
    ),
    "rnn": PlacerEntry(
        PlacerKind.MEASURED_SEARCH, _rnn, "RNN policy trained per task on measured costs"
    ),
    "oracle": PlacerEntry(
        PlacerKind.REFERENCE,
        _oracle,
        "reference: long search on the simulator's own costs (~60k evaluations per task)",
    ),
}

#: The placers that honour ``PlacerOptions.sharding`` (the others place whole tables).
SPLITTING_PLACERS: tuple[str, ...] = ("dreamshard", "oracle")

#: The name of DreamShard itself (variants are named ``dreamshard@<family>``).
LEARNED_PLACER = "dreamshard"

#: The paper's baselines, in display order.
BASELINE_PLACERS: tuple[str, ...] = tuple(
    name for name, entry in PLACERS.items() if entry.kind is PlacerKind.RULE
)

#: What comparisons run by default: the paper's baselines and TorchRec's own planner
#: (table-wise), the production baseline users would pick instead (METHOD.md section 6).
#: ``torchrec-all`` is left out: on CPU, TorchRec splits only tables of dim >= 256, so on
#: most suites it equals ``torchrec`` at the cost of one more measured placement per task.
COMPARISON_PLACERS: tuple[str, ...] = tuple(
    name
    for name, entry in PLACERS.items()
    if entry.kind in (PlacerKind.RULE, PlacerKind.EXTERNAL) and name != "torchrec-all"
)


def kind_of(name: str) -> PlacerKind | None:
    """The kind of a placer by its (display) name; ``dreamshard@family`` is learned.

    None for names the registry does not know (e.g. a benchmark's own variant).
    """
    entry = PLACERS.get(name.partition("@")[0])
    return entry.kind if entry is not None else None


def is_baseline(name: str) -> bool:
    """Whether a placer is a baseline DreamShard is compared against (any known
    placer that is neither learned nor a reference)."""
    kind = kind_of(name)
    return kind is not None and kind not in (PlacerKind.LEARNED, PlacerKind.REFERENCE)


def is_reference(name: str) -> bool:
    """Whether a placer is a yardstick (the ORACLE) rather than a competitor."""
    return kind_of(name) is PlacerKind.REFERENCE


def spends_measurements(name: str) -> bool:
    """Whether a placer measures on the backend to place each task."""
    return kind_of(name) is PlacerKind.MEASURED_SEARCH


def make_placer(name: str, options: PlacerOptions | None = None) -> Placer:
    """The placer called ``name``; unknown names raise InputError listing the known ones."""
    if name not in PLACERS:
        raise InputError(f"unknown placer {name!r} (known: {', '.join(PLACERS)})")
    return PLACERS[name].build(options or PlacerOptions())
