"""Krizhevsky 2012 conv1 figure: the colour-selectivity measure and the group contrast."""

import numpy as np
import pytest
import torch

from cvinterp.methods.filters import (
    agnostic_median_estimate,
    colour_selectivity,
    contrast_estimate,
    dichotomy,
    ends_estimate,
    group_contrast,
    group_stats,
    normalise_each,
    plot_kernels,
)


def test_selectivity_of_known_kernels():
    grey = torch.randn(4, 1, 5, 5).expand(4, 3, 5, 5)  # R = G = B
    opponent = torch.zeros(1, 3, 5, 5)
    opponent[0, 0], opponent[0, 1] = 1.0, -1.0  # red minus green, no luminance
    red_blob = torch.zeros(1, 3, 5, 5)
    red_blob[0, 0, 2, 2] = 1.0  # one channel only: 2/3 of its energy is chroma
    assert torch.allclose(colour_selectivity(grey), torch.zeros(4), atol=1e-6)
    assert torch.allclose(colour_selectivity(opponent), torch.ones(1))
    assert torch.allclose(colour_selectivity(red_blob), torch.tensor([2 / 3]))
    torch.manual_seed(0)
    assert abs(colour_selectivity(torch.randn(4000, 3, 3, 3)).mean().item() - 2 / 3) < 0.01
    with pytest.raises(ValueError, match="3 input channels"):
        colour_selectivity(torch.randn(2, 1, 3, 3))


def test_group_contrast_finds_the_colour_group():
    torch.manual_seed(0)
    grey = torch.randn(24, 1, 5, 5).expand(24, 3, 5, 5) + 0.05 * torch.randn(24, 3, 5, 5)
    colour = torch.randn(24, 3, 5, 5)
    c = group_contrast(torch.cat([grey, colour]), 2)
    assert c["colour_specific_group"] == 2
    assert c["mann_whitney_p"] < 1e-6 and c["ratio_high_to_low"] > 10
    assert c["median_selectivity_low"] < 0.05
    same = group_contrast(torch.randn(48, 3, 5, 5), 2)
    assert same["mann_whitney_p"] > 0.01  # two random halves do not differ
    stats = group_stats(torch.cat([grey, colour]), 2)
    assert [s["n_filters"] for s in stats] == [24, 24]
    assert stats[0]["fraction_colour_specific"] == 0 and stats[1]["fraction_colour_specific"] > 0.8


def test_each_kernel_is_normalised_on_its_own(tmp_path):
    k = torch.stack(
        [torch.linspace(-1, 1, 27).view(3, 3, 3), torch.linspace(5, 50, 27).view(3, 3, 3)]
    )
    out = normalise_each(k)
    assert out.shape == (2, 3, 3, 3)
    for i in range(2):
        assert out[i].min() == 0 and out[i].max() == 1
    plot_kernels(torch.randn(16, 3, 5, 5), 2, "test", tmp_path / "k.png")
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "k.png"))
    assert img.shape[0] > 50 and img.std() > 10  # a real picture, not blank


def test_dichotomy_counts_the_ends():
    torch.manual_seed(0)
    grey = torch.randn(6, 1, 3, 3).expand(6, 3, 3, 3)
    opponent = torch.zeros(2, 3, 3, 3)
    opponent[:, 0], opponent[:, 1] = 1.0, -1.0
    d = dichotomy(torch.cat([grey, opponent, torch.randn(2, 3, 3, 3)]))
    assert d["fraction_agnostic"] == pytest.approx(0.6) and d["fraction_specific"] >= 0.2
    assert dichotomy(torch.randn(1000, 3, 3, 3))["fraction_at_the_ends"] < 0.1


def _towers(n=24, seed=0):
    """A grey group then a colour group of n kernels each."""
    torch.manual_seed(seed)
    grey = torch.randn(n, 1, 5, 5).expand(n, 3, 5, 5) + 0.05 * torch.randn(n, 3, 5, 5)
    return torch.cat([grey, torch.randn(n, 3, 5, 5)])


def test_contrast_is_an_effect_size_with_interval_and_permutation_null():
    c = contrast_estimate(_towers())
    lo, hi = c["interval"]
    assert lo <= c["value"] <= hi and c["value"] > 0.5
    assert lo > c["null_interval"][1]  # two towers split by training: beyond the permutations
    torch.manual_seed(3)
    same = contrast_estimate(torch.randn(48, 3, 5, 5))
    assert same["value"] <= same["null_interval"][1]  # a chance split is within the null
    assert contrast_estimate(_towers(), seed=1) != c  # seeded: another seed, other resamples
    assert contrast_estimate(_towers()) == c


def test_agnostic_median_and_ends_against_random_init():
    torch.manual_seed(1)
    rand = torch.randn(48, 3, 5, 5)
    m = agnostic_median_estimate(_towers(), rand)
    assert m["value"] < 0.05 and m["interval"][1] < m["null_interval"][0]
    assert 0.55 < m["null"] < 0.75  # random weights: about 2/3
    e = ends_estimate(_towers(), rand)
    assert e["value"] == pytest.approx(0.5 + dichotomy(_towers()[24:])["fraction_specific"] / 2)
    assert e["null"] < 0.15 and e["interval"][0] <= e["value"] <= e["interval"][1]
