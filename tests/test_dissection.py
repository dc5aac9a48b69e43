"""Network Dissection: quantile, IoU tally and both counting rules against direct computations."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvinterp.data.broden import BrodenDataset
from cvinterp.methods import dissection as nd

FIXTURES = Path(__file__).parent / "fixtures"
RELEASED = Path(__file__).resolve().parents[1] / "config" / "netdissect"


def _concepts(categories: list[str], category_of: list[int]) -> nd.Concepts:
    n = len(category_of)
    return nd.Concepts(
        list(range(1, n + 1)),
        [f"c{i}" for i in range(n)],
        categories,
        np.array(category_of),
        {},
    )


# --------------------------------------------------------------------------- quantile


def test_top_quantile_is_the_kth_largest_over_the_stream():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(50, 7, 5, 6, generator=g)
    q = nd.TopQuantile(50, 0.01)
    for chunk in acts.split(8):  # uneven batches
        q.update(chunk)
    k = math.ceil(0.01 * 50 * 5 * 6)
    per_unit = acts.permute(1, 0, 2, 3).reshape(7, -1)
    expected = per_unit.sort(1, descending=True).values[:, k - 1]
    assert torch.equal(q.thresholds(), expected)
    # the share of positions strictly above the threshold is below the quantile
    above = (per_unit > expected[:, None]).float().mean(1)
    assert (above < 0.01).all() and (above >= (k - 1) / per_unit.shape[1] - 1e-9).all()


def test_top_quantile_rejects_a_bad_quantile():
    with pytest.raises(ValueError, match="quantile"):
        nd.TopQuantile(10, 1.5)


# --------------------------------------------------------------------------- tally


def _naive_iou(acts, thresholds, planes, carried, category, n_concepts):
    """Per image, per unit, per concept: the authors' definition, unbatched (a concept counts
    once per plane it is in at a pixel; the activation area over the images carrying the
    concept's category)."""
    b, u = acts.shape[:2]
    size = planes.shape[-2:]
    inter = np.zeros((u, n_concepts), np.int64)
    act_area = np.zeros((u, carried.shape[1]), np.int64)
    truth = np.zeros(n_concepts, np.int64)
    for i in range(b):
        masks = {c: (planes[i] == c + 1).sum(0).numpy() for c in range(n_concepts)}
        for c in range(n_concepts):
            truth[c] += masks[c].sum()
        for k in range(u):
            m = F.interpolate(
                acts[i : i + 1, k : k + 1], size=tuple(size), mode="bilinear", align_corners=False
            )[0, 0]
            on = (m > thresholds[k]).numpy()
            act_area[k] += on.sum() * carried[i].numpy()
            for c in range(n_concepts):
                inter[k, c] += (on * masks[c]).sum()
    union = act_area[:, category] + truth - inter
    return inter, np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _random_case(seed=0, b=6, u=5, h=4, n_concepts=6, size=(9, 9)):
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(b, u, h, h, generator=g) ** 3
    planes = torch.randint(1, n_concepts + 1, (b, 3, *size), generator=g)
    planes[torch.rand(planes.shape, generator=g) < 0.5] = 0  # plenty of unlabelled pixels
    planes[:, 2] = planes[:, 2, :1, :1]  # a whole-image label plane
    for i in (1, 2):  # a concept at most once per pixel, as Concepts.planes guarantees
        planes[:, i][(planes[:, :i] == planes[:, i : i + 1]).any(1)] = 0
    carried = torch.rand(b, 3, generator=g) > 0.3
    thresholds = torch.quantile(acts.permute(1, 0, 2, 3).reshape(u, -1), 0.8, dim=1)
    category = np.array([0, 0, 1, 1, 2, 2])[:n_concepts]
    return acts, thresholds, planes, carried, category


@pytest.mark.parametrize("chunk", [1 << 25, 81, 1])  # one chunk, several, one map at a time
def test_tally_equals_the_unbatched_definition(chunk):
    acts, thr, planes, carried, category = _random_case()
    concepts = _concepts(["a", "b", "c"], list(category))
    tally = nd.Tally(acts.shape[1], concepts, "cpu", chunk=chunk)
    for s in (slice(0, 4), slice(4, 6)):
        tally.update(acts[s], thr, planes[s], carried[s])
    inter, iou = _naive_iou(acts, thr, planes, carried, category, len(category))
    assert np.array_equal(tally.intersection.view(acts.shape[1], -1).numpy(), inter)
    assert inter.sum() > 0
    np.testing.assert_allclose(tally.iou().numpy(), iou, rtol=0, atol=1e-12)


