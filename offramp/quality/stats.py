"""Exact binomial bounds (Clopper-Pearson), shared by calibration and the run audit."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def binomial_upper(k, n, delta: float):
    """One-sided Clopper-Pearson upper bound: P[p <= bound] >= 1 - delta (k may be an array)."""
    k = np.asarray(k)
    bound = np.where(k >= n, 1.0, stats.beta.ppf(1 - delta, k + 1, np.maximum(n - k, 1)))
    return float(bound) if bound.ndim == 0 else bound


def binomial_lower(k, n, delta: float):
    """One-sided Clopper-Pearson lower bound: P[p >= bound] >= 1 - delta (k may be an array)."""
    k = np.asarray(k)
    bound = np.where(k <= 0, 0.0, stats.beta.ppf(delta, np.maximum(k, 1), n - k + 1))
    return float(bound) if bound.ndim == 0 else bound


def binomial_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a rate k / n at `confidence`."""
    if n == 0:
        return 0.0, 1.0
    half = (1 - confidence) / 2
    return binomial_lower(k, n, half), binomial_upper(k, n, half)


def rows_needed(max_risk: float, delta: float) -> float:
    """Rows a calibration set needs before even zero errors certify `max_risk` at level delta."""
    if max_risk <= 0:
        return math.inf
    if max_risk >= 1:
        return 1
    return math.ceil(math.log(delta) / math.log1p(-max_risk))
