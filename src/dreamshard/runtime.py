"""Process-level settings for predictable speed on small machines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block.

    The networks work on small matrices, where a second thread only adds
    synchronisation, and FBGEMM's CPU kernels are single-threaded (MEASUREMENT.md);
    on a 2-core machine two busy processes with two threads each slow down many-fold.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