def test_tally_hand_computed_iou():
    """One unit whose map equals the mask grid (no interpolation): active on the left half of
    a 4x4 image; concept 0 covers the left three columns. I = 8, |M| = 8, |L| = 12, IoU = 8/12.
    A second image lacks the category: its activation does not count."""
    act = torch.zeros(2, 1, 4, 4)
    act[:, 0, :, :2] = 1.0
    planes = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    planes[0, 0, :, :3] = 1
    carried = torch.tensor([[True], [False]])
    tally = nd.Tally(1, _concepts(["object"], [0]), "cpu")
    tally.update(act, torch.tensor([0.5]), planes, carried)
    assert tally.iou().item() == pytest.approx(8 / 12)


def test_tally_skips_only_maps_that_cannot_pass():
    """A map whose peak is at the threshold has no active pixel after upsampling; one just above
    it has some: the peak shortcut is exact at the boundary."""
    act = torch.zeros(1, 2, 3, 3)
    act[0, 0, 1, 1] = 1.0  # peak == threshold: nothing active
    act[0, 1, 1, 1] = 1.0 + 1e-3
    planes = torch.ones(1, 1, 9, 9, dtype=torch.int64)
    tally = nd.Tally(2, _concepts(["x"], [0]), "cpu")
    tally.update(act, torch.tensor([1.0, 1.0]), planes, torch.tensor([[True]]))
    inter = tally.intersection.view(2, 1)
    assert inter[0, 0] == 0 and inter[1, 0] > 0


def test_tally_equals_the_definition_on_flat_maps_at_the_threshold():
    """Upsampling a flat map can round a few pixels above its value: maps whose peak sits on
    the threshold must still be upsampled, as the unbatched definition does."""
    g = torch.Generator().manual_seed(1)
    thr = torch.tensor([3.573796033859253, 3.7296524047851562, 1.9888349771499634, 1.0, 2.5, 0.7])
    acts = thr.view(1, -1, 1, 1).expand(2, 6, 13, 13).clone()  # every map flat at its T
    planes = torch.randint(0, 3, (2, 1, 113, 113), generator=g)
    carried = torch.ones(2, 1, dtype=torch.bool)
    tally = nd.Tally(6, _concepts(["x"], [0, 0]), "cpu")
    tally.update(acts, thr, planes, carried)
    inter, _ = _naive_iou(acts, thr, planes, carried, np.array([0, 0]), 2)
    assert np.array_equal(tally.intersection.view(6, 2).numpy(), inter)


# --------------------------------------------------------------------------- counting rules


def _labels(iou: np.ndarray, category: list[int], categories: list[str]):
    concepts = _concepts(categories, category)
    return nd.label_units(iou, concepts), concepts


def test_both_counting_rules_on_a_hand_made_case():
    # concepts: A, B (color), C (object); units: 0 -> A best, C passes in object;
    # 1 -> A best; 2 -> C best, B passes in color
    iou = np.array([[0.10, 0.00, 0.05], [0.08, 0.02, 0.03], [0.00, 0.05, 0.06], [0.01, 0, 0]])
    labels, concepts = _labels(iou, [0, 0, 1], ["color", "object"])
    counts = nd.count_detectors(labels, concepts, 0.04)
    assert counts["top_label"] == {
        "units": 3, "unique": 2, "by_category": {"color": 1, "object": 1}
    }  # fmt: skip
    assert counts["per_category"] == {
        "units": 3, "unique": 3, "by_category": {"color": 2, "object": 1}
    }  # fmt: skip
    assert list(labels.best) == [0, 0, 2, 0]
    assert labels.per_category[1].tolist() == [0, 2]


