"""Simulator profiles: a calibration of the analytical model for one kind of hardware.

A :class:`SimProfile` holds the fused-kernel model's fitted parameters
(:class:`KernelParams`, see ``backends/sim/model.py``) and the all-to-all model of the
communication stages, and is stored as JSON. Profiles shipped with the package live in
``src/dreamshard/profiles/<name>.json`` and are found through ``importlib.resources``
(:func:`available_profiles`, :func:`load_profile`); :data:`DEFAULT_PROFILE_NAME` is used
where no profile is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dreamshard.backends.comm import VOLUME_MODES, AllToAllModel
from dreamshard.errors import InputError
from dreamshard.fileio import atomic_write_text, parse_json, read_text
from dreamshard.types import FloatArray

#: Version of the profile JSON format written by ``SimProfile.to_dict``. Version 2 has
#: the footprint model's kernel parameters, the cache capacity among them.
PROFILE_FORMAT_VERSION = 2

#: Packaged profile used when a ``SimBackend`` is built without one.
DEFAULT_PROFILE_NAME = "cpu-zen4"

#: Package folder of the packaged profiles (``src/dreamshard/profiles/<name>.json``).
_PROFILE_PACKAGE_DIR = "profiles"


@dataclass(frozen=True)
class KernelParams:
    """The fitted parameters of the fused-kernel model; all positive (fit in log space).

    Costs in ns are per unit of work of one table of a shard; see the docstring of
    ``backends/sim/model.py`` for the equations.

    Attributes:
        fwd_op_fixed_ms: Fixed cost of one fused forward call (MEASUREMENT.md: ~0.1 ms).
        fwd_bag_ns: Forward cost per table and sample (the kernel's per-bag work,
            writing the pooled row included): ~0.1 ms per table at batch 4096.
        fwd_lookup_ns: Forward cost of one lookup of a one-line row found in cache.
        fwd_extra_line_ns: Forward cost per lookup of each further cache line of a row.
        fwd_table_span_ns: Further forward cost per lookup into a table bigger than the
            cache (address translation; smooth in the table's bytes).
        fwd_first_touch_ns: Forward cost per line of the first touch of a row in a batch.
        fwd_miss_ns: Further forward cost per line of a first touch that misses the cache
            (the shard's footprint outgrows it); small, the kernel prefetches.
        fwd_output_ns_per_value: Forward cost per pooled output value written (B x dim).
        bwd_op_fixed_ms: Fixed cost of one fused backward call.
        bwd_bag_ns: Backward cost per table and sample (building the sort's input).
        bwd_lookup_ns: Backward cost of one lookup (gathering its output-gradient row).
        bwd_sort_pass_ns: Backward cost per lookup of each pass of the radix sort.
        bwd_extra_line_ns: Backward cost per lookup of each further line of a row.
        bwd_distinct_ns: Backward cost per distinct row (its fused SGD update) in cache.
        bwd_miss_ns: Further backward cost per distinct row whose update misses the
            cache (no prefetch: about a memory latency).
        bwd_miss_extra_line_ns: Further cost of each further line of such a row.
        cache_bytes: Effective capacity of the caches that keep a shard's rows between
            batches; fitted (on the Zen 4 VM ~1.6 MiB: the 1 MiB L2 and little of L3).
        cache_transition_octaves: Width of the smooth cache-capacity transition, in
            octaves (log2 units) of footprint.
    """

    fwd_op_fixed_ms: float
    fwd_bag_ns: float
    fwd_lookup_ns: float
    fwd_extra_line_ns: float
    fwd_table_span_ns: float
    fwd_first_touch_ns: float
    fwd_miss_ns: float
    fwd_output_ns_per_value: float
    bwd_op_fixed_ms: float
    bwd_bag_ns: float
    bwd_lookup_ns: float
    bwd_sort_pass_ns: float
    bwd_extra_line_ns: float
    bwd_distinct_ns: float
    bwd_miss_ns: float
    bwd_miss_extra_line_ns: float
    cache_bytes: float
    cache_transition_octaves: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InputError(f"kernel parameter {f.name!r} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0.0):
                raise InputError(f"kernel parameter {f.name!r} must be positive, got {value!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Parameter names in their fixed order (the order of ``to_vector``)."""
        return tuple(f.name for f in fields(cls))

    def to_vector(self) -> FloatArray:
        """The parameters as a vector, in ``names()`` order."""
        return np.array([float(getattr(self, n)) for n in self.names()], dtype=np.float64)

    @classmethod
    def from_vector(cls, values: Sequence[float] | FloatArray) -> KernelParams:
        """Parameters from a vector in ``names()`` order."""
        names = cls.names()
        if len(values) != len(names):
            raise InputError(f"expected {len(names)} kernel parameters, got {len(values)}")
        return cls(**{n: float(v) for n, v in zip(names, values, strict=True)})


@dataclass(frozen=True)
class SimProfile:
    """A calibration of the simulator for one kind of hardware.

    Attributes:
        name: Short name (the packaged file name without ``.json``).
        description: What the profile models, in a sentence or two.
        measured: True only when the kernel parameters were fitted to measurements.
        fitted_on: The hardware and measurements behind the numbers, or
            ``"public figures, not measured"``.
        kernel: Parameters of the fused-kernel model (the cache capacity included).
        comm: All-to-all model used for both communication stages.
    """

    name: str
    description: str
    measured: bool
    fitted_on: str
    kernel: KernelParams
    comm: AllToAllModel

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the format ``from_dict`` reads)."""
        return {
            "format_version": PROFILE_FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "measured": self.measured,
            "fitted_on": self.fitted_on,
            "kernel": asdict(self.kernel),
            "comm": asdict(self.comm),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> SimProfile:
        """Read a profile dictionary, checking every field.

        Args:
            data: As written by ``to_dict``.
            source: Where it came from, for error messages.

        Raises:
            InputError: A field is missing, unknown, of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "format_version" in data and data["format_version"] != PROFILE_FORMAT_VERSION:
            raise InputError(
                f"{source}: format_version {data['format_version']!r} is not supported "
                f"(this version reads {PROFILE_FORMAT_VERSION}; profiles of format 1 hold "
                "the parameters of an earlier kernel model: refit them with "
                "`dreamshard calibrate`)"
            )
        expected = {
            "format_version",
            "name",
            "description",
            "measured",
            "fitted_on",
            "kernel",
            "comm",
        }
        _check_keys(data, expected, source)
        for key in ("name", "description", "fitted_on"):
            if not isinstance(data[key], str):
                raise InputError(f"{source}: field {key!r} must be a string")
        if not isinstance(data["measured"], bool):
            raise InputError(f"{source}: field 'measured' must be true or false")
        kernel = data["kernel"]
        comm = data["comm"]
        if not isinstance(kernel, dict) or not isinstance(comm, dict):
            raise InputError(f"{source}: fields 'kernel' and 'comm' must be JSON objects")
        _check_keys(kernel, set(KernelParams.names()), f"{source}: kernel")
        # "volume" and the row-wise factors came later: profiles without them keep the
        # full-duplex default and factors of 1.
        defaults = {"volume": "max", "reduce_scatter_factor": 1.0, "all_gather_factor": 1.0}
        _check_keys(
            {**defaults, **comm}, {f.name for f in fields(AllToAllModel)}, f"{source}: comm"
        )
        if comm.get("volume", "max") not in VOLUME_MODES:
            raise InputError(f"{source}: comm.volume must be one of {', '.join(VOLUME_MODES)}")
        checked = (
            ("latency_ms", 0.0, ">= 0"),
            ("bandwidth_gbps", None, "> 0"),
            ("reduce_scatter_factor", None, "> 0"),
            ("all_gather_factor", None, "> 0"),
        )
        for key, least, word in checked:
            value = {**defaults, **comm}[key]
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or (value < least if least is not None else value <= 0)
            ):
                raise InputError(
                    f"{source}: comm.{key} must be a finite number {word}, got {value!r}"
                )
        if not isinstance(comm["source"], str):
            raise InputError(f"{source}: comm.source must be a string")
        try:
            kernel_params = KernelParams(**kernel)
        except InputError as err:
            raise InputError(f"{source}: {err}") from err
        return cls(
            name=data["name"],
            description=data["description"],
            measured=data["measured"],
            fitted_on=data["fitted_on"],
            kernel=kernel_params,
            comm=AllToAllModel(
                latency_ms=float(comm["latency_ms"]),
                bandwidth_gbps=float(comm["bandwidth_gbps"]),
                source=comm["source"],
                volume=comm.get("volume", "max"),
                reduce_scatter_factor=float(comm.get("reduce_scatter_factor", 1.0)),
                all_gather_factor=float(comm.get("all_gather_factor", 1.0)),
            ),
        )

    def to_json(self) -> str:
        """The profile as indented, human-readable JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> SimProfile:
        """Parse a profile from JSON text; ``source`` names it in error messages."""
        return cls.from_dict(parse_json(text, source), source)

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON to ``path``, atomically."""
        atomic_write_text(path, self.to_json())


def _check_keys(data: dict[str, Any], expected: set[str], source: str) -> None:
    missing = sorted(expected - data.keys())
    unknown = sorted(data.keys() - expected)
    if missing:
        raise InputError(f"{source}: missing field(s) {', '.join(missing)}")
    if unknown:
        raise InputError(f"{source}: unknown field(s) {', '.join(unknown)}")


def available_profiles() -> list[str]:
    """Names of the packaged profiles, sorted."""
    folder = resources.files("dreamshard").joinpath(_PROFILE_PACKAGE_DIR)
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    )


def load_profile(name_or_path: str | Path) -> SimProfile:
    """Load a packaged profile by name (``"cpu-zen4"``) or a profile JSON file by path.

    A ``Path``, or a string that ends in ``.json`` or contains a path separator, is read
    as a file; any other string names a packaged profile.

    Raises:
        InputError: The file does not exist or is malformed, or no packaged profile has
            that name (the message lists the available ones).
    """
    text_name = str(name_or_path)
    if isinstance(name_or_path, Path) or text_name.endswith(".json") or "/" in text_name:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(f"profile file {str(path)!r} does not exist")
        return SimProfile.from_json(read_text(path, encoding="utf-8"), source=str(path))
    names = available_profiles()
    if text_name not in names:
        raise InputError(
            f"unknown simulator profile {text_name!r}; available: {', '.join(names)} "
            "(or give a path to a profile .json file)"
        )
    entry = resources.files("dreamshard").joinpath(_PROFILE_PACKAGE_DIR, f"{text_name}.json")
    return SimProfile.from_json(entry.read_text(encoding="utf-8"), source=f"profile {text_name}")
