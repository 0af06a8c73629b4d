"""The exponential-race kernel (moesim/routing/race.py): the fast kernel against the plain one.

``_race_kernel`` leaves out parts holding none of the universe's experts and stops the count
updates and convolutions at the part sizes; the terms it skips are exact zeros, so on random
inputs its answer must equal the plain ``_race_kernel_reference``'s bit for bit (tolerance 0).
The pmfs must also be the closed form where one exists (a single expert's inclusion
probability under top-1 is its popularity share)."""
import numpy as np
import pytest

from moesim.routing.race import race_counts


@pytest.mark.parametrize("seed", range(6))
def test_fast_kernel_is_the_reference_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    for _ in range(8):
        n_parts = int(rng.integers(1, 48))
        k = int(rng.integers(1, 10))
        U = int(rng.integers(1, 70))
        p_U = rng.pareto(1.2, U) + 1e-3  # skewed popularities, some parts empty, some U < k
        label_U = rng.integers(0, n_parts, U)
        fast = race_counts(p_U, label_U, n_parts, k)
        ref = race_counts(p_U, label_U, n_parts, k, reference=True)
        assert np.array_equal(fast, ref)


def test_empty_parts_get_no_picks():
    p_U = np.array([0.5, 0.3, 0.2, 0.1])
    out = race_counts(p_U, np.array([0, 0, 3, 3]), 5, 2)
    assert np.array_equal(out[[1, 2, 4]], np.tile([1.0, 0.0, 0.0], (3, 1)))
    assert np.allclose(out.sum(axis=1), 1.0)


def test_top1_is_the_popularity_share():
    p_U = np.array([4.0, 3.0, 2.0, 1.0])
    out = race_counts(p_U, np.arange(4), 4, 1)
    assert np.allclose(out[:, 1], p_U / p_U.sum(), atol=1e-4)  # quadrature error of the 600-point grid
