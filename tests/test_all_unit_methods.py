"""The all-unit methods: activation maximisation (Erhan et al. 2009, Yosinski et al. 2015),
t-SNE maps and their quality (van der Maaten & Hinton 2008), feature inversion (deep image
prior, total variation, learned decoders) and `Preprocessing.from_unit`.

Tiny seeded nets and images on the CPU; every check compares against an analytic value, an
independent computation or a run with the batch split up."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvinterp.methods import embedding as emb
from cvinterp.methods import inversion as inv
from cvinterp.methods.actmax import (
    YOSINSKI_SETTINGS,
    erhan,
    gaussian_blur,
    pairwise_correlation,
    step_sizes,
    unit_objective,
    yosinski,
)
from cvinterp.models import IMAGENET_RGB, Preprocessing


def conv_net() -> nn.Sequential:
    """Conv, ReLU, conv, ReLU, pool, fc: 12x12 RGB inputs, 5 classes (eval mode)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0
        nn.ReLU(),  # 1
        nn.Conv2d(8, 6, 3, padding=1),  # 2
        nn.ReLU(),  # 3
        nn.MaxPool2d(2),  # 4
        nn.Flatten(),  # 5
        nn.Linear(6 * 6 * 6, 5),  # 6
    ).eval()


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def smooth_images(n: int, size: int, seed: int, contrast: float = 6.0) -> torch.Tensor:
    """Structured images in [0, 1]: noise blurred (sigma 1.5, radius 5, mirrored edges) through
    a sigmoid. The fixtures' own blur, fixed here so that the images stay the same whatever
    blur activation maximisation uses."""
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    t = torch.arange(-5, 6, dtype=noise.dtype)
    k = torch.exp(-(t**2) / (2 * 1.5**2))
    k = k / k.sum()
    x = F.pad(noise, (5, 5, 5, 5), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return torch.sigmoid(contrast * x)


# --- activation maximisation ------------------------------------------------------------------


def test_yosinski_raises_the_objective_of_every_conv_unit():
    model = conv_net()
    units = torch.arange(6)
    objective = unit_objective(model, "2", units, where="centre")
    torch.manual_seed(1)
    start = torch.randn(6, 3, 12, 12) * 10  # pixel units: noise around the mean image
    setting = dataclasses.replace(YOSINSKI_SETTINGS[3], iterations=30)
    res = yosinski(objective, start, identity, setting)
    assert res.images.shape == start.shape
    assert (res.final - res.start > 5).all(), (res.start, res.final)
    assert (res.final > 2 * res.start.abs()).all(), (res.start, res.final)
    # the reported objective is the centre of each unit's map, recomputed here directly
    with torch.no_grad():
        direct = model[:3](res.images)[torch.arange(6), units, 6, 6]
        at_start = model[:3](start)[torch.arange(6), units, 6, 6]
    torch.testing.assert_close(res.final, direct)
    torch.testing.assert_close(res.start, at_start)
    assert res.settings["iterations"] == 30 and res.settings["decay"] == 1e-4
    # the `iterations` argument overrides the setting's
    short = yosinski(objective, start, identity, YOSINSKI_SETTINGS[3], iterations=2)
    assert short.settings["iterations"] == 2


@pytest.mark.parametrize("k", [1, 4])  # 1: norm percentile clipping, 4: contribution clipping
@pytest.mark.parametrize("layer", ["2", None])
def test_yosinski_batched_equals_one_unit_at_a_time(k, layer):
    model = conv_net()
    setting = dataclasses.replace(YOSINSKI_SETTINGS[k], iterations=30)
    units = torch.tensor([0, 1, 2])
    torch.manual_seed(1)
    start = torch.randn(3, 3, 12, 12) * 10
    bounds = (torch.full((1, 3, 1, 1), -60.0), torch.full((1, 3, 1, 1), 60.0))
    batch = yosinski(unit_objective(model, layer, units), start, identity, setting, bounds)
    alone = [
        yosinski(
            unit_objective(model, layer, units[i : i + 1]),
            start[i : i + 1],
            identity,
            setting,
            bounds,
        )
        for i in range(3)
    ]
    torch.testing.assert_close(
        batch.images, torch.cat([a.images for a in alone]), rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        batch.final, torch.cat([a.final for a in alone]), rtol=1e-5, atol=1e-4
    )
    # the clipping did act, per image: at least its percentile of pixels is zero
    pct = setting.norm_pct or setting.contrib_pct
    zero = (batch.images == 0).all(1).flatten(1).float().mean(1)
    assert (zero >= pct / 100 - 2 / 144).all(), zero
    assert batch.images.abs().max() <= 60


def test_yosinski_settings_are_table_1():
    # Table 1, with the learning-rate policy of the authors' doc/running-optimize-image.md
    expected = {
        1: dict(decay=0.0, blur_every=4, blur_radius=0.5, norm_pct=50, contrib_pct=0,
                iterations=500, lr_policy="progress", lr=100.0, desired_prog=2.0),
        2: dict(decay=0.3, blur_every=0, blur_radius=0.0, norm_pct=20, contrib_pct=0,
                iterations=750, lr_policy="constant", lr=100.0),
        3: dict(decay=1e-4, blur_every=4, blur_radius=1.0, norm_pct=0, contrib_pct=0,
                iterations=1000, lr_policy="constant", lr=100.0),
        4: dict(decay=0.0, blur_every=4, blur_radius=0.5, norm_pct=0, contrib_pct=90,
                iterations=1000, lr_policy="progress", lr=1e8, desired_prog=2.0),
    }  # fmt: skip
    assert sorted(YOSINSKI_SETTINGS) == [1, 2, 3, 4]
    for k, values in expected.items():
        got = dataclasses.asdict(YOSINSKI_SETTINGS[k])
        assert {key: got[key] for key in values} == values, k


def authors_optimise(score, x0, low, high, p, max_iter):
    """The authors' GradientOptimizer._optimize (deep-visualization-toolbox,
    optimize/gradient_optimizer.py) for one image, in NumPy, as their code reads: `score(x)`
    gives (objective, gradient). Returns (best image, best objective, last objective)."""
    from scipy.ndimage import gaussian_filter

    xx = x0.copy()
    best_obj, best_xx = None, None
    for ii in range(max_iter):
        xx = np.minimum(high, np.maximum(low, xx))  # 0. crop to [0, 255] (minus the mean)
        obj, grad = score(xx)  # 1. forward, 4. backward
        if best_obj is None or obj > best_obj:  # 2. best-ever snapshot
            best_obj, best_xx = obj, xx.copy()
        if p.lr_policy == "progress":  # 5. learning rate
            lr = min(p.lr, p.desired_prog / np.linalg.norm(grad) ** 2)
        else:
            lr = p.lr
        if ii < max_iter - 1:  # 6. no update after the last step
            xx = xx + lr * grad
            xx = xx * (1 - p.decay)
            if p.blur_every != 0 and p.blur_radius > 0 and ii % p.blur_every == 0:
                for channel in range(3):
                    xx[channel] = gaussian_filter(xx[channel], p.blur_radius)
            if p.norm_pct > 0:
                pxnorms = np.linalg.norm(xx, axis=0)
                xx = xx - xx * (pxnorms < np.percentile(pxnorms, p.norm_pct))[None]
            if p.contrib_pct > 0:
                benefit = (grad * -xx).sum(0)
                small = np.abs(benefit) < np.percentile(np.abs(benefit), p.contrib_pct)
                xx = xx - xx * small[None]
    return best_xx, best_obj, obj


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_yosinski_runs_the_authors_loop(k):
    """Every setting against a NumPy transcription of the authors' loop, image by image:
    clipping first, their learning-rate policy, blur at steps 0, 4, ..., the best image."""
    torch.manual_seed(3)
    model = conv_net().double()
    units = torch.tensor([0, 4])
    objective = unit_objective(model, "2", units, where="centre")
    start = torch.randn(
        2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    start = start * 10
    low, high = -50.0, 60.0
    bounds = (torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64))
    setting = YOSINSKI_SETTINGS[k]
    res = yosinski(objective, start, identity, setting, bounds, iterations=13)
    for i in range(2):
        one = unit_objective(model, "2", units[i : i + 1], where="centre")

        def score(xx, one=one):
            x = torch.from_numpy(xx)[None].requires_grad_(True)
            value = one(x)
            (g,) = torch.autograd.grad(value.sum(), x)
            return float(value.detach()), g[0].numpy()

        best_xx, best_obj, last = authors_optimise(score, start[i].numpy(), low, high, setting, 13)
        np.testing.assert_allclose(res.images[i].numpy(), best_xx, rtol=0, atol=1e-9)
        assert float(res.final[i]) == pytest.approx(best_obj, abs=1e-9)
        assert float(res.last[i]) == pytest.approx(last, abs=1e-9)


def test_yosinski_progress_rate_is_capped():
    grad = torch.zeros(3, 2, 2, 2, dtype=torch.float64)
    grad[0] = 1.0  # ||g||^2 = 8 -> 2 / 8
    grad[1] = 1e-3  # 2 / 8e-6 = 250000 -> capped at 100
    lr = step_sizes(YOSINSKI_SETTINGS[1], grad)
    assert lr.tolist() == [0.25, 100.0, 100.0]  # a zero gradient: the cap (a zero step)
    assert step_sizes(YOSINSKI_SETTINGS[4], grad)[1] == pytest.approx(250000.0)
    assert step_sizes(YOSINSKI_SETTINGS[3], grad).tolist() == [100.0] * 3


def test_erhan_stays_on_the_sphere():
    model = conv_net()
    units = torch.tensor([0, 3, 5, 1])
    start = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    res = erhan(unit_objective(model, "2", units), start, rho=9.0, iterations=20)
    norms = res.images.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), 9.0), rtol=1e-4, atol=0)
    assert res.final.mean() > res.start.mean()
    assert res.settings == {"rho": 9.0, "iterations": 20, "step": 0.05}


