"""The unit-level methods: streaming top-k, receptive fields, back-projection, the Gini
sharpness measure, occlusion and the cascading-randomisation sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import alexnet

from cvinterp.instrument import Instrument, has_hooks
from cvinterp.methods.backward import gini, magnitude, project
from cvinterp.methods.occlusion import object_vs_background, occlusion, positions
from cvinterp.methods.sanity import cascading_randomisation, rank_similarity
from cvinterp.methods.top_images import Field, StreamingTopK, receptive_field, top_activations

# --- top-k ----------------------------------------------------------------------------------


def direct_top_k(acts: torch.Tensor, k: int):
    """Per unit the k images with the largest spatial maximum, with its flat location."""
    n, c = acts.shape[:2]
    best, where = acts.reshape(n, c, -1).max(2)  # (N, C)
    top = best.topk(min(k, n), dim=0)
    return top.values, top.indices, where.gather(0, top.indices)


def test_top_activations_in_batches_equal_a_direct_computation():
    torch.manual_seed(0)
    acts = torch.randn(23, 5, 4, 3)
    model = nn.Sequential(nn.Identity())
    progress = type("P", (), {"n": 0, "update": lambda self, m: setattr(self, "n", self.n + m)})()
    batches = [acts[:7], acts[7:14], acts[14:21], acts[21:]]
    tops = top_activations(model, batches, ["0"], k=4, progress=progress)
    values, index, location = direct_top_k(acts, 4)
    got = tops["0"]
    assert got.shape == (4, 3) and progress.n == 23
    torch.testing.assert_close(got.values, values, rtol=0, atol=0)
    torch.testing.assert_close(got.index, index, rtol=0, atol=0)
    torch.testing.assert_close(got.location, location, rtol=0, atol=0)
    # each entry points at that image's maximum of that unit
    for j in range(4):
        for u in range(5):
            i, loc = got.index[j, u], got.location[j, u]
            assert acts[i, u].flatten()[loc] == got.values[j, u] == acts[i, u].max()
    assert not has_hooks(model)


def test_top_activations_of_a_conv_layer_and_several_layers_at_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 6))
    x = torch.randn(17, 3, 8, 8)
    tops = top_activations(model, x.split(5), ["0", "3"], k=3)
    with torch.no_grad():  # in the same batches: a linear layer's sums depend on the batch size
        conv = torch.cat([model[0](b) for b in x.split(5)])
        logits = torch.cat([model(b) for b in x.split(5)])
    for got, acts, shape in ((tops["0"], conv, (6, 6)), (tops["3"], logits, (1, 1))):
        values, index, location = direct_top_k(acts.reshape(17, acts.shape[1], -1), 3)
        assert got.shape == shape
        torch.testing.assert_close(got.values, values, rtol=0, atol=0)
        torch.testing.assert_close(got.index, index, rtol=0, atol=0)
        torch.testing.assert_close(got.location, location, rtol=0, atol=0)
    assert (tops["3"].location == 0).all()


def test_streaming_top_k_with_fewer_images_than_k():
    torch.manual_seed(0)
    acts = torch.randn(3, 2, 2, 2)
    t = StreamingTopK(5)
    t.update(acts[:2], 0)
    t.update(acts[2:], 2)
    values, index, location = direct_top_k(acts, 5)
    res = t.result()
    assert res.values.shape == (3, 2)
    torch.testing.assert_close(res.index, index, rtol=0, atol=0)
    torch.testing.assert_close(res.values, values, rtol=0, atol=0)
    torch.testing.assert_close(res.location, location, rtol=0, atol=0)


def test_streaming_top_k_ties_go_to_the_earlier_image():
    t = StreamingTopK(3)
    acts = torch.zeros(40, 2, 3, 3)  # e.g. a dead ReLU unit: every image's maximum is 0
    for start in range(0, 40, 7):
        t.update(acts[start : start + 7], start)
    assert t.index[:, 0].tolist() == [0, 1, 2]


# --- receptive fields -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(0)
    return alexnet(weights=None).eval()


def test_receptive_field_of_alexnet(alex):
    conv1 = receptive_field(alex, "features.0", 3)
    assert conv1 == Field((11, 11), (4, 4), (-2, -2))
    conv5 = receptive_field(alex, "features.10", 3, probe=224)
    assert conv5.size == (163, 163) and conv5.stride == (16, 16)
    assert conv5.offset == (-66, -66)  # conv1 pad 2, conv2 pad 2 x 8, conv3-5 pad 1 x 16
    assert receptive_field(alex, "features.11", 3, probe=224) == conv5  # ReLU: same field
    with pytest.raises(ValueError, match="raise"):
        receptive_field(alex, "features.10", 3)  # 163 px does not fit a 96 px probe
    assert receptive_field(alex, "classifier.1", 3, probe=224) == Field((0, 0), (0, 0), (0, 0))
    assert not has_hooks(alex)


def analytic_fields(layers):
    """(size, stride, offset) after each layer: rf += (k-1)*d*j, offset -= p*j, j *= s."""
    rf, j, off, out = 1, 1, 0, []
    for k, s, p, d in layers:
        rf, off, j = rf + (k - 1) * d * j, off - p * j, j * s
        out.append((rf, j, off))
    return out


def test_receptive_field_of_a_known_stack():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 5, padding=2),  # 0
        nn.ReLU(),  # 1
        nn.MaxPool2d(2),  # 2
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 3
        nn.ReLU(),  # 4
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),  # 5
        nn.MaxPool2d(3, stride=2, padding=1),  # 6
        nn.Conv2d(4, 2, 1),  # 7
        nn.Conv2d(2, 2, (3, 5), stride=(1, 2), padding=(0, 1)),  # 8: anisotropic
    )
    geometry = [(5, 1, 2, 1), (2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 2, 2), (3, 2, 1, 1), (1, 1, 0, 1)]
    expected = dict(zip(["0", "2", "3", "5", "6", "7"], analytic_fields(geometry), strict=True))
    assert expected["7"] == (34, 8, -16)
    for path, (size, stride, offset) in expected.items():
        field = receptive_field(model, path, 3)
        assert field == Field((size, size), (stride, stride), (offset, offset)), path
    assert receptive_field(model, "1", 3) == receptive_field(model, "0", 3)
    (ry,), (rx,) = analytic_fields([(3, 1, 0, 1)]), analytic_fields([(5, 2, 1, 1)])
    field = receptive_field(model, "8", 3, probe=160)
    assert field.size == (34 + (ry[0] - 1) * 8, 34 + (rx[0] - 1) * 8)
    assert field.stride == (8, 16) and field.offset == (-16, -16 - 8)


def test_field_boxes_clip_to_the_image():
    boxes = Field((11, 11), (4, 4), (-2, -2)).boxes((3, 3), (12, 12))
    ys = [(0, 9), (2, 12), (6, 12)]  # unclipped: (-2, 9), (2, 13), (6, 17)
    expected = [(*ys[i], *ys[j]) for i in range(3) for j in range(3)]  # flat (row-major) order
    np.testing.assert_array_equal(boxes, np.array(expected))
    boxes = Field((5, 3), (2, 1), (1, 0)).boxes((2, 2), (20, 30))
    np.testing.assert_array_equal(boxes, [[1, 6, 0, 3], [1, 6, 1, 4], [3, 8, 0, 3], [3, 8, 1, 4]])
    whole = Field((0, 0), (0, 0), (0, 0)).boxes((1, 1), (7, 9))
    np.testing.assert_array_equal(whole, [[0, 7, 0, 9]])


# --- back-projection ------------------------------------------------------------------------


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
    ).eval()


@pytest.mark.parametrize("rule", ["deconvnet", "guided_backprop", "backprop"])
def test_projection_of_a_location_stays_in_its_receptive_field(rule):
    model = small_cnn()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 16, 16)
    field = receptive_field(model, "5", 3)
    (size, stride, offset) = analytic_fields(
        [(3, 1, 1, 1), (2, 2, 0, 1), (3, 1, 1, 1), (3, 1, 1, 1)]
    )[-1]
    assert (size, stride, offset) == (12, 2, -5)
    assert field == Field((size, size), (stride, stride), (offset, offset))
    units = torch.tensor([0, 2, 4, 1])
    locations = torch.tensor([0, 27, 36, 63])  # corner, middle, middle, far corner of 8x8
    maps, values = project(model, x, "5", units, rule, locations=locations)
    boxes = field.boxes((8, 8), (16, 16))
    with torch.no_grad(), Instrument(model, ["5"]) as ins:
        model(x)
    for i in range(4):
        y0, y1, x0, x1 = boxes[locations[i]]
        strength = magnitude(maps[i : i + 1])[0]
        inside = torch.zeros_like(strength, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert strength[inside].sum() > 0
        assert (strength[~inside] == 0).all()
        assert values[i] == ins["5"][i, units[i]].flatten()[locations[i]]


@pytest.mark.parametrize("rule", ["deconvnet", "guided_backprop", "backprop"])
def test_projection_seeds_the_strongest_location_by_default(rule):
    model = small_cnn()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 16, 16)
    units = torch.tensor([1, 1, 3])
    maps, values = project(model, x, "4", units, rule)
    with torch.no_grad(), Instrument(model, ["4"]) as ins:
        model(x)
    best = ins["4"][torch.arange(3), units].flatten(1).max(1)
    torch.testing.assert_close(values, best.values, rtol=0, atol=0)
    located, _ = project(model, x, "4", units, rule, locations=best.indices)
    torch.testing.assert_close(maps, located, rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["deconvnet", "guided_backprop", "backprop"])
@pytest.mark.parametrize("layer", ["3", "5", None])
def test_projection_of_an_image_does_not_depend_on_the_batch(rule, layer):
    model = nn.Sequential(*small_cnn(), nn.Flatten(), nn.Linear(5 * 8 * 8, 4)).eval()
    torch.manual_seed(3)
    x = torch.randn(3, 3, 16, 16)
    units = torch.tensor([2, 0, 3])
    maps, values = project(model, x, layer, units, rule)
    for i in range(3):
        alone, value = project(model, x[i : i + 1], layer, units[i : i + 1], rule)
        torch.testing.assert_close(maps[i : i + 1], alone)
        torch.testing.assert_close(values[i : i + 1], value)


def test_magnitude_sums_absolute_values_over_channels():
    m = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(magnitude(m), torch.tensor([[[4.0, 2.5]]]))


# --- Gini -----------------------------------------------------------------------------------


def hurley_rickard_gini(v: np.ndarray) -> float:
    """Hurley & Rickard (2009): 1 - 2 sum_k (c_k / |c|_1) (N - k + 1/2) / N, c sorted ascending."""
    c = np.sort(np.abs(v.ravel()).astype(np.float64))
    n = len(c)
    k = np.arange(1, n + 1)
    return float(1 - 2 * np.sum(c / c.sum() * (n - k + 0.5) / n))


def mean_difference_gini(v: np.ndarray) -> float:
    """The textbook definition: sum_ij |x_i - x_j| / (2 n sum x)."""
    x = np.abs(v.ravel()).astype(np.float64)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) * x.sum()))


def test_gini_of_a_uniform_map_is_zero():
    torch.testing.assert_close(gini(torch.full((3, 5, 7), 2.5)), torch.zeros(3), atol=1e-6, rtol=0)


def test_gini_invariances_and_order():
    torch.manual_seed(0)
    maps = torch.rand(4, 6, 6)
    g = gini(maps)
    assert ((g > 0) & (g < 1)).all()
    torch.testing.assert_close(gini(maps * 7.0), g)  # scale
    perm = torch.randperm(36)
    torch.testing.assert_close(gini(maps.flatten(1)[:, perm].view(4, 6, 6)), g)  # permutation
    sharper = maps**4  # more concentrated on the largest pixels
    assert (gini(sharper) > g).all()


def test_gini_of_a_one_hot_map():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 3.0
    maps[1, 3, 3] = 0.5
    n = 16
    torch.testing.assert_close(gini(maps), torch.full((2,), (n - 1) / n))


def test_gini_matches_hurley_rickard_on_random_maps():
    torch.manual_seed(0)
    maps = torch.rand(5, 4, 5) ** 3
    expected = torch.tensor([hurley_rickard_gini(m.numpy()) for m in maps])
    torch.testing.assert_close(gini(maps), expected)


def test_reference_gini_formulas_agree_with_gini():
    """The two reference formulas are the same thing, and `gini` equals them."""
    rng = np.random.default_rng(0)
    for m in rng.random((5, 4, 5)) ** 3:
        assert hurley_rickard_gini(m) == pytest.approx(mean_difference_gini(m), rel=1e-12)
        got = gini(torch.from_numpy(m)[None].float()).item()
        assert got == pytest.approx(hurley_rickard_gini(m), rel=1e-5)


# --- occlusion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "window", "stride"), [((11, 13), 4, 3), ((8, 8), 2, 2), ((9, 5), 5, 4), ((6, 6), 6, 1)]
)
def test_positions_cover_the_image_with_the_last_window_flush(size, window, stride):
    corners, grid = positions(size, window, stride)
    assert len(corners) == grid[0] * grid[1]
    covered = np.zeros(size, dtype=bool)
    for y0, x0 in corners:
        assert 0 <= y0 <= size[0] - window and 0 <= x0 <= size[1] - window
        covered[y0 : y0 + window, x0 : x0 + window] = True
    assert covered.all()
    ys, xs = np.unique(corners[:, 0]), np.unique(corners[:, 1])
    assert ys[-1] == size[0] - window and xs[-1] == size[1] - window
    assert (grid[0], grid[1]) == (len(ys), len(xs))
    assert (np.diff(ys) <= stride).all() and (np.diff(xs) <= stride).all()


@pytest.mark.parametrize(("window", "stride"), [(4, 5), (2, 7)])
def test_a_stride_larger_than_the_window_is_refused(window, stride):
    """Pixels between two positions would never be occluded."""
    with pytest.raises(ValueError, match=f"stride {stride} is larger than the window {window}"):
        positions((16, 16), window, stride)
    torch.manual_seed(0)
    model = TopLeft().eval()
    with pytest.raises(ValueError, match=f"use a stride of at most {window}"):
        occlusion(model, torch.randn(3, 16, 16), 1, window=window, stride=stride)
    assert not has_hooks(model)


def test_positions_exact_corners():
    corners, grid = positions((11, 13), 4, 3)
    assert grid == (4, 4)
    assert sorted(set(corners[:, 0])) == [0, 3, 6, 7]  # 7 = 11 - 4 added, flush
    assert sorted(set(corners[:, 1])) == [0, 3, 6, 9]  # 9 = 13 - 4 already flush
    np.testing.assert_array_equal(corners[:5], [[0, 0], [0, 3], [0, 6], [0, 9], [3, 0]])


class TopLeft(nn.Module):
    """Classifies from the top-left quadrant only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x[:, :, :8, :8])).flatten(1))


