"""The alert policy: the vectorized replay equals a plain loop over each patient's scores."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.calibration import alert_events, alerts_per_patient_day
from vigil.core.errors import ConfigError, DataError


def naive(p, starts, threshold, suppression, hysteresis=None, times=None):
    """The policy as written in the module docstring, one score at a time."""
    out = np.zeros(len(p), dtype=bool)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        last, armed = None, True
        for i in range(a, b):
            t = (i - a) if times is None else times[i]
            if last is not None and hysteresis is not None and p[i] < threshold - hysteresis:
                armed = True
            if p[i] >= threshold and armed and (last is None or t >= last + suppression):
                out[i], last = True, t
                armed = hysteresis is None
    return out


patients = st.lists(
    st.lists(st.sampled_from([0.05, 0.2, 0.45, 0.5, 0.55, 0.8, 0.95]), min_size=1, max_size=40),
    min_size=1, max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(patients, st.sampled_from([0.0, 1.0, 2.5, 4.0, 6.0, 12.0]),
       st.sampled_from([None, 0.0, 0.1, 0.3]))
def test_equals_the_naive_loop_on_hourly_rows(rows, suppression, hysteresis):
    p = np.concatenate([np.asarray(r) for r in rows])
    starts = np.r_[0, np.cumsum([len(r) for r in rows])]
    got = alert_events(p, starts, threshold=0.5, suppression_hours=suppression,
                       hysteresis=hysteresis)
    np.testing.assert_array_equal(got, naive(p, starts, 0.5, suppression, hysteresis))


@settings(max_examples=100, deadline=None)
@given(patients, st.sampled_from([0.5, 1.0, 6.0]), st.sampled_from([None, 0.2]),
       st.integers(0, 1000))
def test_equals_the_naive_loop_on_15_minute_ticks(rows, suppression, hysteresis, seed):
    p = np.concatenate([np.asarray(r) for r in rows])
    starts = np.r_[0, np.cumsum([len(r) for r in rows])]
    rng = np.random.default_rng(seed)
    times = np.concatenate([400_000 + np.cumsum(rng.integers(0, 3, len(r)) * 0.25) for r in rows])
    got = alert_events(p, starts, threshold=0.5, suppression_hours=suppression,
                       hysteresis=hysteresis, times=times)
    np.testing.assert_array_equal(got, naive(p, starts, 0.5, suppression, hysteresis, times))


def test_worked_example():
    p = np.array([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    starts = np.array([0, 8, 10])
    kw = {"threshold": 0.5}
    assert alert_events(p, starts, suppression_hours=0, **kw).nonzero()[0].tolist() == [
        0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert alert_events(p, starts, suppression_hours=3, **kw).nonzero()[0].tolist() == [0, 4, 7, 8]
    rearmed = alert_events(p, starts, suppression_hours=1, hysteresis=0.2, **kw)
    assert rearmed.nonzero()[0].tolist() == [0, 4, 8]


def test_alerts_per_patient_day():
    events = np.zeros(48, dtype=bool)
    events[[0, 30]] = True
    assert alerts_per_patient_day(events) == pytest.approx(1.0)
    assert np.isnan(alerts_per_patient_day(np.zeros(0, dtype=bool)))


def test_errors():
    with pytest.raises(ConfigError, match="suppression_hours >= 0"):
        alert_events(np.array([0.5]), np.array([0, 1]), threshold=0.5, suppression_hours=-1)
    with pytest.raises(DataError, match="starts from 0 to 2"):
        alert_events(np.array([0.5, 0.6]), np.array([0, 1]), threshold=0.5, suppression_hours=1)
    with pytest.raises(DataError, match="do not decrease"):
        alert_events(np.array([0.5, 0.6]), np.array([0, 2]), threshold=0.5, suppression_hours=1,
                     times=np.array([2.0, 1.0]))