def test_erhan_on_a_linear_unit_finds_the_normalised_weight_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    rho = 7.0
    units = torch.tensor([0, 1, 2]).repeat_interleave(4)  # 4 random starts per unit
    start = torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    res = erhan(unit_objective(model, "1", units), start, rho=rho, iterations=200)
    w, b = model[1].weight.detach()[units], model[1].bias.detach()[units]
    cos = F.cosine_similarity(res.images.flatten(1), w, dim=1)
    assert (cos > 0.999).all(), cos
    # the maximum of w.x + b on the sphere: rho |w| + b
    torch.testing.assert_close(res.final, rho * w.norm(dim=1) + b, rtol=1e-4, atol=1e-4)
    within, between = pairwise_correlation(res.images, units)
    start_within, _ = pairwise_correlation(start, units)
    assert within > 0.999 and start_within < 0.2
    assert between < 0.2


def test_gaussian_blur_matches_scipy_keeps_constants_and_mass():
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for sigma in (0.5, 1.0, 2.0):
        # the authors' blur: gaussian_filter(channel, sigma) with scipy's defaults (a 4-sigma
        # kernel, mode "reflect")
        ref = np.stack([[gaussian_filter(c, sigma) for c in img] for img in x.numpy()])
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), ref, atol=1e-12)
    const = torch.full((1, 3, 9, 9), 3.25, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 1.0), const, rtol=0, atol=1e-12)
    # mass is kept when the blurred image stays off the (reflected) border
    inner = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    inner[..., 4:8, 4:8] = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert float(gaussian_blur(inner, 1.0).sum()) == pytest.approx(float(inner.sum()), 1e-12)
    assert gaussian_blur(x, 1.0).var() < 0.2 * x.var()
    assert gaussian_blur(x, 0.0) is x


