"""Exact tests and bounds shared by calibration and the run audit: Clopper-Pearson binomial
bounds, and the exact paired test of an accuracy drop."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

# scipy.stats is imported where the paired test needs it: every stage actor and tokenize task
# imports this module (through the audit), and scipy.stats costs each of them about 0.4 s of
# start-up for nothing. beta.ppf(q, a, b) is special.betaincinv(a, b, q), the same routine.


def binomial_upper(k, n, delta: float):
    """One-sided Clopper-Pearson upper bound: P[p <= bound] >= 1 - delta (k may be an array)."""
    k = np.asarray(k)
    bound = np.where(k >= n, 1.0, special.betaincinv(k + 1, np.maximum(n - k, 1), 1 - delta))
    return float(bound) if bound.ndim == 0 else bound


def binomial_lower(k, n, delta: float):
    """One-sided Clopper-Pearson lower bound: P[p >= bound] >= 1 - delta (k may be an array)."""
    k = np.asarray(k)
    bound = np.where(k <= 0, 0.0, special.betaincinv(np.maximum(k, 1), n - k + 1, delta))
    return float(bound) if bound.ndim == 0 else bound


def binomial_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a rate k / n at `confidence`."""
    if n == 0:
        return 0.0, 1.0
    half = (1 - confidence) / 2
    return binomial_lower(k, n, half), binomial_upper(k, n, half)


