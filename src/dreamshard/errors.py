"""Typed errors. Each one explains itself; the CLI turns them into one-line messages."""

from __future__ import annotations


class DreamShardError(Exception):
    """Base class of every error the package raises on purpose."""


class InputError(DreamShardError):
    """Bad user input: a file, a field or an option. The message names which."""


class InfeasiblePlacementError(DreamShardError):
    """A table cannot be placed: no device has room for it."""

    def __init__(self, table: str, needed_bytes: int, free_bytes: list[int]) -> None:
        self.table = table
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        most = max(free_bytes) if free_bytes else 0
        super().__init__(
            f"table {table!r} needs {needed_bytes:,} bytes but the most free memory on any "
            f"device is {most:,} bytes"
        )


class InvalidPlacementError(DreamShardError):
    """A placement breaks a rule: a table unplaced, an unknown device, memory exceeded."""


class BackendError(DreamShardError):
    """A cost backend could not measure (missing dependency, out of memory, ...)."""


class ServedAsWorker(Exception):
    """Raised on a non-zero ``torchrun`` rank of the ``distributed`` backend once rank 0
    has shut the worker group down.

    Not an error (so not a DreamShardError): the rank served rank 0's measurements, and
    only rank 0 reports results. The CLI exits 0 without output.
    """