def test_occlusion_outside_what_the_model_sees_changes_nothing():
    torch.manual_seed(0)
    model = TopLeft().eval()
    x = torch.randn(3, 16, 16)
    maps = occlusion(model, x, target=2, layer="conv", window=4, stride=4, batch_size=5)
    assert maps.p_true.shape == maps.label.shape == maps.feature.shape == (4, 4)
    with torch.no_grad():
        probs = model(x[None]).softmax(1)[0]
        conv = model.conv(x[None, :, :8, :8])[0]
    assert maps.p_true_clean == pytest.approx(probs[2].item(), rel=1e-6)
    assert maps.feature_unit == int(conv.flatten(1).sum(1).argmax())
    sees = np.zeros((4, 4), dtype=bool)
    sees[:2, :2] = True  # windows inside the top-left 8x8
    outside = maps.p_true[~sees]
    np.testing.assert_allclose(outside, maps.p_true_clean, rtol=1e-6, atol=0)
    assert (maps.label[~sees] == int(probs.argmax())).all()
    feature_clean = conv[maps.feature_unit].sum().item()
    np.testing.assert_allclose(maps.feature[~sees], feature_clean, rtol=1e-5)
    assert (np.abs(maps.p_true[sees] - maps.p_true_clean) > 1e-6).all()
    np.testing.assert_array_equal(maps.boxes[5], [4, 8, 4, 8])  # grid position (1, 1)
    assert not has_hooks(model)


