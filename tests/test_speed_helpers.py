"""Exact helpers of the planning loops: each gives the very floats (and choices) of the
plain computation it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamshard.data.constraints import NO_CONSTRAINTS, ConstraintTracker
from dreamshard.data.synthetic import generate_table_pool
from dreamshard.data.tasks import make_devices, make_task
from dreamshard.method.costnet import CostNet, CostNetStageModel
from dreamshard.method.search import joined_partial, row_sums
from dreamshard.runtime import TORCH_ELEMENTWISE_MIN, add_into, relu_


@pytest.mark.parametrize("stages", [1, 2, 3, 5, 7, 8, 11])
def test_row_sums_are_numpys_sums_bit_for_bit(stages: int) -> None:
    rng = np.random.default_rng(stages)
    values = rng.normal(size=(257, stages)) * rng.lognormal(size=(257, stages)) * 1e3
    np.testing.assert_array_equal(row_sums(values), values.sum(axis=-1))


@pytest.mark.parametrize("num_devices", [1, 2, 5, 64])
def test_joined_partial_is_the_max_with_the_others_bit_for_bit(num_devices: int) -> None:
    rng = np.random.default_rng(num_devices)
    costs = rng.lognormal(size=(num_devices, 3))
    if num_devices > 2:
        costs[1, 2] = costs[num_devices - 1, 2] = costs.max() + 1  # a tie at the top
    everywhere = np.arange(num_devices)
    subsets = [everywhere, everywhere[::2], everywhere[1:]]
    for options in (o for o in subsets if len(o)):
        new = costs[options] + rng.lognormal(size=(len(options), 3))
        others = np.stack(
            [
                np.delete(costs, d, axis=0).max(axis=0) if num_devices > 1 else np.full(3, -np.inf)
                for d in options
            ]
        )
        expected = np.maximum(others, new).sum(axis=-1)
        np.testing.assert_array_equal(joined_partial(costs, options, new), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [3, 1024])
def test_relu_and_add_are_numpys_bit_for_bit(dtype: type, rows: int) -> None:
    rng = np.random.default_rng(rows)
    a = rng.normal(size=(rows, 192)).astype(dtype)
    b = rng.normal(size=192).astype(dtype)
    out = np.empty_like(a)
    np.testing.assert_array_equal(add_into(out, a, b), a + b)
    np.testing.assert_array_equal(relu_(out), np.maximum(a + b, 0.0))
    frozen = a.copy()
    frozen.flags.writeable = False  # numpy's path: torch would share its memory
    np.testing.assert_array_equal(add_into(out, frozen, b), a + b)


def test_stage_costs_are_the_plain_formula_bit_for_bit() -> None:
    costnet = CostNet()
    costnet.eval()
    costnet.cost_scale_ms = 3.0
    features = torch.randn(40, len(costnet.encoder.net[0].weight[0]))
    model = CostNetStageModel(costnet, features, num_devices=8)
    rng = np.random.default_rng(0)
    for rows in (2, 7, 1 + TORCH_ELEMENTWISE_MIN // 192, 1024, 5):  # both paths, buffer reuse
        sums = rng.normal(size=(rows, model.table_vectors.shape[1]))
        counts = rng.integers(0, 3, rows).astype(np.float64)
        hidden = np.maximum(sums + model._b1, 0.0)
        expected = (hidden @ model._w2 + model._b2) * model._scale
        expected[:, :2] *= counts[:, None] > 0
        np.testing.assert_array_equal(model.stage_costs(sums, counts), expected)


def test_tracker_without_constraints_is_the_general_tracker() -> None:
    pool = generate_table_pool(30, seed=5, dims=[16, 64], max_rows=400_000)
    t = make_task("t", pool, make_devices(4, 3 * max(x.size_bytes for x in pool)))
    fast = ConstraintTracker(t, NO_CONSTRAINTS, batch=2)
    general = ConstraintTracker(t, NO_CONSTRAINTS, batch=2)
    general._free = [False] * t.num_tables  # every table through the general code
    rng = np.random.default_rng(1)
    for i in rng.permutation(t.num_tables):
        legal = fast.legal(int(i))
        np.testing.assert_array_equal(legal, general.legal(int(i)))
        choice = [int(rng.choice(np.flatnonzero(row))) if row.any() else 0 for row in legal]
        fast.place(int(i), choice)
        general.place(int(i), choice)
        np.testing.assert_array_equal(fast.used, general.used)
    np.testing.assert_array_equal(fast.device_of, general.device_of)