def test_counting_rules_reproduce_the_released_caffenet_numbers():
    """From the authors' per-unit file: 97 detector units, 50 unique top labels, 61 unique
    detectors by the per-category rule (the paper's figure)."""
    with open(RELEASED / "caffenet_imagenet_conv5.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cats = ["object", "color", "material", "scene", "texture", "part"]
    names = sorted({r["label"] for r in rows} | {r[f"{c}-label"] for r in rows for c in cats})
    category = {r["label"]: cats.index(r["category"]) for r in rows}
    category |= {r[f"{c}-label"]: cats.index(c) for r in rows for c in cats}
    concepts = nd.Concepts(
        list(range(len(names))), names, cats, np.array([category[n] for n in names]), {}
    )
    index = {n: i for i, n in enumerate(names)}
    labels = nd.UnitLabels(
        np.array([index[r["label"]] for r in rows]),
        np.array([float(r["score"]) for r in rows]),
        np.array([[index[r[f"{c}-label"]] for c in cats] for r in rows]),
        np.array([[float(r[f"{c}-iou"]) for c in cats] for r in rows]),
    )
    counts = nd.count_detectors(labels, concepts, 0.04)
    assert counts["top_label"]["units"] == 97
    assert counts["top_label"]["unique"] == 50
    assert counts["per_category"]["unique"] == 61


# --------------------------------------------------------------------------- the Broden reader


@pytest.fixture
def broden_root(tmp_path):
    spec = importlib.util.spec_from_file_location("make_broden", FIXTURES / "make_broden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_fixture(tmp_path / "broden", rng_seed=0)


def test_concepts_count_a_label_in_every_category_once_per_plane(broden_root):
    """As the authors' tally: label numbers are global, so grass (object(1);texture(3) in
    label.csv, equal coverage: the later category, texture) counts in the object mask and in
    the texture mask; it competes in texture."""
    ds = BrodenDataset(broden_root)
    c = nd.Concepts.of(ds)
    grass = c.names.index("grass")
    assert c.categories[c.category[grass]] == "texture"
    planes, carried = c.planes(ds.item(1, image=False))
    # img1: object mask left = grass (4), right = lamp (300); texture left = grass, right =
    # striped; whole-image scenes street and kitchen
    lamp, striped = c.names.index("lamp"), c.names.index("striped")
    street, kitchen = c.names.index("street"), c.names.index("kitchen")
    present = {int(v) - 1 for v in np.unique(planes) if v}
    assert present == {c.names.index("red"), grass, lamp, striped, street, kitchen}
    assert (planes == grass + 1).sum() == 64  # the left half of two planes: object and texture
    assert ((planes == street + 1).sum(axis=(1, 2)) == 64).sum() == 1  # a whole-image plane
    assert carried.tolist() == [c.categories.index(k) in (0, 1, 2, 3) for k in c.categories]
    _, carried2 = c.planes(ds.item(2, image=False))  # scene + texture labels only
    assert [c.categories[i] for i in np.flatnonzero(carried2)] == ["scene", "texture"]


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def _pre(images):
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.array(images))
    return x.permute(0, 3, 1, 2).float() / 255


def _naive_dissect(model, ds, concepts, size, path, quantile, batch):
    """All activations held at once, then per image and unit: the reference for `dissect`.
    (The net runs in batches of the same size, so that its float sums are the same.)"""
    items = nd.ProbeItems(ds, concepts, size)
    loaded = [items[i] for i in range(len(ds))]
    planes = [torch.from_numpy(p) for _, p, _ in loaded]
    carried = [torch.from_numpy(k) for _, _, k in loaded]
    out = []
    hook = dict(model.named_modules())[path].register_forward_hook(lambda m, a, o: out.append(o))
    with torch.no_grad():
        for s in range(0, len(ds), batch):
            model(_pre(np.stack([im for im, _, _ in loaded[s : s + batch]])))
    hook.remove()
    acts = torch.cat(out).clamp(min=0)  # conv2 has no ReLU of its own: dissect rectifies
    n, u = acts.shape[:2]
    flat = acts.permute(1, 0, 2, 3).reshape(u, -1)
    k = math.ceil(quantile * flat.shape[1])
    thr = flat.sort(1, descending=True).values[:, k - 1]
    depth = max(len(p) for p in planes)
    stacked = torch.zeros(n, depth, *planes[0].shape[1:], dtype=torch.int64)
    for i, p in enumerate(planes):
        stacked[i, : len(p)] = p
    _, iou = _naive_iou(acts, thr, stacked, torch.stack(carried), concepts.category, len(concepts))
    return thr.numpy(), iou


# the activations kept between passes; the decoded probe only; nothing
@pytest.mark.parametrize("cache_mb", [1024, 0.005, 0])
def test_dissect_equals_the_naive_computation(broden_root, cache_mb):
    torch.manual_seed(0)
    model = _TinyNet().eval()
    ds = BrodenDataset(broden_root)
    concepts = nd.Concepts.of(ds)
    res, seconds = nd.dissect_layers(
        model,
        _pre,
        ["conv2"],
        ds,
        size=16,
        device="cpu",
        quantile=0.05,
        batch_size=3,
        workers=0,
        top_k=2,
        cache_mb=cache_mb,
    )
    thr, iou = _naive_dissect(model, ds, concepts, 16, "conv2", 0.05, batch=3)
    np.testing.assert_array_equal(res["conv2"].thresholds, thr)
    np.testing.assert_allclose(res["conv2"].iou, iou, rtol=0, atol=1e-12)
    assert iou.max() > 0
    assert set(seconds) >= {"decode", "forward", "quantile", "tally"}
    assert res["conv2"].top_images.shape == (2, 3)


def _counting(ds):
    """Count the images and the label masks a dissection reads from `ds` (workers=0)."""
    reads = {"images": [], "masks": []}
    open_image, item = ds.open_image, ds.item

    def counted_open(index):
        reads["images"].append(index)
        return open_image(index)

    def counted_item(index, image=True):
        reads["masks"].append(index)
        return item(index, image=image)

    ds.open_image, ds.item = counted_open, counted_item
    return reads


def _wide():
    """Maps that take far more memory than the images (16 units at the input's size)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()).eval()


# 4 images: 3 kB of 16x16 images and 2 kB of 8x8 labels fit; 64 kB of activations do not
FITS_THE_PROBE = 0.02


def test_the_probe_is_decoded_once_where_it_fits(broden_root):
    """Broden's activations never fit (76-330 GB), its decoded images do (9.5 GB): the
    second pass recomputes the activations from the images in memory, and no image or mask is
    read twice, in one dissection or in several sharing a feed."""
    torch.manual_seed(0)
    ds = BrodenDataset(broden_root)
    reads = _counting(ds)
    kw = dict(size=16, device="cpu", quantile=0.05, batch_size=3, workers=0)
    nd.dissect_layers(_wide(), _pre, ["0"], ds, cache_mb=FITS_THE_PROBE, **kw)
    assert sorted(reads["images"]) == [0, 1, 2, 3]
    assert sorted(reads["masks"]) == [0, 1, 2, 3]
    reads["images"].clear(), reads["masks"].clear()
    feed = nd.ProbeFeed(
        ds, nd.Concepts.of(ds), 16, batch_size=3, device="cpu", cache_mb=FITS_THE_PROBE
    )
    for seed in range(3):  # a trained net and random copies: the experiment's dissections
        torch.manual_seed(seed)
        nd.dissect_layers(_wide(), _pre, ["0"], ds, cache_mb=FITS_THE_PROBE, feed=feed, **kw)
    assert sorted(reads["images"]) == [0, 1, 2, 3]
    assert sorted(reads["masks"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="make it for this dissection"):
        nd.dissect_layers(_wide(), _pre, ["0"], ds, feed=feed, **{**kw, "batch_size": 2})


@pytest.mark.parametrize("workers", [0, 2])
def test_kept_probe_data_leave_every_result_unchanged(broden_root, workers):
    """Decoded images and masks kept between passes and dissections (and a persistent pool of
    workers reading different things in each pass) give the results of reading them afresh."""
    ds = BrodenDataset(broden_root)
    kw = dict(size=16, device="cpu", quantile=0.05, batch_size=3, top_k=2)
    feed = nd.ProbeFeed(
        ds,
        nd.Concepts.of(ds),
        16,
        batch_size=3,
        device="cpu",
        workers=workers,
        cache_mb=FITS_THE_PROBE if workers == 0 else 0,
    )
    for seed in range(2):
        torch.manual_seed(seed)
        model = _wide()
        fresh, _ = nd.dissect_layers(model, _pre, ["0"], ds, workers=0, cache_mb=0, **kw)
        kept, _ = nd.dissect_layers(
            model, _pre, ["0"], ds, workers=workers, cache_mb=FITS_THE_PROBE, feed=feed, **kw
        )
        a, b = fresh["0"], kept["0"]
        np.testing.assert_array_equal(a.thresholds, b.thresholds)
        np.testing.assert_array_equal(a.iou, b.iou)
        np.testing.assert_array_equal(a.labels.best, b.labels.best)
        np.testing.assert_array_equal(a.labels.per_category, b.labels.per_category)
        np.testing.assert_array_equal(a.top_images, b.top_images)
        assert a.iou.max() > 0


def test_dissect_reads_maps_after_the_relu(broden_root):
    """A conv module's output is dissected as if its ReLU had run (the authors' Caffe blobs are
    rectified in place): the same as recording the ReLU itself, and not the raw output."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 4, stride=4))  # 16 px -> 4x4 maps, 8x8 masks
    model.add_module("relu", nn.ReLU())
    with torch.no_grad():
        model.conv.bias.fill_(-0.3)  # plenty of negative values next to positive ones
    ds = BrodenDataset(broden_root)
    kw = dict(size=16, device="cpu", quantile=0.2, batch_size=2, workers=0)
    conv, _ = nd.dissect_layers(model, _pre, ["conv"], ds, **kw)
    relu, _ = nd.dissect_layers(model, _pre, ["relu"], ds, rectify=False, **kw)
    raw, _ = nd.dissect_layers(model, _pre, ["conv"], ds, rectify=False, **kw)
    np.testing.assert_array_equal(conv["conv"].iou, relu["relu"].iou)
    assert not np.array_equal(raw["conv"].iou, conv["conv"].iou)