def test_unit_objective():
    model = conv_net()
    with pytest.raises(ValueError, match="where"):
        unit_objective(model, "2", torch.tensor([0]), where="max")
    torch.manual_seed(3)
    x = torch.randn(3, 3, 12, 12)
    units = torch.tensor([4, 0, 2])
    with torch.no_grad():
        logits, conv = model(x), model[:3](x)
        rows = torch.arange(3)
        torch.testing.assert_close(unit_objective(model, "6", units)(x), logits[rows, units])
        torch.testing.assert_close(unit_objective(model, None, units)(x), logits[rows, units])
        centre = unit_objective(model, "2", units, where="centre")(x)
        torch.testing.assert_close(centre, conv[rows, units, 6, 6])
        mean = unit_objective(model, "2", units, where="mean")(x)
        torch.testing.assert_close(mean, conv[rows, units].mean((1, 2)))


# --- t-SNE ------------------------------------------------------------------------------------


def test_tsne_runs_opentsne_with_the_papers_schedule(monkeypatch):
    import openTSNE
    from openTSNE import affinity

    calls, affinities = [], []
    optimize = openTSNE.TSNEEmbedding.optimize
    perplexity_nn = affinity.PerplexityBasedNN

    def record_optimize(self, n_iter, **kwargs):
        out = optimize(self, n_iter, **kwargs)
        calls.append(
            dict(
                n_iter=n_iter,
                **kwargs,
                start=np.array(self),
                self=self,
                out=out,
                params=dict(self.gradient_descent_params),
            )
        )
        return out

    def record_affinity(data, **kwargs):
        affinities.append(dict(shape=data.shape, **kwargs))
        return perplexity_nn(data, **kwargs)

    monkeypatch.setattr(openTSNE.TSNEEmbedding, "optimize", record_optimize)
    monkeypatch.setattr(affinity, "PerplexityBasedNN", record_affinity)
    x = np.random.default_rng(0).normal(size=(200, 50))
    y = emb.tsne(x, emb.TSNESettings(), seed=0)
    assert y.shape == (200, 2) and np.isfinite(y).all()
    phases = [(c["n_iter"], c["exaggeration"], c["momentum"], c["learning_rate"]) for c in calls]
    # the paper's eta = 100 is openTSNE's 400: openTSNE's gradient lacks Eq. 5's factor 4
    assert phases == [(50, 4.0, 0.5, 400.0), (200, None, 0.5, 400.0), (750, None, 0.8, 400.0)]
    for c in calls:
        assert c["params"]["negative_gradient_method"] == "bh"
        assert c["params"]["learning_rate"] == 400.0
    # each phase goes on from the last one's result; the first starts at N(0, 1e-4)
    assert calls[1]["self"] is calls[0]["out"] and calls[2]["self"] is calls[1]["out"]
    np.testing.assert_array_equal(y, np.asarray(calls[2]["out"]))
    assert 0.5e-4 < calls[0]["start"].std() < 2e-4
    (a,) = affinities
    assert a["perplexity"] == 40.0 and a["method"] == "exact"
    assert a["shape"] == (200, 30)  # PCA to 30 dimensions first
    assert calls[0]["self"].affinities.effective_perplexity_ == 40.0


