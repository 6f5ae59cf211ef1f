"""FAD, KAD and the bootstrap interval against independent references (closed forms, brute force, coverage)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from musiclit.eval.metrics import (
    bootstrap_ci,
    frechet_audio_distance,
    frechet_distance,
    gaussian_stats,
    kernel_audio_distance,
)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_reference(mu_a, s_a, mu_b, s_b) -> float:
    """W2^2 between Gaussians through symmetric eigendecompositions only (no sqrtm of a non-symmetric product):
    Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))."""
    root_a = _psd_sqrt(s_a)
    cross = _psd_sqrt(root_a @ s_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))


def test_frechet_one_dimension_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    value = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[0.25]]))
    assert value == pytest.approx(3.0**2 + (2.0 - 0.5) ** 2, rel=1e-10)


def test_frechet_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    var_a, var_b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_full_covariances_against_symmetric_reference():
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
        s_a, s_b = _random_spd(rng, d), _random_spd(rng, d)
        assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(
            _frechet_reference(mu_a, s_a, mu_b, s_b), rel=1e-7
        )
        assert frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0.0, abs=1e-8)


def test_fad_of_samples_converges_to_the_gaussians_distance():
    rng = np.random.default_rng(2)
    d = 4
    mu_a, mu_b = np.zeros(d), np.array([1.0, -0.5, 0.0, 0.25])
    s_a, s_b = _random_spd(rng, d), _random_spd(rng, d)
    expected = _frechet_reference(mu_a, s_a, mu_b, s_b)
    a = rng.multivariate_normal(mu_a, s_a, size=40_000)
    b = rng.multivariate_normal(mu_b, s_b, size=40_000)
    assert frechet_audio_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fad_of_identical_sets_is_zero_even_when_singular():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 8))
    assert frechet_audio_distance(x, x) == pytest.approx(0.0, abs=1e-7)
    few = rng.standard_normal((5, 32))  # rank-deficient covariance: the eps path
    assert frechet_audio_distance(few, few) == pytest.approx(0.0, abs=1e-3)
    assert frechet_audio_distance(few, few + 1.0) == pytest.approx(32.0, rel=1e-3)  # a pure mean shift


def test_frechet_is_right_where_scipy_warns_of_a_singular_product():
    """Embedding dimensions that never change (dead units) make both covariances singular: scipy's sqrtm
    warns (LinAlgWarning, which frechet_distance hides); the distance still equals the eigh-based reference."""
    import warnings

    from scipy import linalg

    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((300, 8)), 1.5 * rng.standard_normal((300, 8)) + 0.2
    a[:, :3], b[:, :3], b[:, 3] = 0.0, 0.0, 1.0
    (mu_a, s_a), (mu_b, s_b) = gaussian_stats(a), gaussian_stats(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        linalg.sqrtm(s_a @ s_b)
    assert any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)  # the case the filter hides
    assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(_frechet_reference(mu_a, s_a, mu_b, s_b),
                                                                    rel=1e-9)  # fmt: skip


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(4).standard_normal((50, 3))
    mu, cov = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x.T))


def _kad_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]

    def k(x, y):
        return (sum(float(xi) * float(yi) for xi, yi in zip(x, y, strict=True)) / d + 1.0) ** 3

    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kad_matches_a_brute_force_double_loop():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((7, 3))
    b = rng.standard_normal((9, 3)) * 1.5 + 0.3
    assert kernel_audio_distance(a, b) == pytest.approx(_kad_brute_force(a, b), rel=1e-10)
    assert kernel_audio_distance(a, b) == pytest.approx(kernel_audio_distance(b, a), rel=1e-12)


def test_kad_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(6)
    same = [kernel_audio_distance(rng.standard_normal((20, 4)), rng.standard_normal((30, 4))) for _ in range(400)]
    mean, sem = float(np.mean(same)), float(np.std(same) / np.sqrt(len(same)))
    assert abs(mean) < 3 * sem  # an unbiased estimate of 0 (a biased one sits several errors above 0)
    assert min(same) < 0 < max(same)
    shifted = [kernel_audio_distance(rng.standard_normal((20, 4)), rng.standard_normal((30, 4)) + 0.5)
               for _ in range(50)]  # fmt: skip
    assert np.mean(shifted) > 10 * sem and np.mean(shifted) > mean


def test_kad_of_a_set_with_itself_vanishes_as_the_set_grows():
    # the same set on both sides is not two independent samples: the cross term includes k(x_i, x_i), so the
    # estimate is -2/m (mean diagonal - mean off-diagonal kernel), O(1/m): 16x more points, ~16x closer to 0
    rng = np.random.default_rng(7)
    small, large = rng.standard_normal((100, 4)), rng.standard_normal((1600, 4))
    ratio = kernel_audio_distance(small, small) / kernel_audio_distance(large, large)
    assert 8 < ratio < 32
    assert abs(kernel_audio_distance(large, large)) < 0.01 * kernel_audio_distance(large, large + 0.5)


def test_bootstrap_interval_matches_the_normal_interval_for_a_mean():
    x = np.random.default_rng(8).normal(2.0, 3.0, size=400)
    ci = bootstrap_ci(x, n_resamples=4000, seed=1)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert ci.value == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.08 * half + 0.02)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.08 * half + 0.02)


def test_bootstrap_interval_coverage():
    rng = np.random.default_rng(9)
    hits = 0
    trials = 300
    for t in range(trials):
        x = rng.exponential(1.0, size=60)  # skewed: true mean 1
        ci = bootstrap_ci(x, n_resamples=500, seed=t)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_with_a_ratio_statistic():
    rng = np.random.default_rng(10)
    pairs = np.stack([rng.uniform(0, 10, 50), rng.uniform(1, 2, 50)], axis=1)
    ci = bootstrap_ci(pairs, statistic=lambda p: p[:, 0].sum() / p[:, 1].sum(), n_resamples=500)
    assert ci.value == pytest.approx(pairs[:, 0].sum() / pairs[:, 1].sum())
    assert ci.low < ci.value < ci.high
    assert bootstrap_ci(pairs, statistic=lambda p: p[:, 0].sum() / p[:, 1].sum(), n_resamples=500).low == ci.low


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        frechet_audio_distance(np.array([[np.nan, 1.0], [1.0, 2.0]]), np.ones((3, 2)))
    with pytest.raises(ValueError, match="dimensions"):
        kernel_audio_distance(np.ones((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        kernel_audio_distance(np.ones((1, 2)), np.ones((3, 2)))
