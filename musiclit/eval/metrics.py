"""Distribution distances between sets of audio embeddings, and a bootstrap confidence interval.

* **Frechet Audio Distance** (Kilgour et al., 2019): fit a Gaussian to each set of embeddings and take the
  Frechet (2-Wasserstein) distance between the two Gaussians,
  ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. It is biased upwards for small sets (the
  covariance of a few hundred vectors in a few hundred dimensions is noisy): compare FADs computed with
  the same numbers of embeddings only.
* **Kernel Audio Distance**: the unbiased estimate of the squared maximum mean discrepancy (MMD^2) with the
  cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (the kernel of the Kernel Inception Distance,
  Binkowski et al., 2018). Unbiased: its expectation is exactly 0 when both sets come from one
  distribution (single estimates can be slightly negative), and it does not drift with the set size.
  The KAD paper (Chung et al., 2025) uses a Gaussian kernel; figures are not comparable with its tables.
* :func:`audio_distances`: FAD and KAD as musiclit reports them, on embeddings made comparable first:
  every dimension is standardised with the REFERENCE set's mean and standard deviation (so FAD is in units
  of the reference's variance, whatever the embedding's scale), and for KAD each standardised vector is
  then scaled to length sqrt(D) (so ``x.y / D`` lies in [-1, 1] and the cubic kernel stays bounded: on raw
  or merely standardised vectors a few outlying windows dominate the cubic terms and the unbiased estimate
  swings to large negative values, which was measured on the codec's latents of pure tones).
* :func:`bootstrap_ci`: percentile bootstrap interval of any statistic of per-item values.

All functions take numpy arrays (or anything ``np.asarray`` accepts) of shape (N, D) and compute in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected (N, D) embeddings, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: embeddings contain NaN or infinite values")
    return x


def gaussian_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) embeddings (N >= 2)."""
    x = _as_2d(embeddings, "gaussian_stats")
    if x.shape[0] < 2:
        raise ValueError(f"gaussian_stats: need at least 2 embeddings, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between the Gaussians N(mu_a, sigma_a) and N(mu_b, sigma_b).

    ``||mu_a - mu_b||^2 + Tr(sigma_a) + Tr(sigma_b) - 2 Tr((sigma_a sigma_b)^(1/2))``, the matrix square
    root from scipy. When the product is singular (fewer embeddings than dimensions) its square root is
    taken of ``(sigma_a + eps I)(sigma_b + eps I)`` instead, as the reference FID/FAD code does.

    Args:
        mu_a, mu_b: (D,) means.
        sigma_a, sigma_b: (D, D) covariances (symmetric, positive semi-definite).
        eps: Diagonal offset used only when the plain square root is not finite.

    Returns:
        The distance (>= 0 up to rounding; tiny negative rounding is clipped to 0).
    """
    from scipy import linalg

    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(
            f"frechet_distance: shapes do not match (mu {mu_a.shape} {mu_b.shape}, sigma {sigma_a.shape} "
            f"{sigma_b.shape})"
        )
    diff = mu_a - mu_b
    product = sigma_a @ sigma_b
    with warnings.catch_warnings():
        # scipy warns when the product is singular; the result is checked below instead (X @ X must give it back)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(product)
        scale = max(float(np.abs(product).max()), 1e-300)
        if not np.all(np.isfinite(covmean)) or np.abs(covmean @ covmean - product).max() > 1e-6 * scale:
            offset = np.eye(sigma_a.shape[0]) * eps
            covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        # rounding leaves tiny imaginary parts on a product of PSD matrices; a large one is a real problem
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise ValueError("frechet_distance: the covariance product has a complex square root")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_audio_distance(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """FAD between two sets of embeddings (N_a, D) and (N_b, D): :func:`frechet_distance` of their Gaussians."""
    mu_a, sigma_a = gaussian_stats(emb_a)
    mu_b, sigma_b = gaussian_stats(emb_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"frechet_audio_distance: dimensions differ ({mu_a.size} vs {mu_b.size})")
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0):
    """``(gamma * x.y + coef) ** degree`` for every pair: (N, D) x (M, D) -> (N, M); gamma defaults to 1/D."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef) ** degree


def kernel_audio_distance(emb_a: np.ndarray, emb_b: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD^2 between two sets of embeddings with the kernel ``(x.y / d + 1)^degree``.

    ``1/(m(m-1)) sum_{i!=j} k(a_i, a_j) + 1/(n(n-1)) sum_{i!=j} k(b_i, b_j) - 2/(mn) sum_{i,j} k(a_i, b_j)``.

    Args:
        emb_a: (m, D) embeddings, m >= 2.
        emb_b: (n, D) embeddings, n >= 2.
        degree: Degree of the polynomial kernel.

    Returns:
        The estimate (0 in expectation when both sets come from one distribution; can be slightly negative).
    """
    a, b = _as_2d(emb_a, "kernel_audio_distance"), _as_2d(emb_b, "kernel_audio_distance")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kernel_audio_distance: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    m, n = a.shape[0], b.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"kernel_audio_distance: need at least 2 embeddings per set, got {m} and {n}")
    k_aa = polynomial_kernel(a, a, degree)
    k_bb = polynomial_kernel(b, b, degree)
    k_ab = polynomial_kernel(a, b, degree)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def standardize(reference: np.ndarray, *sets: np.ndarray, eps: float = 1e-8) -> list[np.ndarray]:
    """Standardise ``reference`` and each of ``sets`` with the reference's per-dimension mean and std."""
    ref = _as_2d(reference, "standardize")
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    sd = np.where(sd > eps, sd, 1.0)
    return [(ref - mu) / sd] + [(_as_2d(x, "standardize") - mu) / sd for x in sets]


def to_sphere(x: np.ndarray) -> np.ndarray:
    """Scale every row of (N, D) to length sqrt(D) (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0) * np.sqrt(x.shape[1])


def audio_distances(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """FAD and KAD between a candidate set of embeddings and the reference set (see the module docstring).

    Returns:
        ``{"fad": ..., "kad": ..., "n_reference": N_ref, "n_candidate": N_cand, "dim": D}``; FAD and KAD are
        None (with a ``note``) when either set has fewer than 2 embeddings.
    """
    n_ref, n_cand = int(np.shape(reference)[0]), int(np.shape(candidate)[0])
    if n_ref < 2 or n_cand < 2:
        note = "fewer than 2 embeddings: longer or more samples needed"
        dim = int(np.shape(reference)[1])
        return {"fad": None, "kad": None, "n_reference": n_ref, "n_candidate": n_cand, "dim": dim, "note": note}
    ref, cand = standardize(reference, candidate)
    return {
        "fad": frechet_audio_distance(ref, cand),
        "kad": kernel_audio_distance(to_sphere(ref), to_sphere(cand)),
        "n_reference": int(ref.shape[0]),
        "n_candidate": int(cand.shape[0]),
        "dim": int(ref.shape[1]),
    }


@dataclass
class Interval:
    """A point estimate with a confidence interval.

    Attributes:
        value: The statistic on the full sample.
        low, high: The interval's bounds.
        level: Its nominal coverage (0.95).
        n: Items the statistic was computed over.
    """

    value: float
    low: float
    high: float
    level: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] | None = None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over items (resampled with replacement along axis 0).

    Args:
        values: (N, ...) per-item values, e.g. per-clip CE gains, or (N, 2) (numerator, denominator) pairs
            with a ratio statistic.
        statistic: Function of a resample (same shape as ``values``) -> float; default: the mean over axis 0.
        n_resamples: Bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling (same seed, same interval).

    Returns:
        :class:`Interval` (with a single item the interval collapses to the value).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.shape[0] == 0:
        raise ValueError("bootstrap_ci: no values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    if statistic is None:
        value = float(x.mean(axis=0)) if x.ndim == 1 else float(np.mean(x))
        stats = x[idx].reshape(n_resamples, -1).mean(axis=1)
    else:
        value = float(statistic(x))
        stats = np.array([statistic(x[i]) for i in idx], dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(value, float(low), float(high), level, n)
