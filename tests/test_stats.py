"""Confidence intervals for accuracy comparisons (sparsevlm.eval.paired_bootstrap, accuracy_ci)."""
import numpy as np
import pandas as pd
import pytest

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
