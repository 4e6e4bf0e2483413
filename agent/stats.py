"""Robust statistics over timed repeats: how much faster one configuration is than another, and how sure that is.

Timings on a shared host have outliers and multiplicative noise (a busy core slows a 0.1 s clip and a 2 s clip
alike by a factor), so the work is done on log-times: the gain is the ratio of the two medians, its interval a
percentile bootstrap of that ratio (seeded, so the same repeats always give the same verdict), and the noise
scale the MAD of the log-times. With every candidate repeat faster than every incumbent repeat, no resample can
make the candidate slower, so a rung several times faster is never lost to one slow outlier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per unit of median absolute deviation
MEDIAN_SE = 1.2533  # the median of k normal samples varies by 1.2533·σ/√k
CONFIDENCE = 0.90  # two-sided: 5 % in each tail
Z = 1.645  # the normal quantile of that confidence
RESAMPLES = 4000


def log_sigma(samples: Sequence[float]) -> float:
    """Robust relative noise of ``samples``: 1.4826·MAD of their logarithms (0.05 means about ±5 % per repeat)."""
    logs = np.log(np.asarray(samples, dtype=np.float64))
    return float(MAD_TO_SIGMA * np.median(np.abs(logs - np.median(logs)))) if len(logs) > 1 else 0.0


@dataclass(frozen=True)
class Gain:
    """How much of the incumbent's time the candidate saves: 0.95 is 20x faster, -0.4 is 1.4x slower."""

    point: float  # from the two medians
    low: float  # the bootstrap interval at CONFIDENCE
    high: float

    def describe(self) -> str:
        return f"{100 * self.point:+.1f} % (interval {100 * self.low:+.1f} to {100 * self.high:+.1f} %)"


def gain(incumbent: Sequence[float], candidate: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Gain:
    """The time the candidate saves against the incumbent, as a fraction, with its bootstrap interval."""
    a = np.log(np.asarray(incumbent, dtype=np.float64))
    b = np.log(np.asarray(candidate, dtype=np.float64))
    rng = np.random.default_rng(seed)
    resampled_a = np.median(rng.choice(a, size=(resamples, len(a))), axis=1)
    resampled_b = np.median(rng.choice(b, size=(resamples, len(b))), axis=1)
    log_ratio = resampled_a - resampled_b  # log(incumbent / candidate)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(log_ratio, [tail, 100 - tail])
    to_gain = lambda r: 1 - math.exp(-float(r))  # noqa: E731
    return Gain(to_gain(np.median(a) - np.median(b)), to_gain(low), to_gain(high))


def repeats_needed(sigma: float, min_gain: float) -> int:
    """Repeats per configuration for the interval of the gain to be about ±``min_gain`` wide at ``sigma`` noise:
    the difference of two medians of k repeats varies by 1.2533·σ·√(2/k)."""
    bar = -math.log(1 - max(min_gain, 1e-3))
    return max(1, math.ceil(2 * (Z * MEDIAN_SE * sigma / bar) ** 2))