def test_occlusion_square_is_zero_at_its_position():
    """Position (i, j) of the map is the image with exactly that square set to 0."""
    torch.manual_seed(0)
    model = TopLeft().eval()
    x = torch.randn(3, 16, 16)
    maps = occlusion(model, x, target=1, layer="conv", window=5, stride=3, batch_size=7)
    corners, grid = positions((16, 16), 5, 3)
    assert maps.p_true.shape == grid
    for (y0, x0), p in zip(corners, maps.p_true.ravel(), strict=True):
        xo = x.clone()
        xo[:, y0 : y0 + 5, x0 : x0 + 5] = 0
        with torch.no_grad():
            expected = model(xo[None]).softmax(1)[0, 1].item()
        assert p == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_object_vs_background():
    torch.manual_seed(0)
    model = TopLeft().eval()
    maps = occlusion(model, torch.randn(3, 16, 16), target=0, layer="conv", window=4, stride=4)
    assert object_vs_background(maps, np.ones((16, 16))) is None  # no background position
    assert object_vs_background(maps, np.zeros((16, 16))) is None  # no object position
    mask = np.zeros((16, 16))
    mask[:8, :8] = 1  # the object is the top-left quadrant
    on_object, on_background = object_vs_background(maps, mask)
    drop = maps.p_true_clean - maps.p_true
    assert on_object == pytest.approx(drop[:2, :2].mean())
    assert on_background == pytest.approx(drop[~np.pad(np.ones((2, 2), bool), (0, 2))].mean())
    assert on_background == pytest.approx(0, abs=1e-6)
    mask[:8, :8], mask[8:12, :8] = 0, 1  # two windows fully on the object
    mask[:2, :4] = 1  # and one half on it: below on_object
    on_object, _ = object_vs_background(maps, mask, on_object=0.75)
    assert on_object == pytest.approx(drop[2, :2].mean())


