"""CUSUM and ADWIN on synthetic streams: run lengths, delays, false alarms, state round trip."""

import numpy as np
import pytest

from vigil.runtime.monitoring.detectors import Adwin, Cusum


def run_length(c: Cusum, rng: np.random.Generator, shift: float, limit: int = 20_000) -> int:
    for n in range(1, limit + 1):
        if c.update(rng.standard_normal() + shift):
            return n
    return limit


def test_cusum_average_run_lengths_match_montgomery():
    # Montgomery (2019) Table 9.3, k = 0.5, h = 5: ARL0 about 465, ARL1 (1 sigma shift) 10.4
    rng = np.random.default_rng(11)
    arl1 = np.mean([run_length(Cusum(target=0, sigma=1), rng, 1.0) for _ in range(2000)])
    assert 9.8 < arl1 < 11.0
    arl0 = np.mean([run_length(Cusum(target=0, sigma=1), rng, 0.0) for _ in range(200)])
    assert 330 < arl0 < 650


def test_cusum_standardizes_and_reports_the_direction():
    c = Cusum(target=10.0, sigma=2.0, k=0.5, h=4.0)
    fired = [c.update(x) for x in [10.0, 8.0, 6.0, 6.0, 6.0]]
    # z = 0, -1, -2, -2, -2 -> lower sum 0, 0.5, 2.0, 3.5, 5.0 > 4
    assert fired == [False, False, False, False, True]
    assert c.last_direction == -1 and c.alarms == 1 and c.upper == c.lower == 0.0


def test_cusum_state_round_trip():
    a = Cusum(target=0.0, sigma=1.0)
    for x in (1.0, 2.0, -0.5):
        a.update(x)
    b = Cusum.from_dict(a.to_dict())
    assert [a.update(x) for x in (2.0, 2.0)] == [b.update(x) for x in (2.0, 2.0)]
    assert a.to_dict() == b.to_dict()


def test_adwin_raises_no_alarm_on_stationary_bernoulli_streams():
    rng = np.random.default_rng(3)
    false = sum(len(Adwin(delta=0.002).extend(rng.random(8000) < 0.05)) for _ in range(10))
    assert false == 0


def test_adwin_finds_a_mean_shift_and_keeps_the_data_since_it():
    rng = np.random.default_rng(4)
    before = (rng.random(3000) < 0.1).astype(float)
    after = (rng.random(3000) < 0.3).astype(float)
    a = Adwin(delta=0.002)
    changes = a.extend(np.r_[before, after])
    assert changes, "a 0.1 -> 0.3 shift must be found"
    first = changes[0]
    assert 3000 <= first.at < 3300  # detected within 300 values of the change
    assert first.mean_before < 0.15 and first.mean_after > 0.15
    assert a.width <= 3000 + 64  # what is left is (almost only) the new regime
    assert abs(a.mean - 0.3) < 0.05


def test_adwin_delta_trades_speed_for_confidence():
    rng = np.random.default_rng(5)
    stream = np.r_[rng.random(2000) < 0.1, rng.random(2000) < 0.25].astype(float)
    fast = Adwin(delta=0.1, clock=1).extend(stream)[0].at
    slow = Adwin(delta=1e-6, clock=1).extend(stream)[0].at
    assert 2000 <= fast < slow


def test_adwin_state_round_trip():
    rng = np.random.default_rng(6)
    a = Adwin(delta=0.01, clock=8)
    a.extend(rng.random(500))
    b = Adwin.from_dict(a.to_dict())
    tail = np.r_[rng.random(300) * 0.2, rng.random(300) * 0.2 + 0.8]
    assert a.extend(tail) == b.extend(tail)
    assert (a.width, a.seen, a.changes) == (b.width, b.seen, b.changes)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Cusum(target=0, sigma=0), "'sigma' parameter of Cusum must be > 0"),
        (lambda: Cusum(target=0, sigma=1, h=0), "h > 0"),
        (lambda: Adwin(delta=0), "'delta' parameter of Adwin must be in"),
        (lambda: Adwin(min_side=100, max_window=150), "max_window >= 2 \\* min_side"),
        (lambda: Adwin().update(1.5), "values in \\[0, 1\\]"),
    ],
)
def test_detector_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
