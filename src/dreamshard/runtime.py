"""Process-level settings for predictable speed on small machines, and the host they run on."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import ThreadpoolController


@functools.cache
def _blas() -> ThreadpoolController:
    """numpy's BLAS thread pools (inspected once: about 10 ms)."""
    return ThreadpoolController()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch, and numpy's BLAS, on one thread inside the block.

    The networks work on small matrices, where a second thread only adds
    synchronisation (the searches' numpy products on a few hundred rows ran 3x slower on
    two threads), and FBGEMM's CPU kernels are single-threaded (MEASUREMENT.md); on a
    2-core machine two busy processes with two threads each slow down many-fold.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def cpu_model(default: str = "unknown CPU") -> str:
    """The host CPU's model name, as ``/proc/cpuinfo`` gives it (Linux).

    Args:
        default: What to return where ``/proc/cpuinfo`` cannot be read or has no
            ``model name`` line.

    Returns:
        The first ``model name`` of ``/proc/cpuinfo``, stripped, or ``default``.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
