import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.calibration.alerts import alert_events
from vigil.runtime.alert_step import alert_step


def run_incrementally(p, times, *, threshold, suppression_hours, hysteresis):
    state = {}
    out = []
    for prob, t in zip(p, times, strict=True):
        step = alert_step(["k"], np.array([prob]), now_hours=t, state=state, threshold=threshold,
                          suppression_hours=suppression_hours, hysteresis=hysteresis)
        state = {"k": (step.last_alert[0], step.armed[0])}
        out.append(bool(step.alert[0]))
    return np.array(out)


@settings(max_examples=150, deadline=None)
@given(
    p=st.lists(st.sampled_from([0.0, 0.1, 0.35, 0.45, 0.5, 0.55, 0.9]), min_size=1, max_size=40),
    suppression=st.sampled_from([0.0, 0.25, 1.0, 2.0, 6.0]),
    hysteresis=st.sampled_from([None, 0.0, 0.1, 0.3]),
)
def test_tick_by_tick_equals_the_batch_policy(p, suppression, hysteresis):
    p = np.array(p)
    times = 100.0 + 0.25 * np.arange(p.size)  # 15-minute ticks, in hours
    expected = alert_events(p, np.array([0, p.size]), threshold=0.5, suppression_hours=suppression,
                            hysteresis=hysteresis, times=times)
    got = run_incrementally(p, times, threshold=0.5, suppression_hours=suppression,
                            hysteresis=hysteresis)
    np.testing.assert_array_equal(got, expected)


def test_several_patients_keep_separate_state():
    state = {"a": (10.0, False), "b": (10.0, True)}
    step = alert_step(["a", "b", "c"], np.array([0.9, 0.9, 0.9]), now_hours=20.0, state=state,
                      threshold=0.5, suppression_hours=6.0, hysteresis=0.1)
    # a was never re-armed, b was, c has no history
    assert step.alert.tolist() == [False, True, True]
    assert step.last_alert == [10.0, 20.0, 20.0]
    assert step.armed == [False, False, False]
    quiet = alert_step(["b"], np.array([0.9]), now_hours=20.25,
                       state={"b": (20.0, True)}, threshold=0.5, suppression_hours=6.0,
                       hysteresis=None)
    assert quiet.alert.tolist() == [False]
