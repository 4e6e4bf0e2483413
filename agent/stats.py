"""Robust statistics over timed repeats: how much faster one configuration is than another, and how sure that is.

Timings on a shared host have outliers and multiplicative noise (a busy core slows a 0.1 s clip and a 2 s clip
alike by a factor), so the work is done on log-times. The gain is the ratio of the two medians; its scale is the
MAD of every repeat's distance from its own trial's median, pooled over both trials, so one slow repeat among
six moves neither the medians nor the scale (a bootstrap of the medians of three repeats would pick that repeat
as its median a quarter of the time). The interval is the medians' difference ± Z standard errors at that scale. No
randomness: the same repeats always give the same verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per unit of median absolute deviation
MEDIAN_SE = 1.2533  # the median of k normal samples varies by 1.2533·σ/√k
Z = 1.645  # two-sided 90 %: 5 % in each tail


def _logs(samples: Sequence[float]) -> np.ndarray:
    return np.log(np.asarray(samples, dtype=np.float64))


def log_sigma(samples: Sequence[float]) -> float:
    """Robust relative noise of ``samples``: 1.4826·MAD of their logarithms (0.05 means about ±5 % per repeat)."""
    logs = _logs(samples)
    return float(MAD_TO_SIGMA * np.median(np.abs(logs - np.median(logs)))) if len(logs) > 1 else 0.0


@dataclass(frozen=True)
class Gain:
    """How much of the incumbent's time the candidate saves: 0.95 is 20x faster, -0.4 is 1.4x slower."""

    point: float  # from the two medians
    low: float  # the interval at 90 %
    high: float

    def describe(self) -> str:
        return f"{100 * self.point:+.1f} % (interval {100 * self.low:+.1f} to {100 * self.high:+.1f} %)"


def gain(incumbent: Sequence[float], candidate: Sequence[float]) -> Gain:
    """The time the candidate saves against the incumbent, as a fraction, with its 90 % interval."""
    a, b = _logs(incumbent), _logs(candidate)
    residuals = np.concatenate([a - np.median(a), b - np.median(b)])
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(residuals)))
    half = Z * MEDIAN_SE * sigma * math.sqrt(1 / len(a) + 1 / len(b))
    log_ratio = float(np.median(a) - np.median(b))  # log(incumbent / candidate)

    def to_gain(r: float) -> float:
        return 1 - math.exp(-r)

    return Gain(to_gain(log_ratio), to_gain(log_ratio - half), to_gain(log_ratio + half))


def repeats_needed(sigma: float, min_gain: float) -> int:
    """Repeats per configuration for the interval of the gain to be about ±``min_gain`` wide at ``sigma`` noise:
    the difference of two medians of k repeats varies by 1.2533·σ·√(2/k)."""
    bar = -math.log(1 - max(min_gain, 1e-3))
    return max(1, math.ceil(2 * (Z * MEDIAN_SE * sigma / bar) ** 2))