class Kitchen(nn.Module):
    """Every layer kind incremental occlusion handles, in awkward settings: a dilated
    convolution, a 1x1 convolution with stride 2 (rows no output reads), batch norm, a padded
    max-pool with ceil_mode, a padded average pool, local response norm, a residual sum, a
    concatenation along channels, an adaptive pool to its own size, and a functional ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(6)
        self.dilated = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.lrn = nn.LocalResponseNorm(3)
        self.skip = nn.Conv2d(6, 6, 1, stride=2)
        self.left = nn.Conv2d(6, 4, 3, padding=1)
        self.right = nn.Conv2d(6, 4, 1)
        self.avg = nn.AvgPool2d(3, 1, padding=1)
        self.same = nn.AdaptiveAvgPool2d((None, None))
        self.fc = nn.Linear(8 * 4 * 4, 7)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.pool(self.dilated(x) + x)
        x = self.lrn(x)
        x = self.skip(x)
        x = torch.cat([self.left(x), self.right(x).sigmoid()], 1)
        x = self.same(self.avg(x))
        return self.fc(torch.nn.functional.adaptive_max_pool2d(x, 4).flatten(1))


def _nets():
    from torchvision.models import squeezenet1_1, vgg11

    from cvinterp.models import build

    torch.manual_seed(0)
    kitchen = Kitchen()
    with torch.no_grad():  # batch norm statistics that are not the identity
        kitchen.bn.running_mean.uniform_(-1, 1)
        kitchen.bn.running_var.uniform_(0.5, 2)
    return {  # name: (model, image size, recorded layer, window, stride)
        "alexnet": (alexnet(weights=None), 127, "features.10", 19, 18),
        "squeezenet1_1": (squeezenet1_1(weights=None), 99, "features.12", 17, 11),
        "vgg11": (vgg11(weights=None), 40, "features.8", 9, 8),
        "all_cnn_c": (build("all_cnn_c", 10, 1), 28, "conv6", 7, 3),
        "kitchen": (kitchen, 75, "lrn", 6, 6),
    }


INCREMENTAL_UP_TO = {
    "alexnet": "features.6",
    "squeezenet1_1": "features.8",
    "vgg11": "features.10",
    "all_cnn_c": "conv6",
    "kitchen": "adaptive_max_pool2d",
}


@pytest.mark.parametrize("name", list(INCREMENTAL_UP_TO))
def test_incremental_occlusion_equals_full_passes_in_float64(name):
    """Nakandala et al.'s incremental inference recomputes only the changed region of each
    layer; in float64 its maps equal one full forward pass per position to rounding, for
    sequential stacks, fire modules (SqueezeNet), strided all-convolutional nets and every
    layer kind `Kitchen` lists."""
    model, size, layer, window, stride = _nets()[name]
    model = model.double().eval()
    torch.manual_seed(1)
    x = torch.randn(model.conv1.in_channels if name in ("all_cnn_c", "kitchen") else 3, size, size)
    x = x.double()
    target = 3
    where = dict(window=window, stride=stride, layer=layer)
    # full_above=1: boxes as far as they go (a full pass only where a box covers its map)
    inc = occlusion(model, x, target, **where, batch_size=13, full_above=1.0)
    full = occlusion(model, x, target, **where, incremental=False)
    assert inc.inference == f"incremental up to {INCREMENTAL_UP_TO[name]}, full passes from there"
    assert full.inference == "full passes"
    np.testing.assert_allclose(inc.p_true, full.p_true, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(inc.feature, full.feature, rtol=1e-10)
    np.testing.assert_array_equal(inc.label, full.label)
    assert inc.feature_unit == full.feature_unit and inc.p_true_clean == full.p_true_clean
    assert (np.abs(full.p_true - full.p_true_clean) > 0).mean() > 0.5  # occlusion matters


def test_incremental_occlusion_in_float32_and_its_saving():
    """AlexNet at 224 px, the benchmark's 32-px square: within 1e-5 of full passes in
    float32, with about half the multiply-adds (the box covers conv1-conv3 in part)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    x = torch.randn(3, 224, 224)
    where = dict(window=32, stride=32, layer="features.10")
    with FlopCounterMode(display=False) as count:
        inc = occlusion(model, x, 5, **where)
    with FlopCounterMode(display=False) as count_full:
        full = occlusion(model, x, 5, incremental=False, **where)
    assert inc.inference == "incremental up to features.10, full passes from there"
    np.testing.assert_allclose(inc.p_true, full.p_true, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(inc.feature, full.feature, rtol=1e-5)
    assert count.get_total_flops() < 0.6 * count_full.get_total_flops()


def test_occlusion_of_an_untraceable_model_runs_full_passes_and_says_so():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = self.conv(x)
            if h.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
                h = -h
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(3, 12, 12)
    maps = occlusion(Branchy().eval(), x, 1, window=4, stride=4, layer="conv")
    assert maps.inference.startswith("full passes (torch.fx cannot trace the model")
    assert maps.feature.shape == (3, 3)


# --- cascading randomisation ----------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


def test_cascading_randomisation_changes_the_maps_not_the_model():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(3, 3, 8, 8)
    classes = torch.tensor([0, 1, 3])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps_before, _ = project(model, x, None, classes, "backprop")
    torch.testing.assert_close(rank_similarity(maps_before, maps_before), np.ones(3))

    sims = cascading_randomisation(
        model, x, classes, ["fc", "conv2", "conv1"], ["backprop", "guided_backprop"], seed=3
    )
    assert set(sims) == {"backprop", "guided_backprop"}
    assert sims["backprop"].shape == sims["guided_backprop"].shape == (3, 3)
    assert np.isfinite(sims["backprop"]).all()
    assert (sims["backprop"][0] < 0.99).all()  # the top layer alone already changes the map
    assert (sims["backprop"] <= 1).all()

    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    torch.testing.assert_close(project(model, x, None, classes, "backprop")[0], maps_before)
    assert not has_hooks(model)


def test_cascading_randomisation_is_seeded():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    classes = torch.tensor([2, 1])
    a = cascading_randomisation(model, x, classes, ["fc", "conv2"], ["backprop"], seed=5)
    b = cascading_randomisation(model, x, classes, ["fc", "conv2"], ["backprop"], seed=5)
    np.testing.assert_array_equal(a["backprop"], b["backprop"])
