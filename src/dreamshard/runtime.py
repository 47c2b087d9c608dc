"""Process-level settings for predictable speed on small machines, the host they run on,
and the elementwise kernels the searches' inner loops use."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

#: Elements from which torch's elementwise kernels beat numpy's: on one thread torch's
#: ReLU is 3-6x and its addition 1.5-2x faster on the searches' [1024, 192] arrays, at
#: about 2 us more per call. Both round each element exactly, so the floats are the same.
TORCH_ELEMENTWISE_MIN = 4096


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


def _torch_ok(out: np.ndarray, *inputs: np.ndarray) -> bool:
    """Whether torch may compute ``out`` from ``inputs`` in place: large, all of one
    dtype, writeable, no negative strides (``torch.from_numpy`` shares their memory)."""
    if out.size < TORCH_ELEMENTWISE_MIN or not out.flags.writeable or min(out.strides) < 0:
        return False
    dtype = out.dtype
    return all(
        a.dtype == dtype and a.flags.writeable and min(a.strides, default=0) >= 0 for a in inputs
    )


def relu_(values: np.ndarray) -> np.ndarray:
    """``np.maximum(values, 0, out=values)`` (the same floats), in place; returns ``values``."""
    if _torch_ok(values):
        torch.from_numpy(values).relu_()
    else:
        np.maximum(values, 0.0, out=values)
    return values


def add_into(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.add(a, b, out=out)`` (``b`` broadcast against ``a``; the same floats); returns
    ``out``."""
    if out.shape == a.shape and _torch_ok(out, a, b):
        torch.add(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    else:
        np.add(a, b, out=out)
    return out