def rows_needed(max_risk: float, delta: float, mode: str = "agreement") -> float:
    """Certifying rows a calibration set needs before even zero errors certify `max_risk` at level
    delta: the binomial tail for an agreement target, the exact paired test for an accuracy drop
    (each at delta, the level the tests use)."""
    if max_risk <= 0:
        return math.inf
    if max_risk >= 1:
        return 1
    closed = math.ceil(math.log(delta) / math.log1p(-max_risk))
    if mode == "agreement":
        return closed
    lo, hi = max(1, closed // 4), closed * 4  # the paired test's answer lies near the binomial one
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if paired_drop_pvalue(0, 0, mid, max_risk) <= delta else (mid + 1, hi)
    return lo


# ---------------------------------------------------------------- the paired accuracy-drop test
#
# Each calibration row is concordant, "10" (full depth right, the exit wrong) or "01" (the
# reverse); the accuracy drop is p10 - p01. The null hypothesis "the drop is at least X" is
# tested exactly: Tango's score statistic (the standardized observed drop, with the variance
# of the restricted maximum-likelihood fit under p10 - p01 = X), and its p-value the largest
# probability, over the nuisance discordance rate s = p10 + p01, that a trinomial sample at
# the null boundary scores as low. The score is standardized, so that probability barely moves
# with s, unlike the raw count difference (whose null spread grows with s). The statistic
# rises with n10 and falls with n01 (checked in tests), so the boundary p10 - p01 = X is the
# least favourable part of the null, and the supremum there is the exact unconditional
# p-value (Chan 1998; Sidik 2003 for matched pairs). It replaces a union bound that spent
# delta / 2 on each of p10 and p01.


def tango_z(n10, n01, n: int, margin: float):
    """Tango's score statistic for H0: p10 - p01 >= margin (arrays broadcast); low = a smaller drop."""
    a, b = np.asarray(n10, dtype=np.float64), np.asarray(n01, dtype=np.float64)
    x = float(margin)
    big_b = a * (1 - x) + b * (1 - 3 * x) - 2 * (n - a - b) * x
    p01 = (big_b + np.sqrt(big_b**2 + 8 * n * b * x * (1 - x))) / (4 * n)  # restricted MLE of p01
    var = n * np.maximum(2 * p01 + x - x * x, 1e-300)
    return (a - b - n * x) / np.sqrt(var)


Z_STEP = 0.002
"""Resolution of the tabulated null distribution of the score: an observed score is looked up at
the next table point above it, which can only raise the p-value."""


@functools.lru_cache(maxsize=32)
def _paired_null(n: int, margin: float, nuisance_points: int = 96, tail: float = 1e-12):
    """(z, F): F[i] >= sup over the null boundary of P[score <= z[i]], on a fixed grid of z.

    The boundary is walked on a grid of discordance rates s in [margin, 1], dense near the
    margin where calibration sets lie. At each s the trinomial is summed over the rows counts
    within its marginals' 1e-12 tails; the mass left out is added to F, which keeps F an upper
    bound."""
    from scipy import stats  # see the note at the top

    z = np.arange(-40.0, 0.0 + Z_STEP / 2, Z_STEP)
    worst = np.zeros_like(z)
    logfact = special.gammaln(np.arange(n + 2) + 1.0)
    for u in np.concatenate([[0.0], np.geomspace(1e-4, 1.0, nuisance_points - 1)]):
        s = margin + (1 - margin) * u
        p10, p01 = (s + margin) / 2, (s - margin) / 2
        p00 = max(1.0 - p10 - p01, 0.0)
        a = np.arange(int(stats.binom.ppf(tail, n, p10)), int(stats.binom.isf(tail, n, p10)) + 1)
        b = np.arange(int(stats.binom.ppf(tail, n, p01)), int(stats.binom.isf(tail, n, p01)) + 1)
        aa, bb = np.meshgrid(a, b, indexing="ij")
        keep = aa + bb <= n
        aa, bb = aa[keep], bb[keep]
        cc = n - aa - bb
        logp = (logfact[n] - logfact[aa] - logfact[bb] - logfact[cc]
                + special.xlogy(aa, p10) + special.xlogy(bb, p01) + special.xlogy(cc, p00))
        pmf = np.exp(logp)
        zs = tango_z(aa, bb, n, margin)
        order = np.argsort(zs)
        cdf = np.concatenate([[0.0], np.cumsum(pmf[order])])
        at = cdf[np.searchsorted(zs[order], z, side="right")]
        left_out = stats.binom.cdf(a[0] - 1, n, p10) + stats.binom.sf(a[-1], n, p10)
        left_out += stats.binom.cdf(b[0] - 1, n, p01) + stats.binom.sf(b[-1], n, p01)
        worst = np.maximum(worst, np.minimum(at + left_out, 1.0))
    return z, worst


def paired_drop_pvalue(n10, n01, n: int, margin: float):
    """Exact p-value of H0 "accuracy drop p10 - p01 >= margin" from n paired rows (arrays of
    counts broadcast). Small = the drop is certified below the margin."""
    if margin <= 0:
        raise ValueError("the accuracy-drop margin must be > 0")
    z_obs = np.asarray(tango_z(n10, n01, n, margin))
    grid, worst = _paired_null(int(n), float(margin))
    idx = np.searchsorted(grid, z_obs, side="left")  # grid[idx] >= z_obs: never below the true value
    p = np.where(idx < len(grid), worst[np.minimum(idx, len(grid) - 1)], 1.0)
    return float(p) if p.ndim == 0 else p


def paired_drop_upper(n10: int, n01: int, n: int, delta: float, hi: float = 1.0, tol: float = 1e-4) -> float:
    """The exact test inverted: the smallest margin the observed counts certify at level delta
    (an upper confidence bound on the accuracy drop), to within `tol`."""
    lo = max((n10 - n01) / n, 0.0)
    if paired_drop_pvalue(n10, n01, n, hi) > delta:
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if mid > 0 and paired_drop_pvalue(n10, n01, n, mid) <= delta else (mid, hi)
    return hi


# ---------------------------------------------------------------- a mean of bounded losses
#
# Word-level risk of a token model is a per-sentence quantity (the share of a sentence's words
# the exits change, or get wrong that full depth gets right), and sentences are the unit that
# is drawn independently: words of one sentence are not. Their per-sentence means are bounded
# but not 0/1, so neither the binomial tail nor the paired test applies. The test is by betting
# (Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
# 2024): a gambler starts with capital 1 and bets against "the mean is at least m" on each
# sentence in a fixed order; under that null the capital is a nonnegative supermartingale, so by
# Ville's inequality it reaches 1/delta with probability at most delta, whatever the
# distribution in [lo, hi]. The p-value is 1 / the largest capital reached.


def betting_pvalue(x, m: float, lo: float, hi: float, delta: float, cap: float = 0.75) -> float:
    """p-value of H0 "E[x] >= m" from x, drawn i.i.d. in [lo, hi] a priori, in the order given.

    Bets are predictable (each from the sentences before it): the plug-in fraction
    sqrt(2 log(1/delta) / (n var)) of Waudby-Smith & Ramdas tuned for a fixed n, with their
    shrunk running mean and variance, capped at `cap` of the largest bet that cannot lose
    everything (a loss of at most `cap` of the capital on any one value in [lo, hi])."""
    x = np.asarray(x, dtype=np.float64)
    if not lo < m < hi:
        return 0.0 if m >= hi else 1.0
    if len(x) == 0:
        return 1.0
    y, mu0 = (x - lo) / (hi - lo), (m - lo) / (hi - lo)  # in [0, 1], H0: E[y] >= mu0
    n = len(y)
    t = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(y)) / (t + 1)  # shrunk running mean after each value
    var = (0.25 + np.cumsum((y - mean) ** 2)) / (t + 1)  # shrunk running variance after each value
    var_before = np.concatenate([[0.25], var[:-1]])  # what is known before each bet
    lam = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * var_before)), cap / (1 - mu0))
    log_capital = np.cumsum(np.log1p(lam * (mu0 - y)))
    return float(min(1.0, math.exp(-max(0.0, float(log_capital.max())))))


def betting_upper(x, lo: float, hi: float, delta: float, tol: float = 1e-5) -> float:
    """Upper confidence bound on E[x] at level delta: the smallest m the betting test rejects
    "E[x] >= m" for (bisection; the capital grows with m)."""
    x = np.asarray(x, dtype=np.float64)
    a, b = lo, hi
    if betting_pvalue(x, b - tol, lo, hi, delta) > delta:
        return hi
    while b - a > tol:
        mid = (a + b) / 2
        a, b = (a, mid) if betting_pvalue(x, mid, lo, hi, delta) <= delta else (mid, b)
    return b
