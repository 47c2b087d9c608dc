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


@dataclass(frozen=True)
class PlacerOptions:
    """Options a placer may need; each factory reads the ones it understands.

    Attributes:
        seed: Seed of any randomness.
        model_dir: Folder of a trained DreamShard model (``dreamshard`` only).
        samples: Extra sampled placements rated by the cost network (``dreamshard`` only).
        backend: Cost backend name that placers searching on measurements use (``rnn``).
        backend_options: Options of that backend (``rnn``; defaults when None).
        budget: Backend measurements per task (``rnn``).
        constraints: User constraints (pins, together and apart groups), by name;
            every placer resolves them against each task and honours them, or refuses
            them when built (``torchrec``, ``dreamshard``).
    """

    seed: int = DEFAULT_SEED
    model_dir: str | None = None
    samples: int = 0
    backend: str | None = None
    backend_options: BackendOptions | None = None
    budget: int = 500
    constraints: ConstraintSpec | None = None


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
    from dreamshard.method.checkpoint import DreamShardModel
    from dreamshard.placers.dreamshard import DreamShardPlacer

    if options.model_dir is None:
        raise InputError("placer 'dreamshard' needs a trained model: pass --model DIR")
    if options.samples < 0:
        raise InputError(f"--samples must be >= 0, got {options.samples}")
    model = DreamShardModel.load(options.model_dir)
    return DreamShardPlacer(
        model, samples=options.samples, seed=options.seed, constraints=options.constraints
    )


def _torchrec(options: PlacerOptions) -> Placer:
    from dreamshard.placers.torchrec import TorchRecPlacer

    return TorchRecPlacer(constraints=options.constraints)


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


#: Every placer by name, in display order.
PLACERS: dict[str, PlacerEntry] = {
    "random": PlacerEntry(PlacerKind.RULE, _random, "uniform device with room"),
    **{
        proxy: PlacerEntry(PlacerKind.RULE, _greedy(proxy), f"expert rule on {proxy} cost")
        for proxy in PROXIES
    },
    "dreamshard": PlacerEntry(PlacerKind.LEARNED, _dreamshard, "trained DreamShard model"),
    "torchrec": PlacerEntry(PlacerKind.EXTERNAL, _torchrec, "TorchRec's planner, table-wise"),
    "rnn": PlacerEntry(
        PlacerKind.MEASURED_SEARCH, _rnn, "RNN policy trained per task on measured costs"
    ),
}

#: The name of DreamShard itself (variants are named ``dreamshard@<family>``).
LEARNED_PLACER = "dreamshard"

#: The paper's baselines, in display order.
BASELINE_PLACERS: tuple[str, ...] = tuple(
    name for name, entry in PLACERS.items() if entry.kind is PlacerKind.RULE
)

#: What comparisons run by default: the paper's baselines and TorchRec's own planner
#: (table-wise), the production baseline users would pick instead (METHOD.md section 6).
COMPARISON_PLACERS: tuple[str, ...] = tuple(
    name for name, entry in PLACERS.items() if entry.kind in (PlacerKind.RULE, PlacerKind.EXTERNAL)
)


def kind_of(name: str) -> PlacerKind | None:
    """The kind of a placer by its (display) name; ``dreamshard@family`` is learned.

    None for names the registry does not know (e.g. a benchmark's own variant).
    """
    entry = PLACERS.get(name.partition("@")[0])
    return entry.kind if entry is not None else None


def is_baseline(name: str) -> bool:
    """Whether a placer is a baseline DreamShard is compared against (any known
    placer that is not learned)."""
    kind = kind_of(name)
    return kind is not None and kind is not PlacerKind.LEARNED


def spends_measurements(name: str) -> bool:
    """Whether a placer measures on the backend to place each task."""
    return kind_of(name) is PlacerKind.MEASURED_SEARCH


def make_placer(name: str, options: PlacerOptions | None = None) -> Placer:
    """The placer called ``name``; unknown names raise InputError listing the known ones."""
    if name not in PLACERS:
        raise InputError(f"unknown placer {name!r} (known: {', '.join(PLACERS)})")
    return PLACERS[name].build(options or PlacerOptions())
