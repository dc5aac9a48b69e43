"""t-SNE (van der Maaten & Hinton 2008) and PCA maps of features, and how good they are.

t-SNE runs in openTSNE with the paper's schedule pinned: PCA to 30 dimensions first, then
early exaggeration for the first iterations at the first momentum, the momentum switch later,
and a fixed learning rate and seed (the library's own defaults differ: exaggeration 12 and an
automatic learning rate). The gradient is openTSNE's approximation (Barnes-Hut or FFT), not the
paper's exact O(n^2) one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TSNESettings:
    """van der Maaten & Hinton 2008, Sec. 4.2 [to verify against the PDF]."""

    pca_dims: int = 30
    perplexity: float = 40.0
    iterations: int = 1000
    learning_rate: float = 100.0  # the paper's eta, for its gradient (Eq. 5)
    early_exaggeration: float = 4.0
    exaggeration_iterations: int = 50
    momentum: float = 0.5
    final_momentum: float = 0.8
    momentum_switch: int = 250  # the iteration from which the final momentum is used
    gradient: str = "bh"  # openTSNE's negative_gradient_method: "bh" or "fft"


def pca(features: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    dims = min(dims, *features.shape)
    return PCA(dims, svd_solver="full", random_state=seed).fit_transform(features)


def tsne(features: np.ndarray, settings: TSNESettings, seed: int, threads: int = 1) -> np.ndarray:
    """2-D t-SNE map of `features` (n, d) with the settings pinned; deterministic per seed."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    s = settings
    if not s.exaggeration_iterations <= s.momentum_switch <= s.iterations:
        raise ValueError(
            "t-SNE settings need exaggeration_iterations <= momentum_switch <= "
            f"iterations, got {asdict(s)}"
        )
    x = pca(features, s.pca_dims, seed)
    aff = affinity.PerplexityBasedNN(
        x, perplexity=s.perplexity, method="exact", n_jobs=threads, random_state=seed
    )
    init = initialization.random(x, n_components=2, random_state=seed)  # N(0, 1e-4)
    # openTSNE's gradient is a quarter of the paper's Eq. 5 (it drops the factor 4): the
    # paper's step eta is openTSNE's learning rate 4 * eta
    lr = 4 * s.learning_rate
    emb = TSNEEmbedding(
        init,
        aff,
        learning_rate=lr,
        negative_gradient_method=s.gradient,
        n_jobs=threads,
        random_state=seed,
    )
    phases = [
        (s.exaggeration_iterations, s.early_exaggeration, s.momentum),
        (s.momentum_switch - s.exaggeration_iterations, None, s.momentum),
        (s.iterations - s.momentum_switch, None, s.final_momentum),
    ]
    for n_iter, exaggeration, momentum in phases:
        if n_iter:
            emb = emb.optimize(
                n_iter, exaggeration=exaggeration, momentum=momentum, learning_rate=lr
            )
    return np.asarray(emb)


@dataclass
class MapQuality:
    knn_accuracy: float  # leave-one-out kNN accuracy of the labels in the 2-D map
    trustworthiness: float  # Venna & Kaski: are the map's neighbours neighbours in the input?


def quality(
    features: np.ndarray, points: np.ndarray, labels: np.ndarray, k: int = 10, trust_k: int = 12
) -> MapQuality:
    """How well a 2-D map keeps classes and neighbourhoods (scikit-learn)."""
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import KNeighborsClassifier

    # leave-one-out: ask for k + 1 neighbours and drop each point itself (not merely the
    # first column: a coincident twin may come first)
    knn = KNeighborsClassifier(k + 1).fit(points, labels)
    near = knn.kneighbors(points, return_distance=False)
    own = near == np.arange(len(points))[:, None]
    own[~own.any(1), -1] = True  # itself not among the k + 1: drop the farthest instead
    idx = near[~own].reshape(len(points), k)
    votes = labels[idx]
    pred = np.array([np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes])
    return MapQuality(
        knn_accuracy=float((pred == labels).mean()),
        trustworthiness=float(trustworthiness(features, points, n_neighbors=trust_k)),
    )
