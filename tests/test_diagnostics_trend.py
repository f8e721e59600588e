"""The exponentially weighted slopes, updated in place every poll, equal a least-squares fit
computed afresh from the samples, and a saved state is a snapshot that later polls leave alone."""

import numpy as np
import pytest

from bess_edge.diagnostics.trend import EwTrend

TAU_S = 120.0


def _direct_slope_per_h(times_s, values, segment_of, now_s):
    """Pooled within-segment weighted regression of every sample so far, weights
    exp(-age / tau): what EwTrend keeps in running sums, computed from scratch."""
    sxx = sxy = 0.0
    for segment in np.unique(segment_of):
        keep = (segment_of == segment) & np.isfinite(values)
        if not keep.any():
            continue
        t_h = times_s[keep] / 3600.0
        w = np.exp(-(now_s - times_s[keep]) / TAU_S)
        y = values[keep]
        mean_t, mean_y = np.average(t_h, weights=w), np.average(y, weights=w)
        sxx += float(np.sum(w * (t_h - mean_t) ** 2))
        sxy += float(np.sum(w * (t_h - mean_t) * (y - mean_y)))
    return sxy / sxx


def test_slopes_over_three_hours_of_polls_equal_a_fresh_fit_of_the_samples():
    rng = np.random.default_rng(7)
    polls = 3 * 3600 // 5
    times_s = np.cumsum(rng.uniform(1.0, 9.0, polls))  # uneven polls, as a busy bus gives
    values = 25.0 + 0.5 * times_s[:, None] / 3600.0 + 0.05 * rng.standard_normal((polls, 3))
    values[rng.random((polls, 3)) < 0.05] = np.nan  # dropped readings are skipped
    segment_of = (times_s // 2400.0).astype(int)  # a new segment every 40 minutes
    trend, last_s = EwTrend(3, TAU_S), 0.0
    for k in range(polls):
        if k and segment_of[k] != segment_of[k - 1]:
            trend.new_segment()
        trend.add(times_s[k] - last_s, values[k])
        last_s = times_s[k]
        if k % 97 == 0 and k > 50:
            fresh = [
                _direct_slope_per_h(times_s[: k + 1], values[: k + 1, c], segment_of[: k + 1],
                                    times_s[k])
                for c in range(3)
            ]  # fmt: skip
            np.testing.assert_allclose(trend.slope_per_h, fresh, rtol=1e-9)


def test_a_saved_state_is_not_changed_by_later_polls():
    trend = EwTrend(2, TAU_S)
    for _ in range(10):
        trend.add(1.0, np.array([1.0, 2.0]))
    saved = trend.state()
    before = {name: value.copy() for name, value in saved.items()}
    trend.add(1.0, np.array([3.0, 4.0]))
    trend.new_segment()
    for name, value in saved.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    restored = EwTrend(2, TAU_S)
    restored.load(saved)
    restored.add(1.0, np.array([5.0, 6.0]))
    np.testing.assert_array_equal(saved["s0"], before["s0"])


def test_a_column_without_samples_has_no_slope_and_leaves_the_others_alone():
    trend, times_s = EwTrend(2, TAU_S), np.arange(1.0, 301.0)
    values = np.column_stack((20.0 + 3.6 * times_s / 3600.0, np.full(times_s.size, np.nan)))
    for k in range(times_s.size):
        trend.add(1.0, values[k])
    assert trend.time_spread_h2[1] == 0.0 and np.isnan(trend.slope_per_h[1])
    alone = EwTrend(1, TAU_S)
    for k in range(times_s.size):
        alone.add(1.0, values[k, :1])
    assert trend.slope_per_h[0] == alone.slope_per_h[0] == pytest.approx(3.6, rel=1e-9)
