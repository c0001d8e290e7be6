"""Bootstrap intervals and the Estimate container."""

import numpy as np
import pytest

from harmcircuit.evaluation import Estimate, bootstrap_ci


def slow_bootstrap_ci(values, n_resamples, confidence, seed, statistic=np.mean):
    """One resample per loop iteration, drawing from the same generator stream."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=float)
    statistics = []
    for _ in range(n_resamples):
        sample = values[rng.integers(0, values.size, size=(1, values.size))]
        statistics.append(float(statistic(sample, axis=1)[0]))
    tail = (1 - confidence) / 2
    low, high = np.quantile(statistics, [tail, 1 - tail])
    return float(low), float(high)


def test_bootstrap_matches_slow_loop():
    values = np.random.default_rng(1).normal(size=37)
    fast = bootstrap_ci(values, n_resamples=300, confidence=0.9, seed=4)
    slow = slow_bootstrap_ci(values, n_resamples=300, confidence=0.9, seed=4)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_median_statistic():
    values = np.random.default_rng(2).exponential(size=41)
    fast = bootstrap_ci(values, n_resamples=200, seed=0, statistic=np.median)
    slow = slow_bootstrap_ci(values, 200, 0.95, 0, statistic=np.median)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        values = rng.normal(loc=3.0, size=n)
        low, high = bootstrap_ci(values)
        assert low <= values.mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # The width of a mean's interval shrinks like 1 / sqrt(n).
    assert widths[0] / widths[2] == pytest.approx(10.0, rel=0.3)


def test_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(5)
    covered = 0
    trials = 200
    for seed in range(trials):
        values = rng.normal(loc=1.0, size=60)
        low, high = bootstrap_ci(values, n_resamples=400, seed=seed)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_seed_and_chunking():
    values = np.random.default_rng(3).normal(size=50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_bootstrap_chunked_equals_unchunked(monkeypatch):
    import harmcircuit.evaluation.stats as stats

    values = np.random.default_rng(3).normal(size=50)
    whole = bootstrap_ci(values, n_resamples=100, seed=2)
    monkeypatch.setattr(stats, "_MAX_CHUNK_VALUES", 170)  # 3 rows of 50 per chunk
    assert bootstrap_ci(values, n_resamples=100, seed=2) == pytest.approx(whole, abs=1e-12)


def test_bootstrap_degenerate_inputs():
    assert bootstrap_ci([2.5]) == (2.5, 2.5)
    assert bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0)
    assert bootstrap_ci([True, False, True, True]) is not None
    with pytest.raises(ValueError, match="zero values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)


def test_estimate_from_values():
    estimate = Estimate.from_values([0, 1, 1, 1])
    assert estimate.value == pytest.approx(0.75)
    assert estimate.n == 4
    assert estimate.low <= 0.75 <= estimate.high
    assert estimate.to_dict() == {
        "value": 0.75,
        "low": estimate.low,
        "high": estimate.high,
        "n": 4,
    }
    assert "n=4" in str(estimate)
    with pytest.raises(AttributeError):
        estimate.value = 0.0  # type: ignore[misc]