def test_dissect_layers_upsamples_at_the_receptive_field_centres_of_the_model(broden_root):
    """The original's upsampling derives the fieldmap from the model's own layers; Lite's is
    bilinear. Both score the same tally otherwise."""
    from cvinterp.fieldmap import fieldmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4, padding=1), nn.ReLU()).eval()
    ds = BrodenDataset(broden_root)
    kw = dict(size=16, device="cpu", quantile=0.2, batch_size=2, workers=0)
    orig, _ = nd.dissect_layers(model, _pre, ["0"], ds, **kw)
    lite, _ = nd.dissect_layers(model, _pre, ["0"], ds, scoring="lite", **kw)
    assert orig["0"].fieldmap == fieldmap(model, "0", (3, 16, 16)) == ((-1, -1), (5, 5), (4, 4))
    assert lite["0"].fieldmap is None
    assert not np.array_equal(orig["0"].iou, lite["0"].iou)


def test_best_concept_ties_go_to_the_later_category():
    """makeresult.py takes the last category among equal best IoUs (argsort, reversed)."""
    iou = np.array([[0.05, 0.05, 0.01], [0.0, 0.0, 0.0]])
    labels, _ = _labels(iou, [0, 1, 1], ["color", "object"])
    assert labels.best.tolist() == [1, 1]  # unit 1: nothing anywhere, the last category's first


