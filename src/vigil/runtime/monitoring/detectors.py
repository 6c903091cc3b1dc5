"""Sequential change detectors for monitoring streams: CUSUM and ADWIN.

Pure numpy, no I/O. Each detector is a small stateful object fed one value
(or one batch) at a time, with ``to_dict``/``from_dict`` so its state can be
stored between cycles.

- :class:`Cusum`: Page's two-sided tabular CUSUM on standardized values
  (Page, Biometrika 41:100-115, 1954; Montgomery, *Introduction to Statistical
  Quality Control*, 8th ed., 2019, sec. 9.1), reference value ``k`` and
  decision interval ``h`` in standard deviations (defaults 0.5 and 5, the
  textbook choice with an in-control average run length of about 465).
- :class:`Adwin`: ADaptive WINdowing (Bifet & Gavaldà, SIAM SDM 2007): keeps the
  longest recent window whose every split has sub-window means closer than
  ``eps_cut``; a cut signals a change of the stream's mean, and the window
  left after it is the data seen since the change. Davis et al. (J Biomed
  Inform 108:103493, 2020) use this on calibration error to decide when a
  clinical model needs recalibration, with the window after the cut as the
  data to recalibrate on.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Adwin", "AdwinChange", "Cusum"]


class Cusum:
    """Two-sided tabular CUSUM of ``(x - target) / sigma``.

    ``C+ = max(0, C+ + z - k)`` and ``C- = max(0, C- - z - k)``; an alarm is
    raised when either exceeds ``h``, and both restart at 0.

    Parameters
    ----------
    target : float
        In-control mean of the stream.
    sigma : float
        In-control standard deviation (> 0).
    k : float, optional
        Allowance in standard deviations (half the shift to detect fastest).
    h : float, optional
        Decision interval in standard deviations.

    Examples
    --------
    >>> c = Cusum(target=0.0, sigma=1.0)
    >>> [c.update(x) for x in (0.1, -0.2, 3.0, 3.0, 3.0)]
    [False, False, False, False, True]
    """

    def __init__(self, *, target: float, sigma: float, k: float = 0.5, h: float = 5.0) -> None:
        if not sigma > 0:
            raise ValueError(f"The 'sigma' parameter of Cusum must be > 0. Got {sigma!r} instead.")
        if k < 0 or not h > 0:
            raise ValueError(f"Cusum needs k >= 0 and h > 0, got k={k!r}, h={h!r}")
        self.target, self.sigma, self.k, self.h = float(target), float(sigma), float(k), float(h)
        self.upper = 0.0
        self.lower = 0.0
        self.n = 0
        self.alarms = 0
        self.last_direction = 0

    def update(self, x: float) -> bool:
        """Add one value; True when it raises an alarm (then the sums restart)."""
        z = (float(x) - self.target) / self.sigma
        self.upper = max(0.0, self.upper + z - self.k)
        self.lower = max(0.0, self.lower - z - self.k)
        self.n += 1
        if self.upper > self.h or self.lower > self.h:
            self.last_direction = 1 if self.upper > self.h else -1
            self.upper = self.lower = 0.0
            self.alarms += 1
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        """State as plain JSON values."""
        return {"target": self.target, "sigma": self.sigma, "k": self.k, "h": self.h,
                "upper": self.upper, "lower": self.lower, "n": self.n, "alarms": self.alarms,
                "last_direction": self.last_direction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cusum:
        """Rebuild from :meth:`to_dict`."""
        c = cls(target=data["target"], sigma=data["sigma"], k=data["k"], h=data["h"])
        c.upper, c.lower = float(data["upper"]), float(data["lower"])
        c.n, c.alarms = int(data["n"]), int(data["alarms"])
        c.last_direction = int(data.get("last_direction", 0))
        return c

    def __repr__(self) -> str:
        return (f"Cusum(n={self.n}, upper={self.upper:.3g}, lower={self.lower:.3g}, "
                f"alarms={self.alarms})")


@dataclass(frozen=True)
class AdwinChange:
    """One change found by :class:`Adwin`.

    Attributes
    ----------
    at : int
        Index of the value (0-based, over everything fed) that revealed it.
    dropped : int
        Old values discarded by the cut.
    mean_before, mean_after : float
        Means of the discarded part and of the window kept.
    width_after : int
        Values kept: the data since the change.
    """

    at: int
    dropped: int
    mean_before: float
    mean_after: float
    width_after: int


class Adwin:
    """ADWIN change detector for a stream of values in [0, 1].

    At every check, each split of the window into an older part ``W0`` (size
    ``n0``) and a newer part ``W1`` (``n1``) is tested with the variance
    bound of Bifet & Gavaldà (2007, sec. 3)::

        m = 1 / (1/n0 + 1/n1),  delta' = delta / n
        eps_cut = sqrt(2 / m * var(W) * ln(2 / delta')) + 2 / (3 m) * ln(2 / delta')

    and the oldest values are dropped (the smallest such ``W0`` at a time) while
    some split has ``|mean(W0) - mean(W1)| >= eps_cut``.
    This is the exact ADWIN (all splits, vectorized), checked every ``clock``
    values.

    Parameters
    ----------
    delta : float, optional
        Confidence: the chance of a false cut per check is at most ``delta``
        for independent values.
    clock : int, optional
        Check every ``clock`` values (River's default, 32).
    min_side : int, optional
        Smallest sub-window compared.
    max_window : int, optional
        The oldest values beyond this are forgotten.

    Examples
    --------
    >>> a = Adwin(delta=0.002, clock=1)
    >>> found = a.extend([0.0] * 200 + [1.0] * 50)
    >>> len(found) >= 1 and found[0].mean_before == 0.0
    True
    """

    def __init__(
        self, *, delta: float = 0.002, clock: int = 32, min_side: int = 30, max_window: int = 20_000
    ) -> None:
        if not 0 < delta < 1:
            raise ValueError(
                f"The 'delta' parameter of Adwin must be in (0, 1). Got {delta!r} instead."
            )
        if clock < 1 or min_side < 1 or max_window < 2 * min_side:
            raise ValueError(
                f"Adwin needs clock >= 1, min_side >= 1 and max_window >= 2 * min_side, got "
                f"clock={clock}, min_side={min_side}, max_window={max_window}"
            )
        self.delta, self.clock, self.min_side, self.max_window = delta, clock, min_side, max_window
        self.window: deque[float] = deque(maxlen=max_window)
        self.seen = 0
        self.changes = 0

    @property
    def width(self) -> int:
        """Values in the current window."""
        return len(self.window)

    @property
    def mean(self) -> float:
        """Mean of the current window (NaN when empty)."""
        return float(np.mean(self.window)) if self.window else float("nan")

    def update(self, x: float) -> AdwinChange | None:
        """Add one value in [0, 1]; the change it revealed, if any."""
        v = float(x)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"Adwin expects values in [0, 1], got {v!r}; rescale the stream")
        self.window.append(v)
        self.seen += 1
        if self.seen % self.clock != 0:
            return None
        return self._check()

    def extend(self, xs: ArrayLike) -> list[AdwinChange]:
        """Add values in order; every change found."""
        out = []
        for x in np.asarray(xs, dtype=np.float64).reshape(-1):
            change = self.update(float(x))
            if change is not None:
                out.append(change)
        return out

    def _cut(self, w: np.ndarray) -> int:
        """Size of the oldest part to drop (0 when no split differs)."""
        n = w.size
        if n < 2 * self.min_side:
            return 0
        csum = np.cumsum(w)
        n0 = np.arange(self.min_side, n - self.min_side + 1)
        n1 = n - n0
        mu0 = csum[n0 - 1] / n0
        mu1 = (csum[-1] - csum[n0 - 1]) / n1
        var = float(np.var(w))
        m = 1.0 / (1.0 / n0 + 1.0 / n1)
        log_term = math.log(2.0 * n / self.delta)
        eps = np.sqrt(2.0 / m * var * log_term) + 2.0 / (3.0 * m) * log_term
        hit = np.flatnonzero(np.abs(mu0 - mu1) >= eps)
        return int(n0[hit[0]]) if hit.size else 0

    def _check(self) -> AdwinChange | None:
        w = np.fromiter(self.window, dtype=np.float64, count=len(self.window))
        dropped_total = 0
        dropped_sum = 0.0
        while True:
            cut = self._cut(w)
            if cut == 0:
                break
            dropped_total += cut
            dropped_sum += float(w[:cut].sum())
            w = w[cut:]
        if dropped_total == 0:
            return None
        self.window = deque(w.tolist(), maxlen=self.max_window)
        self.changes += 1
        return AdwinChange(
            at=self.seen - 1,
            dropped=dropped_total,
            mean_before=dropped_sum / dropped_total,
            mean_after=float(w.mean()),
            width_after=int(w.size),
        )

    def to_dict(self) -> dict[str, Any]:
        """State as plain JSON values."""
        return {"delta": self.delta, "clock": self.clock, "min_side": self.min_side,
                "max_window": self.max_window, "seen": self.seen, "changes": self.changes,
                "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Adwin:
        """Rebuild from :meth:`to_dict`."""
        a = cls(delta=data["delta"], clock=data["clock"], min_side=data["min_side"],
                max_window=data["max_window"])
        a.window.extend(float(v) for v in data["window"])
        a.seen, a.changes = int(data["seen"]), int(data["changes"])
        return a

    def __repr__(self) -> str:
        return f"Adwin(width={self.width}, seen={self.seen}, changes={self.changes})"
