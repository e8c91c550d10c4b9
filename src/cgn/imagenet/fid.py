"""Fréchet Inception Distance (Heusel et al. 2017) and cacheable reference statistics.

FID is the Fréchet distance of two Gaussians fitted to pool features (2048-d for Inception-v3):

    FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))

with ``mu`` the mean and ``S`` the unbiased covariance (``np.cov``, ddof 1) of the features.
Everything runs in float64. ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the
eigenvalues of ``S_a S_b``, taken from a similar symmetric matrix (:func:`sqrtm_trace`), so
there is no imaginary part to discard (scipy's ``sqrtm(S_a S_b)``, as pytorch-fid uses it, and
torch-fidelity's complex ``eigvals`` leave rounding residue in the imaginary part, which they
drop); eigenvalues that rounding pushes below zero are clipped to zero. Registered as ``fid``.

Reference statistics are cached as ``.npz`` files: ``mu``, ``sigma``, ``n`` (images) and
``extractor`` (the feature network's identity: its kind and weight file's sha256), so that a
cache computed with another network is refused. ``.npz`` files of other tools (``mu`` and
``sigma`` only, e.g. pytorch-fid's or TTUR's) load with a warning that the network is unknown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgn.core.metrics import register_metric
from cgn.errors import CGNError, warn
from cgn.io import save_npz_atomic


@dataclass(frozen=True, eq=False)
class GaussianStats:
    """Mean [D], covariance [D, D] and sample count of a set of features, and what made them.
    ``factor`` ([D, N], ``sigma = factor @ factor.T``; kept when N <= D) lets FID skip the
    D×D eigendecomposition of a covariance of low rank."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str = ""
    factor: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor, extractor: str = "") -> "GaussianStats":
        f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) \
            else np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise CGNError(f"FID needs [N, D] features with N >= 2; got shape {f.shape}")
        if not np.isfinite(f).all():
            raise CGNError("FID: the features contain NaN or inf; check the images and the network")
        mu = f.mean(0)
        factor = ((f - mu).T / np.sqrt(f.shape[0] - 1)) if f.shape[0] <= f.shape[1] else None
        return cls(mu, np.atleast_2d(np.cov(f, rowvar=False)), f.shape[0], extractor, factor)

    def save(self, path: str | os.PathLike) -> None:
        save_npz_atomic(path, mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
                        extractor=np.str_(self.extractor))


def load_stats(path: str | os.PathLike) -> GaussianStats:
    """Statistics from an ``.npz`` (``mu``, ``sigma``; ``n`` and ``extractor`` when cgn wrote it)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"mu", "sigma"} <= keys:
                raise CGNError(f"{path} holds no FID statistics (needs arrays 'mu' and 'sigma'; has "
                               f"{', '.join(sorted(keys)) or 'none'}); write one with --save-reference-stats")
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            n = int(z["n"]) if "n" in keys else 0
            extractor = str(z["extractor"]) if "extractor" in keys else ""
    except (OSError, ValueError) as e:
        raise CGNError(f"{path} is not a readable .npz of FID statistics ({str(e)[:100]}); "
                       "re-create it with --save-reference-stats") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise CGNError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
    return GaussianStats(mu, sigma, n, extractor)


def check_same_extractor(a: GaussianStats, b: GaussianStats, what: str = "the reference statistics") -> None:
    """A CGNError when both name their network and the names differ; a warning when one is unknown."""
    if a.extractor and b.extractor and a.extractor != b.extractor:
        raise CGNError(f"{what} were computed with {b.extractor!r}, not with the network used now "
                       f"({a.extractor!r}); FID compares only features of the same network: "
                       "recompute them from the reference folder")
    if not (a.extractor and b.extractor):
        warn(f"{what} do not record the network that made them; FID assumes it is the same")


def _trace_root(root: np.ndarray, sigma: np.ndarray) -> float:
    """tr((R R^T S)^(1/2)): the non-zero eigenvalues of ``R R^T S`` are those of ``R^T S R``."""
    m = root.T @ ((sigma + sigma.T) / 2) @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def sqrtm_trace(sigma_a: np.ndarray, sigma_b: np.ndarray, factor_a: np.ndarray | None = None) -> float:
    """tr((S_a S_b)^(1/2)) of two symmetric positive semi-definite matrices (float64).

    With ``S_a = R R^T`` (``factor_a`` if given, else ``R = V diag(sqrt(w))`` from
    ``S_a = V diag(w) V^T``), the non-zero eigenvalues of ``S_a S_b`` are those of the symmetric
    ``R^T S_b R``. Eigenvalues of ``S_a`` below ``D * eps * max(w)`` are numerical zeros and
    dropped (with fewer samples than dimensions most are), which also makes that problem small.
    """
    if factor_a is not None:
        return _trace_root(factor_a, sigma_b)
    w, v = np.linalg.eigh((sigma_a + sigma_a.T) / 2)
    keep = w > max(float(w.max()), 0.0) * w.size * np.finfo(np.float64).eps
    return _trace_root(v[:, keep] * np.sqrt(w[keep]), sigma_b) if keep.any() else 0.0


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray,
                     factor_a: np.ndarray | None = None) -> float:
    """The Fréchet distance of N(mu_a, sigma_a) and N(mu_b, sigma_b) (``factor_a``: see
    :func:`sqrtm_trace`)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (mu_a.size, mu_a.size):
        raise CGNError(f"FID: the two feature sets differ in dimension (mu {mu_a.shape} vs {mu_b.shape}, "
                       f"sigma {sigma_a.shape} vs {sigma_b.shape}); use the same network for both")
    diff = mu_a - mu_b
    d = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * sqrtm_trace(sigma_a, sigma_b, factor_a))
    return max(d, 0.0)  # rounding can leave -1e-12 for identical sets


def as_stats(x: GaussianStats | np.ndarray | torch.Tensor | str | os.PathLike) -> GaussianStats:
    if isinstance(x, GaussianStats):
        return x
    if isinstance(x, (str, os.PathLike)):
        return load_stats(x)
    return GaussianStats.of(x)


@register_metric("fid", help="Frechet Inception Distance between the features and a reference")
def fid(features, reference) -> float:
    """FID of ``features`` ([N, D] array/tensor or :class:`GaussianStats`) against ``reference``
    (the same, or the path of an ``.npz`` of statistics). Lower is better; 0 for equal fits."""
    a, b = as_stats(features), as_stats(reference)
    if a.extractor and b.extractor:  # statistics of unknown origin were warned about on loading
        check_same_extractor(a, b)
    if a.factor is None and b.factor is not None:  # tr((S_a S_b)^(1/2)) is symmetric in a and b
        a, b = b, a
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, a.factor)
