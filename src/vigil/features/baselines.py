"""Rule-based sepsis screening scores, computed hourly from carried-forward values.

All three are the comparators a site report shows next to the model. Each
component whose input has no fresh value scores 0 points (the carried-forward
value is used within the variable's maximum age, :mod:`vigil.core.catalog`).

What PhysioNet 2019 lacks, and so what these scores cannot use:

- **qSOFA** (Seymour et al., JAMA 315(8):762-774, 2016): altered mentation
  (GCS < 15) is not recorded, so at most 2 of the 3 criteria can score; the
  usual cut-off (>= 2) then needs both respiratory rate >= 22/min and systolic
  BP <= 100 mm Hg.
- **SIRS** (Bone et al., Chest 101(6):1644-1655, 1992): immature (band) forms are
  not recorded; the WBC criterion uses the count only. Positive if >= 2 of 4.
- **NEWS2** (Royal College of Physicians, 2017): consciousness (ACVPU) is not
  recorded and scores 0; SpO2 scale 1 is used for everyone (hypercapnic
  respiratory failure is not documented); "on oxygen" means FiO2 > 0.21.
  Positive (urgent response threshold) if >= 5.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

__all__ = ["RULE_THRESHOLDS", "Rule", "news2", "qsofa", "sirs"]

Array = NDArray[np.floating]


class Rule(StrEnum):
    """The rule baselines."""

    QSOFA = "qsofa"
    SIRS = "sirs"
    NEWS2 = "news2"


RULE_THRESHOLDS: dict[Rule, float] = {Rule.QSOFA: 2.0, Rule.SIRS: 2.0, Rule.NEWS2: 5.0}
"""Score at or above which a rule counts as positive."""


def _points(condition: NDArray[np.bool_], points: float = 1.0) -> NDArray[np.float32]:
    return np.where(condition, points, 0.0).astype(np.float32)


def qsofa(*, resp: Array, sbp: Array) -> NDArray[np.float32]:
    """Quick SOFA without mentation (Seymour et al. 2016).

    Parameters
    ----------
    resp, sbp : ndarray of shape (n,)
        Respiratory rate (/min) and systolic BP (mm Hg); NaN scores 0.

    Returns
    -------
    ndarray of shape (n,)
        Score 0--2.

    Examples
    --------
    >>> qsofa(resp=np.array([24.0, 18.0]), sbp=np.array([95.0, np.nan])).tolist()
    [2.0, 0.0]
    """
    with np.errstate(invalid="ignore"):
        return _points(resp >= 22) + _points(sbp <= 100)


def sirs(*, temp: Array, hr: Array, resp: Array, paco2: Array, wbc: Array) -> NDArray[np.float32]:
    """Systemic inflammatory response syndrome criteria met (Bone et al. 1992).

    Parameters
    ----------
    temp, hr, resp, paco2, wbc : ndarray of shape (n,)
        Temperature (Cel), heart rate (/min), respiratory rate (/min),
        PaCO2 (mm Hg), leukocytes (10*3/uL); NaN scores 0.

    Returns
    -------
    ndarray of shape (n,)
        Number of criteria met, 0--4.

    Examples
    --------
    >>> sirs(temp=np.array([38.5]), hr=np.array([95.0]), resp=np.array([16.0]),
    ...      paco2=np.array([np.nan]), wbc=np.array([3.0])).tolist()
    [3.0]
    """
    with np.errstate(invalid="ignore"):
        return (
            _points((temp > 38) | (temp < 36))
            + _points(hr > 90)
            + _points((resp > 20) | (paco2 < 32))
            + _points((wbc > 12) | (wbc < 4))
        )


def news2(
    *, resp: Array, spo2: Array, fio2: Array, sbp: Array, hr: Array, temp: Array
) -> NDArray[np.float32]:
    """National Early Warning Score 2 without consciousness, SpO2 scale 1 (RCP 2017).

    Parameters
    ----------
    resp, spo2, fio2, sbp, hr, temp : ndarray of shape (n,)
        Respiratory rate (/min), SpO2 (%), FiO2 (fraction; > 0.21 means
        supplemental oxygen), systolic BP (mm Hg), pulse (/min), temperature
        (Cel); NaN scores 0.

    Returns
    -------
    ndarray of shape (n,)
        Aggregate score 0--17 (consciousness cannot score).

    Examples
    --------
    >>> news2(resp=np.array([25.0]), spo2=np.array([93.0]), fio2=np.array([0.4]),
    ...       sbp=np.array([95.0]), hr=np.array([115.0]), temp=np.array([39.2])).tolist()
    [13.0]
    """
    with np.errstate(invalid="ignore"):
        # Bands are half-open so that non-integer values fall in exactly one band.
        score = (
            _points(resp <= 8, 3)
            + _points((resp > 8) & (resp < 12), 1)
            + _points((resp > 20) & (resp < 25), 2)
            + _points(resp >= 25, 3)
        )
        score += _points(spo2 < 92, 3) + _points((spo2 >= 92) & (spo2 < 94), 2)
        score += _points((spo2 >= 94) & (spo2 < 96), 1)
        score += _points(fio2 > 0.21, 2)
        score += (
            _points(sbp <= 90, 3)
            + _points((sbp > 90) & (sbp < 101), 2)
            + _points((sbp >= 101) & (sbp < 111), 1)
            + _points(sbp >= 220, 3)
        )
        score += (
            _points(hr <= 40, 3)
            + _points((hr > 40) & (hr < 51), 1)
            + _points((hr >= 91) & (hr < 111), 1)
            + _points((hr >= 111) & (hr < 131), 2)
            + _points(hr >= 131, 3)
        )
        score += (
            _points(temp <= 35.0, 3)
            + _points((temp > 35.0) & (temp <= 36.0), 1)
            + _points((temp > 38.0) & (temp <= 39.0), 1)
            + _points(temp > 39.0, 2)
        )
    return score
