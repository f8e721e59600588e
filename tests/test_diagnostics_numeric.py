"""The cheap reductions the per-poll code uses give numpy's answers bit for bit."""

import numpy as np

from bess_edge.diagnostics.numeric import SORT_MEDIAN_MAX, median


def test_median_equals_numpy_median_bit_for_bit_and_leaves_its_input_alone():
    rng = np.random.default_rng(11)
    for size in (1, 2, 3, 15, 16, SORT_MEDIAN_MAX, SORT_MEDIAN_MAX + 1, 1000, 1001):
        values = np.round(3.2 + 0.01 * rng.standard_normal(size), 3)  # ties, as 1 mV gives
        before = values.copy()
        assert median(values) == float(np.median(values)), size
        np.testing.assert_array_equal(values, before)