def blobs(n_per: int = 75, classes: int = 4, dims: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per)
    centres = rng.normal(size=(classes, dims)) * 10
    return centres[labels] + rng.normal(size=(len(labels), dims)), labels


@pytest.fixture(scope="module")
def blob_map():
    x, labels = blobs()
    settings = emb.TSNESettings(iterations=250, momentum_switch=100)
    return x, labels, emb.tsne(x, settings, seed=0)


def test_tsne_is_deterministic_per_seed_and_checks_its_schedule(blob_map):
    x, _, _ = blob_map
    settings = emb.TSNESettings(iterations=150, momentum_switch=100)
    a, b = emb.tsne(x, settings, seed=3), emb.tsne(x, settings, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - emb.tsne(x, settings, seed=4)).max() > 0.1
    with pytest.raises(ValueError, match="exaggeration_iterations"):
        emb.tsne(x, emb.TSNESettings(exaggeration_iterations=300, momentum_switch=250), 0)
    with pytest.raises(ValueError, match="exaggeration_iterations"):
        emb.tsne(x, emb.TSNESettings(iterations=200, momentum_switch=250), 0)


def test_map_quality(blob_map):
    x, labels, points = blob_map
    q = emb.quality(x, points, labels)
    assert q.knn_accuracy >= 0.99 and q.trustworthiness > 0.9, q
    # shuffled labels on a map: chance; a random map: low trustworthiness
    rng = np.random.default_rng(1)
    shuffled = emb.quality(x, points, rng.permutation(labels))
    assert abs(shuffled.knn_accuracy - 0.25) < 0.1, shuffled
    pts, lab = rng.normal(size=(400, 2)), rng.integers(0, 5, 400)
    random = emb.quality(rng.normal(size=(400, 5)), pts, lab)
    assert abs(random.knn_accuracy - 0.2) < 0.08 and random.trustworthiness < 0.6, random