def test_rotations_of_the_identity_and_a_permutation_change_no_count(broden_root):
    """A rotated basis is dissected like a layer: Q = I gives the layer's result, a permutation
    of the units the same detectors in another order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 4, stride=4), nn.ReLU()).eval()
    ds = BrodenDataset(broden_root)
    perm = torch.eye(6)[[3, 0, 5, 1, 2, 4]]
    res, _ = nd.dissect_layers(
        model,
        _pre,
        ["0"],
        ds,
        size=16,
        device="cpu",
        quantile=0.2,
        batch_size=2,
        workers=0,
        upsample="bilinear",
        rotations={"same": ("0", torch.eye(6)), "permuted": ("0", perm)},
    )
    np.testing.assert_array_equal(res["same"].iou, res["0"].iou)
    np.testing.assert_array_equal(res["permuted"].iou, res["0"].iou[[3, 0, 5, 1, 2, 4]])
    with pytest.raises(ValueError, match="rotate one of"):
        nd.dissect_layers(
            model, _pre, ["0"], ds, size=16, device="cpu", rotations={"x": ("1", perm)}
        )


def test_rotation_powers_run_along_the_geodesic_from_identity_to_q():
    q = nd.random_rotation(8, seed=3)
    assert np.allclose(q @ q.T, np.eye(8)) and np.isclose(np.linalg.det(q), 1.0)
    assert np.allclose(nd.rotation_power(q, 1.0), q, atol=1e-10)
    assert np.allclose(nd.rotation_power(q, 0.0), np.eye(8), atol=1e-10)
    half = nd.rotation_power(q, 0.5)
    assert np.allclose(half @ half, q, atol=1e-10) and np.allclose(half @ half.T, np.eye(8))
    assert np.array_equal(nd.random_rotation(8, seed=3), q)  # seeded
    odd = nd.random_rotation(7, seed=1)  # odd n: one eigenvalue 1, held fixed
    assert np.allclose(nd.rotation_power(odd, 1.0), odd, atol=1e-10)


def test_iou_by_label_refuses_activations_of_the_wrong_shape(broden_root):
    acts = np.zeros((3, 2, 4, 4), np.float32)  # the fixture has 4 images
    with pytest.raises(ValueError, match=r"N = 4, the rows of .*index\.csv"):
        nd.iou_by_label(acts, broden_root, np.zeros(2))
    with pytest.raises(ValueError, match="3 thresholds for 2 units"):
        nd.iou_by_label(np.zeros((4, 2, 4, 4), np.float32), broden_root, np.zeros(3))


# --------------------------------------------------------------------------- headline claims
# Constructed results (per-unit detections, as `compute` keeps them) on which each claim must
# pass, fail and be inconclusive under its rule in config/claims/bau2017.yaml.

CATS = ["color", "texture", "material", "part", "object", "scene"]


def _units(units: int, **by_category: int) -> np.ndarray:
    """(units, K) detections: per category, that many units each detecting a concept of its
    own (concept ids distinct across categories); the other units detect nothing."""
    a = np.full((units, len(CATS)), -1)
    row = 0
    for cat, n in by_category.items():
        j = CATS.index(cat)
        a[row : row + n, j] = 1000 * j + np.arange(n)
        row += n
    return a


def _result(nets: dict, probe: str = "standin", same_units: dict | None = None):
    """A fake dissection result: per model, `layers` {layer: detections} (the last the
    deepest), and optionally `random` [detections], `rotated` (alpha 1), `init` (step 0) and
    `released` {layer: released count}."""
    from cvinterp.experiments.common import Computed

    metrics = {"probe": probe, "models": {}}
    data = {"layers": {}, "detected": {}, "seed": 0, "same_units": same_units or {}}
    for name, net in nets.items():
        layers = list(net["layers"])
        deepest = layers[-1]
        det = {"categories": CATS, "trained": net["layers"], "alpha": {}, "step": {}}
        det["random"] = {str(i): a for i, a in enumerate(net.get("random", []))}
        out = {"layers": {la: {} for la in layers}}
        if "rotated" in net:
            det["alpha"] = {"0": net["layers"][deepest], "1": net["rotated"]}
            out["rotations"] = {"layer": deepest}
        if "init" in net:
            det["step"] = {"0": net["init"]}
            out["snapshots"] = {"layer": deepest, "end_step": 1000}
        for la, count in net.get("released", {}).items():
            out["layers"][la]["released"] = {
                "network": "released net",
                "per_category_unique": {"ours": None, "released": count},
            }
        metrics["models"][name] = out
        data["layers"][name] = layers
        data["detected"][name] = det
    return Computed(metrics, data)


def _verdicts(result, *ids: str) -> dict[str, str]:
    from cvinterp.experiments import dissection as experiment
    from tests.conftest import claim_verdict

    claims = experiment.claims(result)
    return {i: claim_verdict(i, claims[i], "dissection") for i in ids}


def _net(trained: int, randoms: list[int], units: int = 256) -> dict:
    return {
        "layers": {"conv5": _units(units, object=trained)},
        "random": [_units(units, texture=r) for r in randoms],
        "init": _units(units, texture=randoms[0]),
    }


def test_per_unit_detections_count_as_the_per_category_rule():
    from cvinterp.experiments import dissection as experiment

    concepts = _concepts(["a", "b", "c"], [0, 0, 1, 1, 1, 2, 2])
    iou = np.random.default_rng(0).uniform(0, 0.1, (40, 7))
    labels = nd.label_units(iou, concepts)
    counts = nd.count_detectors(labels, concepts, 0.04)["per_category"]["by_category"]
    det = experiment._detected(labels, 0.04)
    by_cat = experiment._category_counts(det, np.ones((1, 40)))[0]
    assert dict(zip(concepts.categories, by_cat.tolist(), strict=True)) == counts


def test_unit_bootstrap_is_centred_on_the_count_and_seeded():
    from cvinterp.experiments import dissection as experiment

    count, resampled = experiment._unique(_units(256, object=61), 0, "x")
    assert count == 61 and resampled.mean() < 45  # repeated units lose distinct concepts
    lo, hi = experiment._interval(count, resampled)
    assert 50 < lo < 61 < hi < 72  # the spread, centred on the observed count
    assert np.array_equal(resampled, experiment._unique(_units(256, object=61), 0, "x")[1])
    assert experiment._interval(0, experiment._unique(_units(8), 0, "y")[1]) == (0.0, 0.0)


def test_trained_more_detectors_needs_twice_the_random_copies_reach():
    """8 trained vs 7 random passed the old `gt 0`-like rule: against the random copies'
    intervals it fails. The paper's 61 vs 2 passes; 10 vs about 1 straddles twice the floor."""
    ids = ("trained_more_detectors", "detectors_rise_with_training")
    assert set(_verdicts(_result({"net": _net(61, [2, 1, 2])}), *ids).values()) == {"pass"}
    assert set(_verdicts(_result({"net": _net(8, [7, 5, 6])}), *ids).values()) == {"fail"}
    assert set(_verdicts(_result({"net": _net(3, [0, 1, 0])}), *ids).values()) == {"fail"}
    middle = _verdicts(_result({"net": _net(10, [1, 1, 1])}), *ids)
    assert set(middle.values()) == {"inconclusive"}
    # the weakest model decides
    both = _result({"a": _net(61, [2, 1, 2]), "b": _net(8, [7, 5, 6])})
    assert set(_verdicts(both, *ids).values()) == {"fail"}
    from cvinterp.experiments import dissection as experiment

    entry = experiment.claims(both)["trained_more_detectors"]
    a = entry["parts"]["a"]
    assert a["interval"][0] < a["value"] < a["interval"][1] and a["null_interval"][1] <= 1
    assert "3 random initialisations" in entry["conditions"]


