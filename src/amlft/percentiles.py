"""The one percentile definition used everywhere amlft reports a distribution.

`amlft bench`, the data report (`amlft data stats`/`report.json`) and every
`scripts/bench_*.py` call this, so a p95 means the same thing in all of them: the
standard library's `statistics.quantiles(method="inclusive")`, i.e. linear interpolation
between order statistics (numpy's default, R type 7). It is monotone in q, so
p50 <= p95 <= p99 <= max always holds, and p0/p100 are the min/max.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from fractions import Fraction

__all__ = ["percentile", "percentiles"]


def percentiles(values: Iterable[float], qs: Iterable[float]) -> list[float] | None:
    """Several percentiles (q in [0, 100]) of `values`; None when there are no values."""
    data = sorted(values)
    if not data:
        return None
    out: list[float] = []
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile q must be within [0, 100], not {q}")
        if len(data) == 1 or q == 0:
            out.append(float(data[0]))
        elif q == 100:
            out.append(float(data[-1]))
        else:
            # q/100 as i/n, then the i-th of the n-1 cut points quantiles() returns
            frac = Fraction(q).limit_denominator(1_000_000) / 100
            cuts = statistics.quantiles(data, n=frac.denominator, method="inclusive")
            out.append(float(cuts[frac.numerator - 1]))
    return out


def percentile(values: Iterable[float], q: float) -> float | None:
    """One percentile (q in [0, 100]) of `values`; None when there are no values."""
    result = percentiles(values, (q,))
    return None if result is None else result[0]
