"""Constants shared across the package, each with its unit in the name."""

from __future__ import annotations

#: Number of access-histogram bins (METHOD.md section 2): 16 doubling buckets
#: (0,1], (1,2], (2,4], ..., (2^14, 2^15] and one bucket above 2^15.
NUM_ACCESS_BINS = 17

#: Upper edges (inclusive) of the first 16 access-count bins; the 17th is open.
ACCESS_BIN_UPPER_EDGES: tuple[int, ...] = tuple(2**k for k in range(16))

#: Batch size (samples) at which table access histograms are defined and at which
#: the measurement backends run unless told otherwise.
DEFAULT_BATCH_SIZE = 4096

#: Bytes per element of each supported training precision.
BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "fp16": 2}

#: FBGEMM's TBE kernels need embedding dims that are multiples of this.
DIM_MULTIPLE = 4

#: Default seed of every random choice in the package.
DEFAULT_SEED = 0

#: A measurement is flagged as taken on a loaded machine when the reference shard runs
#: this much slower than nominal (0.3: 30%), or its timings spread more than this (std /
#: median), or the load average exceeds the cores the measurement leaves free.
LOADED_REFERENCE_SLOWDOWN = 0.3
LOADED_REFERENCE_SPREAD = 0.15

#: Most devices a task may have (a large cluster is a few thousand GPUs; far more is a
#: typo that would exhaust memory building the device list).
MAX_DEVICES = 65_536

#: Most time windows and calls per window a measuring backend accepts (the defaults are
#: 4-8; far more would measure for days).
MAX_TIMING_REPEATS = 10_000

#: Where fused embedding operators can run (and TorchRec plans can put shards).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")