def test_rotation_claim_against_the_resampling_null():
    def net(unrotated, rotated):
        return {
            "layers": {"conv5": _units(128, object=unrotated)},
            "rotated": _units(128, object=rotated),
        }

    def verdict(nets):
        return _verdicts(_result(nets), "rotation_destroys_detectors")[
            "rotation_destroys_detectors"
        ]

    assert verdict({"n": net(40, 4)}) == "pass"
    assert verdict({"n": net(40, 40)}) == "fail"
    assert verdict({"n": net(40, 20)}) == "inconclusive"
    assert verdict({"n": net(40, 4), "m": net(40, 40)}) == "fail"  # the weakest model
    # a handful of unrotated detectors is left out, and named
    from cvinterp.experiments import dissection as experiment

    entry = experiment.claims(_result({"n": net(40, 4), "few": net(8, 1)}))
    assert "few" in entry["rotation_destroys_detectors"]["left_out"]
    assert verdict({"few": net(8, 1)}) == "n/a"


def _depth_net(low: dict, high: dict, units: int = 128) -> dict:
    return {"layers": {"conv1": _units(units, **low), "conv5": _units(units, **high)}}


def test_high_level_share_rises_with_depth_against_permuted_units():
    def verdict(nets):
        return _verdicts(_result(nets), "high_level_rises_with_depth")[
            "high_level_rises_with_depth"
        ]

    rising = _depth_net({"color": 30, "object": 2}, {"color": 2, "object": 30})
    falling = _depth_net({"color": 2, "object": 30}, {"color": 30, "object": 2})
    flat = _depth_net({"color": 10, "object": 5}, {"color": 9, "object": 6})
    assert verdict({"n": rising}) == "pass"
    assert verdict({"n": falling}) == "fail"
    assert verdict({"n": flat}) == "inconclusive"
    assert verdict({"n": rising, "m": flat}) == "inconclusive"  # the weakest model


