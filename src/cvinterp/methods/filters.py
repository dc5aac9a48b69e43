"""Krizhevsky et al. 2012, Fig. 3: the conv1 kernels, and how colour-selective each tower is.

The figure shows every first-layer kernel min-max normalised on its own, arranged by group
(the paper's two GPUs). The paper observes that one group's kernels are largely
colour-agnostic and the other's colour-specific. We measure each kernel's colour selectivity
as the fraction of its energy outside the achromatic direction (R = G = B):

    selectivity(W) = ||W - mean_c W||^2 / ||W||^2

0 for a grey kernel, 1 for a purely colour-opponent one, 2/3 on average for random weights.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402

from cvinterp import figures, stats  # noqa: E402

RANDOM_SELECTIVITY = 2 / 3
#: Permutations of the group labels for the null of the group contrast.
PERMUTATIONS = 2000


def colour_selectivity(kernels: torch.Tensor) -> torch.Tensor:
    """Fraction of each kernel's energy outside the achromatic direction; (N,3,k,k) -> (N,)."""
    if kernels.shape[1] != 3:
        raise ValueError(f"colour selectivity needs 3 input channels, got {kernels.shape[1]}")
    k = kernels.double()
    chroma = k - k.mean(dim=1, keepdim=True)
    total = k.pow(2).sum(dim=(1, 2, 3)).clamp_min(1e-30)
    return (chroma.pow(2).sum(dim=(1, 2, 3)) / total).float()


def normalise_each(kernels: torch.Tensor) -> np.ndarray:
    """Min-max normalise every kernel on its own; (N,C,k,k) -> (N,k,k,C) in [0, 1]."""
    k = kernels.detach().double()
    lo = k.amin(dim=(1, 2, 3), keepdim=True)
    hi = k.amax(dim=(1, 2, 3), keepdim=True)
    k = (k - lo) / (hi - lo).clamp_min(1e-12)
    return k.permute(0, 2, 3, 1).numpy()


def group_stats(kernels: torch.Tensor, groups: int) -> list[dict]:
    """Colour selectivity per group of output channels (consecutive, equal-sized groups)."""
    sel = colour_selectivity(kernels).numpy()
    out = []
    for g, part in enumerate(np.array_split(sel, groups)):
        out.append(
            {
                "group": g + 1,
                "n_filters": int(part.size),
                "mean_selectivity": float(part.mean()),
                "median_selectivity": float(np.median(part)),
                "fraction_colour_specific": float((part > 0.5).mean()),
                "selectivity": [round(float(v), 5) for v in part],
            }
        )
    return out


def dichotomy(
    kernels: torch.Tensor, agnostic_below: float = 0.25, specific_above: float = 0.9
) -> dict:
    """How many kernels are clearly colour-agnostic or clearly colour-specific.

    Random kernels sit around 2/3; a population split into grey edge detectors and colour
    blobs, as Krizhevsky describes, puts most kernels at the two ends.
    """
    sel = colour_selectivity(kernels)
    agnostic = (sel < agnostic_below).float().mean().item()
    specific = (sel > specific_above).float().mean().item()
    return {
        "fraction_agnostic": agnostic,
        "fraction_specific": specific,
        "fraction_at_the_ends": agnostic + specific,
    }


def group_contrast(kernels: torch.Tensor, groups: int) -> dict:
    """Compare the groups' colour selectivity: ratio of means and a Mann-Whitney U test."""
    if groups != 2:
        raise ValueError("the colour contrast compares exactly two groups")
    a, b = np.array_split(colour_selectivity(kernels).numpy(), 2)
    low, high = (a, b) if a.mean() <= b.mean() else (b, a)
    test = mannwhitneyu(high, low, alternative="two-sided")
    return {
        "colour_specific_group": 2 if a.mean() <= b.mean() else 1,
        "mean_selectivity_low": float(low.mean()),
        "mean_selectivity_high": float(high.mean()),
        "median_selectivity_low": float(np.median(low)),
        "ratio_high_to_low": float(high.mean() / max(low.mean(), 1e-12)),
        "mann_whitney_u": float(test.statistic),
        "mann_whitney_p": float(test.pvalue),
    }


