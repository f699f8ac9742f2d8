"""Order statistics for the bench's timings: the median with its 25–75 % spread, and a
distribution-free interval of the median."""
from __future__ import annotations

import statistics


def median_spread(xs: list[float]):
    """(median, 25th percentile, 75th percentile) of `xs`; one draw gives itself three times."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return statistics.median(xs), q[0], q[2]


def median_ci(xs, level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of independent draws `xs`: the k-th
    smallest and k-th largest, k the largest for which both tails of Binomial(n, 1/2) below k hold at
    most (1 − level) / 2 each. Returns (low, high, coverage), coverage ≥ level when n allows it (n ≥ 6
    at 95 %); with fewer draws, the smallest and largest and the coverage they have."""
    from math import comb

    xs, n = sorted(xs), len(xs)
    if n == 0:
        raise ValueError("xs is empty: allowed one draw or more")
    tail = lambda k: sum(comb(n, i) for i in range(k)) / 2 ** n  # P(Binomial(n, 1/2) < k)
    k = 1
    while k < n // 2 and tail(k + 1) <= (1 - level) / 2:
        k += 1
    return xs[k - 1], xs[n - k], 1 - 2 * tail(k)