def test_a_layer_without_detectors_is_left_out_and_named_not_dropped():
    """The old claim dropped such a model silently; now it is named with the reason (and a
    model with one dissected layer too), and the other models decide."""
    from cvinterp.experiments import dissection as experiment

    rising = _depth_net({"color": 30, "object": 2}, {"color": 2, "object": 30})
    empty = _depth_net({"color": 30}, {})
    one = {"layers": {"fire9": _units(64, object=10)}}
    result = _result({"n": rising, "empty": empty, "one": one})
    entry = experiment.claims(result)["high_level_rises_with_depth"]
    assert set(entry["parts"]) == {"n"}
    assert "conv5 has no unique detector" in entry["left_out"]["empty"]
    assert "one dissected layer" in entry["left_out"]["one"]
    assert _verdicts(result, "high_level_rises_with_depth") == {
        "high_level_rises_with_depth": "pass"
    }
    alone = experiment.claims(_result({"empty": empty}))["high_level_rises_with_depth"]
    assert "no unique detector" in alone["na"]


def test_released_unique_detectors_band_and_weakest_layer():
    def verdict(*ours):
        layers = {f"l{i}": _units(256, object=o) for i, o in enumerate(ours)}
        net = {"layers": layers, "released": {la: 61 for la in layers}}
        result = _result({"alexnet": net}, probe="broden")
        return _verdicts(result, "released_unique_detectors")["released_unique_detectors"]

    assert verdict(60) == "pass"
    assert verdict(20) == "fail"
    assert verdict(31) == "inconclusive"
    assert verdict(60, 20) == "fail"  # the layer furthest from the band decides
    assert _verdicts(_result({"n": _net(8, [1])}), "released_unique_detectors") == {
        "released_unique_detectors": "n/a"
    }


