"""Confidence intervals for accuracy comparisons (sparsevlm.eval.paired_bootstrap, accuracy_ci) and for
the bench's median ratios (sparsevlm.bench.median_ci)."""
import numpy as np
import pandas as pd
import pytest

from sparsevlm.bench import median_ci
from sparsevlm.eval import accuracy_ci, paired_bootstrap


def test_identical_results_are_a_tie_at_zero():
    a = np.random.default_rng(0).random(300) < 0.7
    r = paired_bootstrap(a, a)
    assert r == {"diff": 0.0, "low": 0.0, "high": 0.0, "verdict": "tie"}


def test_a_clear_difference_is_called_and_a_small_one_is_a_tie():
    rng = np.random.default_rng(1)
    b = rng.random(800) < 0.6
    a = b | (rng.random(800) < 0.5)  # a is right wherever b is, and on about half the rest
    r = paired_bootstrap(a, b)
    assert r["verdict"] == "a better" and r["low"] > 0 and r["low"] <= r["diff"] <= r["high"]
    c = b.copy()
    c[np.flatnonzero(~b)[:2]] = True  # 2 more right answers of 800
    assert paired_bootstrap(c, b)["verdict"] == "tie"


def test_interval_is_antisymmetric_seeded_and_takes_frames():
    rng = np.random.default_rng(2)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.7
    ab, ba = paired_bootstrap(a, b, seed=3), paired_bootstrap(b, a, seed=3)
    assert ab["low"] == pytest.approx(-ba["high"]) and ab["high"] == pytest.approx(-ba["low"])
    assert paired_bootstrap(a, b, seed=3) == ab
    assert paired_bootstrap(pd.DataFrame({"correct": a}), pd.DataFrame({"correct": b}), seed=3) == ab
    assert {"a better": "b better", "b better": "a better", "tie": "tie"}[ab["verdict"]] == ba["verdict"]


def test_accuracy_interval_covers_the_accuracy_and_narrows_with_more_questions():
    rng = np.random.default_rng(4)
    small, large = rng.random(100) < 0.75, rng.random(2000) < 0.75
    lo_s, hi_s = accuracy_ci(small)
    lo_l, hi_l = accuracy_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # width shrinks as 1/sqrt(n): sqrt(20) > 4


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([True, False], [True])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([True], [False], level=1.5)


def test_median_interval_takes_the_order_statistics_the_binomial_allows():
    assert median_ci(range(11)) == (1, 9, pytest.approx(1 - 2 * 12 / 2048))  # 2nd and 10th of 11: 98.8 %
    assert median_ci(range(9)) == (1, 7, pytest.approx(1 - 2 * 10 / 512))  # 2nd and 8th of 9: 96.1 %
    assert median_ci([3, 1, 2, 5, 4]) == (1, 5, pytest.approx(1 - 2 / 32))  # 5 draws: no 95 % interval exists
    with pytest.raises(ValueError, match="xs is empty"):
        median_ci([])


def test_median_interval_covers_the_true_median_as_often_as_it_says():
    """Skewed draws (lognormal, median 1): over 4,000 samples of 11 the interval holds 1 at least 95 %
    of the time (it says 98.8 %; a binomial's 4,000 trials put the observed share within ±0.6 % of it)."""
    rng = np.random.default_rng(0)
    hits = [lo <= 1.0 <= hi for lo, hi, _ in (median_ci(rng.lognormal(0, 0.5, 11)) for _ in range(4000))]
    assert abs(np.mean(hits) - 0.988) < 0.006
