"""The benchmark's config: its schema (dataclasses), validation and the packaged default.

A config file (TOML or JSON, by extension) names the backend, the task suites (tables x
devices x memory), the training families and the placers; docs/benchmark.md lists every
field. :func:`load_config` without a path reads the default config shipped inside the
package (``dreamshard/bench/default.toml``, through :mod:`importlib.resources`, so it
works from any install). Every error is one line naming the bad field.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dreamshard.backends import BACKEND_NAMES, BackendOptions
from dreamshard.errors import InputError
from dreamshard.fileio import parse_json, read_text
from dreamshard.method.train import TrainConfig
from dreamshard.placers.registry import PLACERS, is_reference
from dreamshard.placers.rnn import RnnConfig
from dreamshard.units import parse_memory

#: The package holding the default config, and the file's name in it.
DEFAULT_CONFIG_PACKAGE = "dreamshard.bench"
DEFAULT_CONFIG_NAME = "default.toml"


@dataclass(frozen=True)
class FamilySpec:
    """A training family: one DreamShard model trained on its training tasks.

    Attributes:
        name: Identifier, referred to by suites.
        min_tables: Fewest tables per training task.
        max_tables: Most tables per training task.
        devices: Devices per training task.
        memory: Memory per device, e.g. ``"1GB"``.
        train: Training settings.
    """

    name: str
    min_tables: int
    max_tables: int
    devices: int
    memory: str
    train: TrainConfig

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "family") -> FamilySpec:
        """The inverse of :meth:`to_json`."""
        fields = dict(data)
        fields["train"] = _build(TrainConfig, fields.get("train"), f"{where}.train")
        spec: FamilySpec = _build(cls, fields, where)
        return spec


@dataclass(frozen=True)
class SuiteSpec:
    """A test suite: tasks of a fixed shape, placed by every placer.

    Attributes:
        name: Identifier (shown in tables and plots).
        tables: Tables per task.
        devices: Devices per task.
        memory: Memory per device, e.g. ``"1GB"``.
        family: The training family whose model is this suite's ``dreamshard``.
    """

    name: str
    tables: int
    devices: int
    memory: str
    family: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "suite") -> SuiteSpec:
        """The inverse of :meth:`to_json`."""
        spec: SuiteSpec = _build(cls, data, where)
        return spec


@dataclass(frozen=True)
class QuickSpec:
    """What ``--quick`` shrinks (everything else stays as configured)."""

    num_train_tasks: int = 10
    num_test_tasks: int = 4
    rnn_budget: int = 100
    iterations: int = 4
    measurements_per_iteration: int = 30
    cost_steps: int = 100
    policy_batches: int = 20
    oracle_evaluations: int = 2_000


@dataclass(frozen=True)
class BenchmarkConfig:
    """Resolved benchmark config (saved as ``config.json`` next to the results).

    Attributes:
        backend: Cost backend name (``sim`` or ``fbgemm``).
        backend_options: Its options (the seed is the benchmark's).
        seed: Seed of the pool, the suites, training, the random and rnn placers.
        pool_tables: Tables in the synthetic DLRM-like pool.
        dim: Embedding dim of every table.
        max_rows: Cap on rows per table (None: uncapped).
        num_train_tasks: Training tasks per family.
        num_test_tasks: Test tasks per suite.
        placers: Placer names, in display order.
        rnn: Settings of the ``rnn`` placer.
        oracle_evaluations: Annealing proposals per restart of the ``oracle`` placer.
        dreamshard_samples: Extra sampled placements DreamShard rates with its cost network.
        breakdown_suite: Suite whose first test task the stage-cost plot shows.
        families: Training families.
        suites: Test suites.
        quick: Whether ``--quick`` shrank this config.
    """

    backend: str
    backend_options: BackendOptions
    seed: int
    pool_tables: int
    dim: int
    max_rows: int | None
    num_train_tasks: int
    num_test_tasks: int
    placers: tuple[str, ...]
    rnn: RnnConfig
    dreamshard_samples: int
    breakdown_suite: str
    families: tuple[FamilySpec, ...]
    suites: tuple[SuiteSpec, ...]
    quick_spec: QuickSpec = field(default_factory=QuickSpec)
    quick: bool = False
    oracle_evaluations: int = 20_000

    def family(self, name: str) -> FamilySpec:
        return next(f for f in self.families if f.name == name)

    def shrunk(self) -> BenchmarkConfig:
        """The ``--quick`` variant: fewer tasks, smaller training and rnn budgets."""
        q = self.quick_spec
        train_changes: dict[str, Any] = {
            "iterations": q.iterations,
            "measurements_per_iteration": q.measurements_per_iteration,
            "cost_steps": q.cost_steps,
            "policy_batches": q.policy_batches,
        }
        families = tuple(
            dataclasses.replace(f, train=dataclasses.replace(f.train, **train_changes))
            for f in self.families
        )
        return dataclasses.replace(
            self,
            num_train_tasks=q.num_train_tasks,
            num_test_tasks=q.num_test_tasks,
            rnn=dataclasses.replace(self.rnn, budget=q.rnn_budget),
            families=families,
            quick=True,
            oracle_evaluations=min(self.oracle_evaluations, q.oracle_evaluations),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "config") -> BenchmarkConfig:
        """The inverse of :meth:`to_json` (e.g. ``config.json`` or results.json's
        ``config``); the values are taken as they are, not validated again."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object")
        fields = dict(data)
        fields["backend_options"] = _build(
            BackendOptions, fields.get("backend_options"), f"{where}.backend_options"
        )
        fields["rnn"] = _build(RnnConfig, fields.get("rnn"), f"{where}.rnn")
        fields["placers"] = tuple(fields.get("placers", ()))
        fields["families"] = tuple(
            FamilySpec.from_json(f, f"{where}.families[{i}]")
            for i, f in enumerate(fields.get("families", ()))
        )
        fields["suites"] = tuple(
            SuiteSpec.from_json(f, f"{where}.suites[{i}]")
            for i, f in enumerate(fields.get("suites", ()))
        )
        if "quick_spec" in fields:
            fields["quick_spec"] = _build(QuickSpec, fields["quick_spec"], f"{where}.quick_spec")
        config: BenchmarkConfig = _build(cls, fields, where)
        return config