def _same_units(agree: int, detectors: int = 97, units: int = 256) -> dict:
    names = [f"label{i % 40}" for i in range(units)]
    theirs = {u: names[u] if u < agree else f"other{u % 7}" for u in range(detectors)}
    return {"alexnet conv5": {"ours": names, "theirs": theirs}}


def test_released_unit_labels_where_the_released_units_are_dissected():
    """Never evaluated before: a constructed dissection of the released net's units (probe
    Broden, same_weights) passes, fails and is inconclusive by its rule."""
    from cvinterp.experiments import dissection as experiment

    def verdict(agree):
        result = _result({"alexnet": _net(61, [2])}, "broden", _same_units(agree))
        return _verdicts(result, "released_unit_labels")["released_unit_labels"]

    assert verdict(90) == "pass"
    assert verdict(20) == "fail"
    assert verdict(48) == "inconclusive"
    entry = experiment.claims(_result({"alexnet": _net(61, [2])}, "broden", _same_units(90)))
    est = entry["released_unit_labels"]["parts"]["alexnet conv5"]
    assert est["value"] == pytest.approx(90 / 97) and est["null"] < 0.1
    # elsewhere n/a, naming what can measure it
    for probe in ("standin", "broden"):
        na = experiment.claims(_result({"n": _net(8, [1])}, probe))["released_unit_labels"]["na"]
        assert "same_weights" in na and "paper profile" in na


def test_the_released_units_are_kept_where_the_released_weights_are_dissected():
    """`compute` keeps, for a reference with same_weights, our label of every unit and the
    released label of each of the 97 released CaffeNet conv5 detector units: a dissection that
    gives every unit its released label passes; without same_weights nothing is kept."""
    import yaml

    from cvinterp.experiments import dissection as experiment

    doc = yaml.safe_load((RELEASED / "released.yaml").read_text())
    with open(RELEASED / "caffenet_imagenet_conv5.csv", newline="") as fh:
        released = {int(r["unit"]): r["label"] for r in csv.DictReader(fh)}
    names = sorted(set(released.values()))
    concepts = nd.Concepts(
        list(range(1, len(names) + 1)), names, ["object"], np.zeros(len(names), np.int64), {}
    )
    best = np.array([names.index(released[u + 1]) for u in range(256)])
    labels = nd.UnitLabels(best, np.ones(256), best[:, None], np.ones((256, 1)))
    res = nd.LayerDissection(np.zeros(256), np.zeros((256, len(names))), labels, np.zeros((1, 256)))
    ref = {"trained": "caffenet_imagenet_conv5", "same_weights": True}
    theirs = experiment._released_labels(RELEASED, doc[ref["trained"]])
    units = experiment._released_units(res, concepts, ref, theirs, 0.04)
    assert len(units["ours"]) == 256 and len(units["theirs"]) == 97
    counts = {"trained": {r: {"unique": 61} for r in ("per_category", "top_label")}}
    against = experiment._against_released(counts, res, concepts, ref, doc, theirs, units, 0.04)
    assert against["unit_label_agreement"] == 1.0  # the metrics' summary of the same units
    result = _result({"alexnet": _net(61, [2])}, "broden", {"alexnet conv5": units})
    est = experiment.claims(result)["released_unit_labels"]["parts"]["alexnet conv5"]
    assert est["value"] == 1.0
    assert _verdicts(result, "released_unit_labels") == {"released_unit_labels": "pass"}
    ref["same_weights"] = False
    assert experiment._released_units(res, concepts, ref, theirs, 0.04) is None