def test_map_quality_knn_leaves_each_point_out():
    # points on a line (no distance ties), each with its own label: every neighbour has another
    pts = np.c_[np.arange(20.0) ** 1.5, np.zeros(20)]
    q = emb.quality(pts, pts, np.arange(20), k=1, trust_k=3)
    assert q.knn_accuracy == 0.0  # 1.0 if a point's own label counted
    assert q.trustworthiness == pytest.approx(1.0)
    # pairs of close points sharing a label: each point's one neighbour is its partner
    pairs = np.c_[np.repeat(np.arange(10.0) * 10, 2) + np.tile([0.0, 0.1], 10), np.zeros(20)]
    assert emb.quality(pairs, pairs, np.repeat(np.arange(10), 2), k=1, trust_k=3).knn_accuracy == 1


def test_map_quality_knn_leaves_out_coincident_points_too():
    pts = np.c_[np.repeat(np.arange(10.0) * 10, 2), np.zeros(20)]  # coincident pairs
    q = emb.quality(pts, pts, np.arange(20), k=1, trust_k=3)
    assert q.knn_accuracy == 0.0  # each point's only neighbour (its twin) has another label


# --- feature inversion ------------------------------------------------------------------------

GENERATOR = {"channels": [8, 16], "kernels": [3, 3], "skip": 2}


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def test_inversion_of_the_identity_gives_the_image_back():
    img = F.interpolate(
        torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
        size=16,
        mode="bilinear",
        align_corners=False,
    )
    kw = dict(size=16, channels=3, generator=GENERATOR, lr=0.01, input_depth=8)
    start = inv.dip_invert(nn.Identity(), identity, [img], [None], iterations=0, **kw)
    dip = inv.dip_invert(nn.Identity(), identity, [img], [None], iterations=200, **kw)
    assert dip.images.shape == (1, 3, 16, 16) and start.history == []
    assert rmse(dip.images, img) < 0.03 and rmse(dip.images, img) < rmse(start.images, img) / 5
    torch.testing.assert_close(dip.feature_error, inv.relative_error(dip.images, img))
    assert dip.history[0] > 10 * dip.history[-1]
    tv = inv.tv_invert(nn.Identity(), identity, [img], [None], 16, 3, iterations=200, tv_weight=0.0)
    tv_start = inv.tv_invert(
        nn.Identity(), identity, [img], [None], 16, 3, iterations=0, tv_weight=0.0
    )
    assert rmse(tv.images, img) < 0.015 and rmse(tv.images, img) < rmse(tv_start.images, img) / 10