class _Reader:
    """Typed access to one table of a config file; errors name the field."""

    def __init__(self, data: Any, where: str, known: Sequence[str]) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a table of fields")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
            )
        self.data = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get_int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise InputError(f"{self._name(key)}: missing (an integer >= {minimum})")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InputError(f"{self._name(key)}: must be an integer >= {minimum}, got {value!r}")
        return value

    def get_opt_int(self, key: str, minimum: int = 1) -> int | None:
        if self.data.get(key) is None:
            return None
        return self.get_int(key, minimum=minimum)

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise InputError(f"{self._name(key)}: must be true or false, got {value!r}")
        return value

    def get_float(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{self._name(key)}: must be a number, got {value!r}")
        return float(value)

    def get_str(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise InputError(f"{self._name(key)}: missing (a string)")
        if not isinstance(value, str) or not value:
            raise InputError(f"{self._name(key)}: must be a non-empty string, got {value!r}")
        return value

    def get_memory(self, key: str) -> str:
        value = self.data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        else:
            text = self.get_str(key)
        parse_memory(text, self._name(key))
        return text

    def table(self, key: str, known: Sequence[str]) -> _Reader:
        return _Reader(self.data.get(key, {}), self._name(key), known)

    def tables(self, key: str, known: Sequence[str]) -> list[_Reader]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value:
            raise InputError(f"{self._name(key)}: must be a non-empty list of tables")
        return [_Reader(v, f"{self._name(key)}[{i}]", known) for i, v in enumerate(value)]


_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed")
#: Integer training fields whose smallest value is not 1.
_TRAIN_MINIMUMS = {"warmup_tasks": 0, "shard_measurements": 0}
_QUICK_FIELDS = tuple(f.name for f in dataclasses.fields(QuickSpec))
_TOP_FIELDS = (
    "backend",
    "seed",
    "pool",
    "num_train_tasks",
    "num_test_tasks",
    "placers",
    "rnn",
    "oracle_evaluations",
    "dreamshard_samples",
    "breakdown_suite",
    "families",
    "suites",
    "quick",
)


def _train_config(reader: _Reader, seed: int) -> TrainConfig:
    defaults = TrainConfig()
    values: dict[str, Any] = {}
    for name in _TRAIN_FIELDS:
        default = getattr(defaults, name)
        if isinstance(default, bool):
            values[name] = reader.get_bool(name, default)
        elif isinstance(default, float):
            values[name] = reader.get_float(name, default)
        elif isinstance(default, str):
            values[name] = reader.get_str(name, default)
        else:
            values[name] = reader.get_int(name, default, minimum=_TRAIN_MINIMUMS.get(name, 1))
    try:
        return TrainConfig(seed=seed, **values)
    except InputError as err:
        raise InputError(f"{reader.where}: {err}") from None


def parse_config(data: Any, where: str) -> BenchmarkConfig:
    """Validate a parsed config file; errors are one line naming the field.

    Raises:
        InputError: naming ``where`` and the bad field.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a table of fields at the top level")
    try:
        return _parse(_Reader(data, "", _TOP_FIELDS))
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def _parse(top: _Reader) -> BenchmarkConfig:
    seed = top.get_int("seed", 0, minimum=0)
    backend = top.table(
        "backend",
        ("name", "batch_size", "profile", "row_cap", "windows", "calls_per_window", "device"),
    )
    backend_name = backend.get_str("name", "sim")
    if backend_name not in BACKEND_NAMES:
        raise InputError(
            f"backend.name: unknown backend {backend_name!r} (known: {', '.join(BACKEND_NAMES)})"
        )
    defaults = BackendOptions()
    options = BackendOptions(
        batch_size=backend.get_int("batch_size", defaults.batch_size),
        seed=seed,
        profile=backend.get_str("profile", defaults.profile),
        row_cap=backend.get_opt_int("row_cap", minimum=100),
        windows=backend.get_int("windows", defaults.windows),
        calls_per_window=backend.get_int("calls_per_window", defaults.calls_per_window),
        device=backend.get_str("device", defaults.device),
    )
    pool = top.table("pool", ("num_tables", "dim", "max_rows"))
    dim = pool.get_int("dim", 16)
    if dim % 4:
        raise InputError(f"pool.dim: must be a multiple of 4 for FBGEMM, got {dim}")

    placers = top.data.get("placers")
    if (
        not isinstance(placers, list)
        or not placers
        or not all(isinstance(p, str) and p for p in placers)
    ):
        raise InputError(f"placers: must be a non-empty list of placer names, got {placers!r}")
    if len(set(placers)) != len(placers):
        raise InputError("placers: a placer is named twice")
    for name in placers:
        if name not in PLACERS:
            raise InputError(f"placers: unknown placer {name!r} (known: {', '.join(PLACERS)})")
        if is_reference(name) and backend_name != "sim":
            raise InputError(
                f"placers: {name!r} searches the simulator's own costs; backend.name is "
                f"{backend_name!r} (use sim, or leave {name!r} out)"
            )

    rnn_reader = top.table(
        "rnn",
        (
            "budget",
            "samples_per_update",
            "hidden",
            "learning_rate",
            "baseline_decay",
            "entropy_weight",
        ),
    )
    rnn_defaults = RnnConfig()
    try:
        rnn = RnnConfig(
            budget=rnn_reader.get_int("budget", rnn_defaults.budget),
            samples_per_update=rnn_reader.get_int(
                "samples_per_update", rnn_defaults.samples_per_update, minimum=2
            ),
            hidden=rnn_reader.get_int("hidden", rnn_defaults.hidden),
            learning_rate=rnn_reader.get_float("learning_rate", rnn_defaults.learning_rate),
            baseline_decay=rnn_reader.get_float("baseline_decay", rnn_defaults.baseline_decay),
            entropy_weight=rnn_reader.get_float("entropy_weight", rnn_defaults.entropy_weight),
        )
    except InputError as err:
        raise InputError(f"rnn: {err}") from None

    families = []
    for reader in top.tables("families", ("name", "tables", "devices", "memory", "train")):
        tables = reader.data.get("tables")
        if isinstance(tables, list) and len(tables) == 2:
            low = _Reader({"tables": tables[0]}, reader.where, ("tables",)).get_int("tables")
            high = _Reader({"tables": tables[1]}, reader.where, ("tables",)).get_int("tables")
            if low > high:
                raise InputError(f"{reader.where}.tables: range [min, max] has min > max")
        else:
            low = high = reader.get_int("tables")
        families.append(
            FamilySpec(
                name=reader.get_str("name"),
                min_tables=low,
                max_tables=high,
                devices=reader.get_int("devices"),
                memory=reader.get_memory("memory"),
                train=_train_config(reader.table("train", _TRAIN_FIELDS), seed),
            )
        )
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise InputError("families: a family name is used twice")

    suites = []
    for reader in top.tables("suites", ("name", "tables", "devices", "memory", "family")):
        spec = SuiteSpec(
            name=reader.get_str("name"),
            tables=reader.get_int("tables"),
            devices=reader.get_int("devices"),
            memory=reader.get_memory("memory"),
            family=reader.get_str("family"),
        )
        if spec.family not in names:
            raise InputError(
                f"{reader.where}.family: unknown family {spec.family!r} (known: {', '.join(names)})"
            )
        suites.append(spec)
    suite_names = [s.name for s in suites]
    if len(set(suite_names)) != len(suite_names):
        raise InputError("suites: a suite name is used twice")
    breakdown = top.get_str("breakdown_suite", suite_names[-1])
    if breakdown not in suite_names:
        raise InputError(f"breakdown_suite: unknown suite {breakdown!r}")

    quick = top.table("quick", _QUICK_FIELDS)
    quick_spec = QuickSpec(
        **{
            name: quick.get_int(
                name,
                getattr(QuickSpec(), name),
                minimum=2 if "tasks" in name else 0 if name == "oracle_evaluations" else 1,
            )
            for name in _QUICK_FIELDS
        }
    )
    return BenchmarkConfig(
        backend=backend_name,
        backend_options=options,
        seed=seed,
        pool_tables=pool.get_int("num_tables", 856),
        dim=dim,
        max_rows=pool.get_opt_int("max_rows", minimum=100),
        num_train_tasks=top.get_int("num_train_tasks", 50),
        num_test_tasks=top.get_int("num_test_tasks", 20),
        placers=tuple(placers),
        rnn=rnn,
        dreamshard_samples=top.get_int("dreamshard_samples", 0, minimum=0),
        oracle_evaluations=top.get_int("oracle_evaluations", 20_000, minimum=0),
        breakdown_suite=breakdown,
        families=tuple(families),
        suites=tuple(suites),
        quick_spec=quick_spec,
    )


def load_config(path: str | Path | None = None) -> BenchmarkConfig:
    """Read a benchmark config from a TOML or JSON file (by extension) and validate it.

    Args:
        path: The config file; None reads the packaged default
            (:func:`default_config_text`).

    Raises:
        InputError: A missing or malformed file, or a bad field (named).
    """
    if path is None:
        return parse_config_text(default_config_text(), DEFAULT_CONFIG_WHERE, json_format=False)
    source = Path(path)
    text = read_text(source)  # one line for a missing, unreadable or binary file
    return parse_config_text(text, str(source), json_format=source.suffix.lower() == ".json")


#: How errors in the packaged default config name it.
DEFAULT_CONFIG_WHERE = f"{DEFAULT_CONFIG_PACKAGE.replace('.', '/')}/{DEFAULT_CONFIG_NAME}"


def default_config_text() -> str:
    """The packaged default config file's text (a starting point for your own)."""
    return resources.files(DEFAULT_CONFIG_PACKAGE).joinpath(DEFAULT_CONFIG_NAME).read_text("utf-8")


def parse_config_text(text: str, where: str, json_format: bool) -> BenchmarkConfig:
    """Parse a config file's text (TOML, or JSON when ``json_format``) and validate it.

    Raises:
        InputError: naming ``where``: malformed text or a bad field.
    """
    if json_format:
        data = parse_json(text, where)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"{where}: invalid TOML ({err})") from None
        except RecursionError:
            raise InputError(f"{where}: invalid TOML (nested too deeply)") from None
    return parse_config(data, where)


def _build(cls: type[Any], data: Any, where: str) -> Any:
    """``cls(**data)`` for a dataclass read back from JSON; errors name ``where``."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown field")
    try:
        return cls(**data)
    except TypeError as err:
        raise InputError(f"{where}: {err}") from None
