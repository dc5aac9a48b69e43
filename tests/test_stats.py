"""Intervals and nulls for the comparison table (cvinterp.stats)."""

import numpy as np

from cvinterp.stats import (
    bootstrap,
    claim,
    estimate,
    interval_text,
    mean_difference,
    pearson,
    spearman,
)


def test_bootstrap_is_seeded_and_covers_the_mean_at_about_95_percent():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    assert bootstrap(x, seed=3) == bootstrap(x, seed=3)
    covered = 0
    for _ in range(100):
        lo, hi = bootstrap(rng.normal(0.0, 1.0, 60), seed=0)
        covered += lo <= 0.0 <= hi
    assert 85 <= covered <= 100  # a percentile bootstrap at n = 60 slightly under-covers


def test_bootstrap_of_two_groups_and_of_a_paired_correlation():
    rng = np.random.default_rng(2)
    lo, hi = bootstrap((rng.normal(1, 1, 80), rng.normal(0, 1, 80)), mean_difference)
    assert 0 < lo < 1 < hi < 2
    a = rng.normal(size=100)
    lo, hi = bootstrap((a, a + 0.5 * rng.normal(size=100)), spearman, paired=True)
    assert 0.7 < lo < hi <= 1


def test_equal_samples_give_a_point_interval_and_one_sample_an_unknown_spread():
    assert bootstrap(np.full(10, 0.5)) == (0.5, 0.5)
    assert bootstrap(np.array([1.0, np.nan, 1.0])) == (1.0, 1.0)  # NaN left out
    assert np.isnan(bootstrap(np.array([2.0]))).all()  # one image: no spread to measure
    assert np.isnan(bootstrap((np.ones(5), np.array([3.0])), mean_difference)).all()
    # recorded as such, never as an exact value that could pass a claim
    assert estimate(2.0, bootstrap(np.array([2.0]))) == {"value": 2.0, "spread": "unknown"}
    assert estimate(5.0, (5.0, float("inf")))["interval"] == [5.0, None]  # open above
    assert estimate(0.5, null=0.1, null_interval=(np.nan, np.nan)) == {"value": 0.5, "null": 0.1}


def test_vectorised_correlations_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert np.isclose(pearson(x, y), pearsonr(x, y).statistic)
    assert np.isclose(spearman(x, y), spearmanr(x, y).statistic)
    assert pearson(np.ones(5), np.arange(5.0)) == 0


def test_estimate_and_claim_entries():
    e = estimate(0.5, (0.4, 0.6), null=0.1, null_interval=(0.0, 0.2))
    assert e == {"value": 0.5, "interval": [0.4, 0.6], "null": 0.1, "null_interval": [0.0, 0.2]}
    assert claim({}, "", "small net", left_out={"m": "no layer"}) == {
        "na": "m: no layer",
        "conditions": "small net",
    }
    assert claim({"m": e}, "text", "c")["parts"]["m"] == e


def test_interval_text():
    assert interval_text(estimate(0.5, (0.25, 0.75))) == "[+0.250, +0.750]"
    assert interval_text(estimate(5.0, (5.0, float("inf"))), ".0f") == "[5, inf]"
    assert interval_text(estimate(0.5, bootstrap(np.array([0.5])))) == "(spread unknown)"
    assert interval_text(estimate(0.5)) == "(exact)"
