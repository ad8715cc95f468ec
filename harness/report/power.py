"""Power of the paired t-test and the minimum detectable effect (split from :mod:`.stats`,
which re-exports them): see that module's docstring for the choices."""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

__all__ = ["mde", "t_power", "ALPHA", "POWER"]

ALPHA = 0.05
POWER = 0.8


def mde(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test on ``n`` pairs with difference
    sd ``sd`` detects with probability ``power`` at level ``alpha``. NaN when n < 2 or sd is
    not positive."""
    if n < 2 or not (isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0):
        return math.nan
    dz = _detectable_dz(int(n), float(alpha), float(power))
    return dz * float(sd) if math.isfinite(dz) else math.nan


@functools.lru_cache(maxsize=256)
def _detectable_dz(n: int, alpha: float, power: float) -> float:
    """The standardized effect d_z with ``t_power(d_z, n, alpha) == power`` (root of a
    monotone function, bracketed by doubling)."""
    from scipy.optimize import brentq

    def gap(dz: float) -> float:
        return t_power(dz, n, alpha) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 4
        if hi > 1e9:
            return math.nan
    return float(brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-10))


def t_power(dz: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t-test on ``n`` values at level ``alpha``
    when the true mean is ``dz`` standard deviations from 0 (``statsmodels``' noncentral-t
    power). Where scipy's noncentral t returns NaN (large noncentrality at 1-2 degrees of
    freedom) the same probability is integrated over the chi-square law of the sample
    variance: ``E_V[Φ(δ - c·sqrt(V/df)) + Φ(-δ - c·sqrt(V/df))]``, ``δ = dz·sqrt(n)``."""
    from statsmodels.stats.power import TTestPower

    p = float(TTestPower().power(effect_size=dz, nobs=n, alpha=alpha, alternative="two-sided"))
    if math.isfinite(p):
        return p
    from scipy.integrate import quad

    df, delta = n - 1, dz * math.sqrt(n)
    c = float(stats.t.isf(alpha / 2, df))

    def integrand(v: float) -> float:
        s = c * math.sqrt(v / df)
        return (stats.norm.cdf(delta - s) + stats.norm.cdf(-delta - s)) * stats.chi2.pdf(v, df)

    return float(quad(integrand, 0, np.inf, limit=200)[0])
