import numpy as np

from vigil.features.baselines import news2, qsofa, sirs

nan = np.nan


def test_qsofa_without_mentation():
    s = qsofa(resp=np.array([22, 21, 30, nan]), sbp=np.array([100, 101, nan, 90]))
    assert s.tolist() == [2, 0, 1, 1]


def test_sirs_criteria():
    s = sirs(
        temp=np.array([38.1, 37.0, 35.9, nan]),
        hr=np.array([91, 90, 60, nan]),
        resp=np.array([16, 21, 12, nan]),
        paco2=np.array([nan, nan, 31, nan]),
        wbc=np.array([12.5, 8, 3.9, nan]),
    )
    assert s.tolist() == [3, 1, 3, 0]


def test_news2_hand_computed_rows():
    # row 0: all normal on air -> 0 ; row 1: RR 9 (1), SpO2 94 (1), O2 (2), SBP 101 (1),
    # HR 51 (0), T 36.0 (1) -> 6 ; row 2: RR 8 (3), SpO2 91 (3), air, SBP 90 (3), HR 131 (3),
    # T 35.0 (3) -> 15 ; row 3: RR 20 (0), SpO2 96 (0), FiO2 0.21, SBP 220 (3), HR 110 (1),
    # T 39.1 (2) -> 6
    s = news2(
        resp=np.array([16, 9, 8, 20]),
        spo2=np.array([98, 94, 91, 96]),
        fio2=np.array([nan, 0.3, 0.21, 0.21]),
        sbp=np.array([120, 101, 90, 220]),
        hr=np.array([70, 51, 131, 110]),
        temp=np.array([37, 36.0, 35.0, 39.1]),
    )
    assert s.tolist() == [0, 6, 15, 6]