def test_inversions_are_independent_of_each_other():
    """In float64: in float32 a batch of two convolves in another order than a batch of one on
    some CPUs, and 40 Adam steps amplify the rounding past the tolerance."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        .eval()
        .double()
    )
    imgs = smooth_images(2, 16, seed=1).double()
    with torch.no_grad():
        conv1 = inv.features(model, imgs[:1], ["1"])[0]
        conv2 = inv.features(model, imgs[1:], ["3"])[0]
    kw = dict(size=16, channels=3, generator=GENERATOR, iterations=40, lr=0.01, input_depth=8)
    kw |= dict(dtype=torch.float64)
    both = inv.dip_invert(model, identity, [conv1, conv2], ["1", "3"], seed=5, **kw)
    second = inv.dip_invert(model, identity, [conv2], ["3"], seed=6, **kw)
    first = inv.dip_invert(model, identity, [conv1], ["1"], seed=5, **kw)
    torch.testing.assert_close(both.images[1:], second.images, rtol=0, atol=1e-4)
    torch.testing.assert_close(both.images[:1], first.images, rtol=0, atol=1e-4)
    other_seed = inv.dip_invert(model, identity, [conv2], ["3"], seed=5, **kw)
    assert (other_seed.images - second.images).abs().max() > 0.05  # the seed matters
    kw = dict(size=16, channels=3, iterations=40, tv_weight=0.01, dtype=torch.float64)
    both = inv.tv_invert(model, identity, [conv1, conv2], ["1", "3"], seed=5, **kw)
    second = inv.tv_invert(model, identity, [conv2], ["3"], seed=6, **kw)
    torch.testing.assert_close(both.images[1:], second.images, rtol=0, atol=1e-4)


def test_skipnet_and_usable_levels():
    torch.manual_seed(0)
    net = inv.SkipNet(4, 3, [8, 16], [3, 5], skip=2).train()
    y = net(torch.rand(2, 4, 16, 20))
    assert y.shape == (2, 3, 16, 20) and (y > 0).all() and (y < 1).all()
    with pytest.raises(ValueError, match="kernel"):
        inv.SkipNet(4, 3, [8, 16], [3], skip=2)
    six = [8] * 6
    assert inv.usable_levels(28, six) == 4  # 28 -> 14 -> 7 -> 4 -> 2 (-> 1: dropped)
    assert inv.usable_levels(16, [8, 16]) == 2 and inv.usable_levels(224, six) == 6
    z = torch.rand(1, 4, 28, 28)
    assert inv.SkipNet(4, 3, six[:4], [3] * 4, skip=2).train()(z).shape == (1, 3, 28, 28)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        inv.SkipNet(4, 3, six[:5], [3] * 5, skip=2).train()(z)  # a 1x1 map at level 5
    # dip_invert drops the levels itself
    img = smooth_images(1, 28, seed=0)
    gen = {"channels": six, "kernels": [3, 3, 3, 3, 5, 5], "skip": 2}
    out = inv.dip_invert(
        nn.Identity(), identity, [img], [None], 28, 3, generator=gen, iterations=1, input_depth=4
    )
    assert out.images.shape == (1, 3, 28, 28)


def test_total_variation_and_relative_error():
    const = torch.full((2, 3, 8, 8), 0.3)
    assert (inv.total_variation(const) < 1e-7).all()
    ramp = (torch.arange(8.0) * 0.1).expand(1, 3, 8, 8)  # dx = 0.1, dy = 0
    torch.testing.assert_close(inv.total_variation(ramp), torch.tensor([0.01]), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        inv.total_variation(ramp, beta=1.0), torch.tensor([0.1]), rtol=1e-4, atol=0
    )
    noise = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert (inv.total_variation(noise) > 0.05).all()
    assert (inv.total_variation(noise) > inv.total_variation(gaussian_blur(noise, 1.0))).all()
    torch.testing.assert_close(inv.relative_error(noise, noise), torch.zeros(2))
    torch.testing.assert_close(inv.relative_error(2 * noise, noise), torch.ones(2))
    both = torch.stack([noise[0], 2 * noise[1]])
    torch.testing.assert_close(inv.relative_error(both, noise), torch.tensor([0.0, 1.0]))


def test_decoders_and_their_training():
    torch.manual_seed(0)
    for shape, n in (((8, 8, 8), 2), ((8, 5, 5), 3), ((10,), 4)):
        d = inv.Decoder(shape, 28, 3, width=8)
        y = d(torch.randn(n, *shape))
        assert y.shape == (n, 3, 28, 28) and (y > 0).all() and (y < 1).all()

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    ).eval()
    model.requires_grad_(False)
    imgs = smooth_images(160, 16, seed=1)
    train, test = imgs[:128], imgs[128:]
    layers = {"conv2": "4", "fc": "6"}
    losses = {
        "pixel": inv.LossWeights(pixel=1),
        "perceptual": inv.LossWeights(pixel=1, feature=0.1, adversarial=0.01),
    }
    kw = dict(size=16, channels=3, lr=1e-2, width=8, seed=0, device="cpu")
    trained = inv.train_inverters(
        model, identity, lambda: train.split(16), layers, losses, epochs=3, **kw
    )
    fresh = inv.train_inverters(
        model, identity, lambda: train.split(16), layers, losses, epochs=0, **kw
    )
    assert set(trained) == {(n, loss) for n in layers for loss in losses}
    assert not any(d.training for d in trained.values())
    # epochs=0 gives the initial decoders: seeded, in (layer, loss) order
    torch.manual_seed(0)
    manual = inv.Decoder((8, 8, 8), 16, 3, 8)
    torch.testing.assert_close(manual.state_dict(), fresh["conv2", "pixel"].state_dict())
    with torch.no_grad():
        feats = dict(zip(layers, inv.features(model, test, list(layers.values())), strict=True))
        err = {
            key: {
                name: float(F.mse_loss(dec[key](feats[key[0]]), test))
                for name, dec in (("before", fresh), ("after", trained))
            }
            for key in trained
        }
    mean_image = float(F.mse_loss(train.mean(0, keepdim=True).expand_as(test), test))
    conv = err["conv2", "pixel"]
    assert conv["after"] < 0.9 * conv["before"] and conv["after"] < 0.9 * mean_image, err
    assert err["fc", "pixel"]["after"] < err["fc", "pixel"]["before"], err
    assert err["conv2", "perceptual"]["after"] < err["conv2", "perceptual"]["before"], err


# --- preprocessing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pre",
    [IMAGENET_RGB, Preprocessing(255.0, [104.0, 117.0, 123.0], [1.0, 1.0, 1.0], bgr=True)],
    ids=["imagenet_rgb", "caffe_bgr"],
)
def test_from_unit_equals_the_uint8_preprocessing(pre):
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    expected = pre(u)
    assert expected.shape == (2, 3, 5, 7)
    unit = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(pre.from_unit(unit), expected, rtol=1e-5, atol=1e-4)
    got64 = pre.from_unit(torch.from_numpy(u).permute(0, 3, 1, 2).double() / 255)
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, expected.double(), rtol=1e-5, atol=1e-4)
    if pre.bgr:  # channel 0 is blue, minus the blue mean
        blue = torch.from_numpy(u[..., 2]).double() - 104.0
        torch.testing.assert_close(got64[:, 0], blue, rtol=0, atol=1e-9)
    # differentiable: the gradient is value_range / std per channel (summed over pixels)
    x = unit.clone().requires_grad_(True)
    pre.from_unit(x).sum().backward()
    scale = torch.tensor(pre.value_range) / torch.tensor(pre.std)
    scale = scale.flip(0) if pre.bgr else scale
    torch.testing.assert_close(x.grad[0, :, 0, 0], scale.float())


def test_opentsne_gradient_is_a_quarter_of_the_papers():
    """Why `tsne` passes 4 * eta: openTSNE's gradient lacks the factor 4 of the paper's Eq. 5
    (dC/dy_i = 4 sum_j (p_ij - q_ij)(y_i - y_j)(1 + |y_i - y_j|^2)^-1)."""
    import scipy.sparse
    from openTSNE.tsne import kl_divergence_bh

    rng = np.random.default_rng(0)
    y = rng.normal(size=(12, 2))
    p = rng.random((12, 12))
    p = p + p.T
    np.fill_diagonal(p, 0)
    p /= p.sum()
    d = y[:, None] - y[None]
    w = 1 / (1 + (d**2).sum(-1))
    np.fill_diagonal(w, 0)
    q = w / w.sum()
    paper = 4 * (((p - q) * w)[..., None] * d).sum(1)
    _, grad = kl_divergence_bh(y, scipy.sparse.csr_matrix(p), dof=1, bh_params={"theta": 0.0})
    np.testing.assert_allclose(paper, 4 * grad, rtol=1e-6, atol=1e-9)


def test_the_unit_grid_of_an_fc_layer_is_one_mosaic(tmp_path):
    """fc7's 4,096 units as 4,096 matplotlib panels took minutes and 9 GB (found by the
    rehearsal); above `PANELS_AT_MOST` units the grid is one image, dead units greyed; the
    1000-class map gets a colour scale, not 1000 ticks."""
    from cvinterp.experiments import embedding as experiment
    from cvinterp.figures import read_contents

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    n = experiment.PANELS_AT_MOST + 44
    s = {
        "size": 32,
        "layer": "fc7",
        "units": [[(img, (0, 16, 0, 16))] * 4 for _ in range(n)],
        "dead": [u % 7 == 0 for u in range(n)],
    }
    experiment._unit_grid("net", s, 4, tmp_path / "units.png")
    got = read_contents(tmp_path / "units.png")
    assert got["panels"] == 1 and got["images"] == 1
    assert "dead units greyed" in got["titles"][0]
    s["units"], s["dead"] = s["units"][:20], s["dead"][:20]
    experiment._unit_grid("net", s, 4, tmp_path / "few.png")
    assert read_contents(tmp_path / "few.png")["panels"] == 20
    pts = rng.normal(size=(50, 2))
    maps = {"maps": {"t-SNE": pts, "PCA": pts}, "labels": np.arange(50) * 20, "layer": "fc7"}
    maps["classes"] = [f"class {i}" for i in range(1000)]
    metrics = {f"{k}_{m}": 0.5 for k in maps["maps"] for m in ("knn_accuracy", "trustworthiness")}
    experiment._scatter("net", maps, metrics, tmp_path / "map.png")
    assert read_contents(tmp_path / "map.png")["panels"] == 3


def test_inverters_train_one_layer_graph_at_a_time_with_the_joint_gradients(monkeypatch):
    """All layers' decoders in one graph held ~19 GB at AlexNet's four layers and batch 64 (the
    rehearsal): the network now sees one layer's reconstructions at a time, and one step equals
    (float64) a step on the joint loss of every decoder."""
    torch.set_default_dtype(torch.float64)
    try:
        _one_layer_graph_at_a_time(monkeypatch)
    finally:
        torch.set_default_dtype(torch.float32)


def _one_layer_graph_at_a_time(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).double()
    model.eval().requires_grad_(False)
    x = smooth_images(4, 8, seed=1).double()
    layers = {"conv": "1", "fc": "3"}
    losses = {"pixel": inv.LossWeights(pixel=1), "feat": inv.LossWeights(pixel=1, feature=0.5)}
    seen, real = [], inv.features

    def recording(net, images, paths):
        seen.append((len(images), list(paths)))
        return real(net, images, paths)

    monkeypatch.setattr(inv, "features", recording)
    kw = dict(size=8, channels=3, lr=1e-2, width=4, seed=0, device="cpu")
    fresh = inv.train_inverters(model, identity, lambda: [x], layers, losses, epochs=0, **kw)
    stepped = inv.train_inverters(model, identity, lambda: [x], layers, losses, epochs=1, **kw)
    grads = [(n, p) for n, p in seen if n > len(x)]
    assert grads == [] and sorted(p[0] for n, p in seen[-2:]) == ["1", "3"]  # one layer each
    # the joint loss of every decoder, one Adam step from the same start
    monkeypatch.setattr(inv, "features", real)
    joint = {k: copy.deepcopy(d).double().train() for k, d in fresh.items()}
    opt = torch.optim.Adam([p for d in joint.values() for p in d.parameters()], lr=1e-2)
    feats = dict(zip(layers, real(model, x, list(layers.values())), strict=True))
    total = 0.0
    for (n, loss), d in joint.items():
        r = d(feats[n])
        total = total + F.mse_loss(r, x)
        if losses[loss].feature:
            f = real(model, r, [layers[n]])[0]
            total = total + 0.5 * inv.relative_error(f, feats[n]).mean()
    total.backward()
    opt.step()
    for key, d in joint.items():
        torch.testing.assert_close(d.state_dict(), stepped[key].state_dict(), rtol=1e-5, atol=1e-6)