def split_groups(kernels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The selectivity of the two groups' kernels, the less colourful group first."""
    a, b = np.array_split(colour_selectivity(kernels).numpy().astype(np.float64), 2)
    return (a, b) if a.mean() <= b.mean() else (b, a)


def contrast_estimate(kernels: torch.Tensor, seed: int = 0) -> dict:
    """The colour contrast of two towers as an effect size: mean selectivity of the more
    colourful group minus the less colourful one's, its 95% bootstrap interval (each group's
    kernels resampled on their own), and its null: the same difference (larger group mean minus
    smaller) when the kernels are dealt to two groups at random (`PERMUTATIONS` label
    permutations; median and 2.5-97.5 percentiles). A split that training did not make is as
    large as the null's."""
    low, high = split_groups(kernels)
    value = float(high.mean() - low.mean())
    interval = stats.bootstrap((high, low), stats.mean_difference, seed=seed)
    sel = np.concatenate([low, high])
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((PERMUTATIONS, sel.size)), axis=1)
    shuffled = sel[perm]
    n = low.size
    null = np.abs(shuffled[:, :n].mean(1) - shuffled[:, n:].mean(1))
    lo, hi = np.percentile(null, [2.5, 97.5])
    return stats.estimate(value, interval, null=float(np.median(null)), null_interval=(lo, hi))


def _median(x, axis=-1):
    return np.median(x, axis=axis)


def agnostic_median_estimate(
    kernels: torch.Tensor, random_kernels: torch.Tensor, seed: int = 0
) -> dict:
    """Median selectivity of the less colourful group, its 95% bootstrap interval over that
    group's kernels, and its null: the same for the same architecture's conv1 at random
    initialisation (the less colourful of its two groups), with its interval."""
    low, _ = split_groups(kernels)
    null_low, _ = split_groups(random_kernels)
    return stats.estimate(
        float(np.median(low)),
        stats.bootstrap(low, _median, seed=seed),
        null=float(np.median(null_low)),
        null_interval=stats.bootstrap(null_low, _median, seed=seed),
    )


def _at_the_ends(
    kernels: torch.Tensor, agnostic_below: float = 0.25, specific_above: float = 0.9
) -> np.ndarray:
    sel = colour_selectivity(kernels).numpy()
    return ((sel < agnostic_below) | (sel > specific_above)).astype(np.float64)


def ends_estimate(kernels: torch.Tensor, random_kernels: torch.Tensor, seed: int = 0) -> dict:
    """Fraction of kernels at either end of the selectivity scale (< 0.25 or > 0.9, as
    `dichotomy`), its 95% bootstrap interval over kernels, and its null: the same fraction for
    the same architecture's conv1 at random initialisation, with its interval."""
    real, rand = _at_the_ends(kernels), _at_the_ends(random_kernels)
    return stats.estimate(
        float(real.mean()),
        stats.bootstrap(real, seed=seed),
        null=float(rand.mean()),
        null_interval=stats.bootstrap(rand, seed=seed),
    )


def plot_kernels(kernels: torch.Tensor, groups: int, title: str, path, bgr: bool = False):
    """The Fig. 3 layout: one panel per group, kernels min-max normalised one by one."""
    imgs = normalise_each(kernels)
    if bgr:
        imgs = imgs[..., ::-1]
    parts = np.array_split(np.arange(len(imgs)), groups)
    sel = colour_selectivity(kernels).numpy() if kernels.shape[1] == 3 else None
    cols = 8 if groups > 1 else 16
    rows = [int(np.ceil(len(p) / cols)) for p in parts]
    fig, axes = plt.subplots(
        1, groups, figsize=(cols * 0.55 * groups + 0.4, max(rows) * 0.55 + 0.9), squeeze=False
    )
    for ax, idx, r in zip(axes[0], parts, rows, strict=True):
        k = imgs.shape[1]
        canvas = np.ones((r * (k + 1) - 1, cols * (k + 1) - 1, imgs.shape[-1]))
        for j, i in enumerate(idx):
            y, x = divmod(j, cols)
            canvas[y * (k + 1) : y * (k + 1) + k, x * (k + 1) : x * (k + 1) + k] = imgs[i]
        ax.imshow(
            canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas,
            cmap="gray",
            interpolation="nearest",
            vmin=0,
            vmax=1,
        )
        label = f"group {idx[0] // len(idx) + 1}" if groups > 1 else f"{len(idx)} kernels"
        if sel is not None:
            label += f" — mean colour selectivity {sel[idx].mean():.2f}"
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    figures.save(fig, path, dpi=150)


def plot_selectivity(per_model: dict[str, tuple[torch.Tensor, int]], path):
    """Histogram of colour selectivity per model and group (colour models only)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if not per_model:
        ax.text(0.5, 0.5, "no colour-input model in this profile", ha="center", va="center")
    bins = np.linspace(0, 1, 26)
    for name, (kernels, groups) in per_model.items():
        sel = colour_selectivity(kernels).numpy()
        for g, part in enumerate(np.array_split(sel, groups)):
            label = name if groups == 1 else f"{name} group {g + 1}"
            ax.hist(part, bins=bins, histtype="step", linewidth=1.5, label=label)
    ax.axvline(RANDOM_SELECTIVITY, color="grey", linestyle=":", label="random weights (2/3)")
    ax.set_xlabel("colour selectivity (energy outside R=G=B)")
    ax.set_ylabel("conv1 kernels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figures.save(fig, path, dpi=150)
