"""The Frechet distance between Gaussians fitted to two feature sets (FID's formula).

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

Used in a classifier's feature space by the generator metrics and the figures; comparable only
with itself (same features, same sample counts), never with published FIDs.
"""
import warnings

import numpy as np
import scipy.linalg


def moments(features):
    """(mean (D,), covariance (D, D)) of features (N, D), in float64."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """d^2 above in float64 (imaginary round-off dropped; a singular product is regularised
    with 1e-6 I, as is usual for FID)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    with warnings.catch_warnings():  # singular products are handled below
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            eye = np.eye(sigma1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma1 + eye) @ (sigma2 + eye))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_of_features(features_1, features_2):
    """The Frechet distance between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*moments(features_1), *moments(features_2))
