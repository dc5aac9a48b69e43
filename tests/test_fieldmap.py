"""Fieldmaps (Network Dissection's receptive-field geometry) and the linear upsampling weights.

The expected fieldmaps are derived by hand from the authors' rules (CSAILVision/NetDissect,
src/upsample.py); the semantics are also checked against gradients (the input window each
output pixel depends on) and the weights against the authors' scipy spline.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.interpolate import RectBivariateSpline
from torch import nn
from torchvision.models import alexnet, resnet18, vgg16

from cvinterp.fieldmap import (
    IDENTITY,
    centres,
    compose,
    fieldmap,
    linear_weights,
    mask_centres,
)
from cvinterp.instrument import has_hooks

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths"),
]


class CaffeNet(nn.Module):
    """CaffeNet's conv geometry with few channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 11, stride=4)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.norm1 = nn.LocalResponseNorm(5)
        self.conv2 = nn.Conv2d(4, 4, 5, padding=2, groups=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.norm2 = nn.LocalResponseNorm(5)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv4 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        x = self.norm2(self.pool2(self.relu2(self.conv2(x))))
        return self.conv5(F.relu(self.conv4(F.relu(self.conv3(x)))))


def square(offset: int, size: int, step: int):
    return (offset, offset), (size, size), (step, step)


def test_compose():
    conv = square(-1, 3, 2)
    assert compose(IDENTITY, conv) == conv == compose(conv, IDENTITY)
    pool = square(0, 3, 2)
    assert compose(conv, pool) == square(-1, 7, 4)
    a, b, c = ((-2, 0), (5, 3), (2, 1)), ((0, -1), (3, 2), (1, 3)), square(-1, 3, 2)
    assert compose(compose(a, b), c) == compose(a, compose(b, c))


def test_caffenet_conv5_and_its_centres_on_broden_masks():
    # (offset, size, step) per axis, composed with size = (s2-1)*t1 + s1, offset = o2*t1 + o1:
    # conv1 11/4 p0 (0, 11, 4); pool1 3/2 (0, 19, 8); conv2 5 p2 (-16, 51, 8);
    # pool2 3/2 (-16, 67, 16); conv3 3 p1 (-32, 99, 16); conv4 (-48, 131, 16); conv5 (-64, 163, 16)
    model = CaffeNet()
    fm = fieldmap(model, "conv5", (3, 227, 227))
    assert fm == square(-64, 163, 16)
    # 227 px images, 113 px masks: reduction 2; first centre (163 // 2 - 64) // 2 = 8, step 8
    ay, ax = centres(fm, (13, 13), round(227 / 113))
    expected = np.arange(8, 105, 8)
    assert len(expected) == 13
    np.testing.assert_array_equal(ay, expected)
    np.testing.assert_array_equal(ax, expected)
    assert ay.dtype == np.float64
    assert fieldmap(model, "pool1", (3, 227, 227)) == square(0, 19, 8)
    assert fieldmap(model, "relu2", (3, 227, 227)) == square(-16, 51, 8)


class Fire(nn.Module):
    """SqueezeNet's fire module after a 3x3/2 conv; `big_first` orders the concatenation."""

    def __init__(self, big_first: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.squeeze = nn.Conv2d(4, 2, 1)
        self.expand1 = nn.Conv2d(2, 3, 1)
        self.expand3 = nn.Conv2d(2, 3, 3, padding=1)
        self.out = nn.Identity()
        self.big_first = big_first

    def forward(self, x):
        s = F.relu(self.squeeze(self.stem(x)))
        a, b = F.relu(self.expand1(s)), F.relu(self.expand3(s))
        return self.out(torch.cat([b, a] if self.big_first else [a, b], 1))


@pytest.mark.parametrize("big_first", [True, False])
def test_concatenation_keeps_the_larger_fieldmap(big_first):
    model = Fire(big_first)
    # stem (0, 3, 2); squeeze and expand1 keep it; expand3 3 p1: (-2, 7, 2), the larger
    assert fieldmap(model, "expand1", (3, 17, 17)) == square(0, 3, 2)
    assert fieldmap(model, "out", (3, 17, 17)) == square(-2, 7, 2)


class Residual(nn.Module):
    """A ResNet block with a 1x1/2 downsample, added in place or not, in either order."""

    def __init__(self, in_place: bool, shortcut_first: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.downsample = nn.Conv2d(3, 4, 1, stride=2)
        self.out = nn.ReLU(inplace=True)
        self.in_place, self.shortcut_first = in_place, shortcut_first

    def forward(self, x):
        y = self.conv2(F.relu(self.bn1(self.conv1(x))))
        shortcut = self.downsample(x)
        if self.in_place:
            y += shortcut
        else:
            y = shortcut + y if self.shortcut_first else y + shortcut
        return self.out(y)


@pytest.mark.parametrize("in_place, shortcut_first", [(True, False), (False, False), (False, True)])
def test_addition_keeps_the_larger_fieldmap(in_place, shortcut_first):
    model = Residual(in_place, shortcut_first)
    # conv path: conv1 3/2 p1 (-1, 3, 2), conv2 3 p1 (-3, 7, 2); shortcut 1x1/2 (0, 1, 2)
    assert fieldmap(model, "downsample", (3, 16, 16)) == square(0, 1, 2)
    assert fieldmap(model, "out", (3, 16, 16)) == square(-3, 7, 2)


class Functional(nn.Module):
    """Padding, dilation, 'same' and pooling written functionally and as modules."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.rand(4, 3, 3, 3))
        self.w2 = nn.Parameter(torch.rand(4, 4, 4, 2))
        self.w3 = nn.Parameter(torch.rand(4, 4, 3, 3))
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, padding_mode="reflect")

    def forward(self, x):
        x = F.pad(x, (1, 2, 3, 0), mode="reflect")  # offset (-3, -1)
        x = F.conv2d(x, self.w1, None, 2)  # k3 s2 p0: ((-3, -1), (3, 3), (2, 2))
        x = F.max_pool2d(x, 3, padding=1)  # k3 s3 p1: ((-5, -3), (7, 7), (6, 6))
        x = F.conv2d(x, self.w2, padding="same")  # k(4, 2) p(1, 0): ((-11, -3), (25, 13), (6, 6))
        x = torch.max_pool2d(x, 2, 1)  # k2 s1: ((-11, -3), (31, 19), (6, 6))
        x = self.dilated(x)  # effective k5 p2: ((-23, -15), (55, 43), (6, 6))
        x = F.avg_pool2d(x, 2, padding=1)  # k2 s2 p1: ((-29, -21), (61, 49), (12, 12))
        return F.conv2d(x, self.w3, stride=1, padding=1, dilation=1)  # ((-41, -33), (85, 73))


def test_functional_calls_padding_dilation_and_same():
    model = nn.Sequential(Functional(), nn.Identity())
    assert fieldmap(model, "0", (3, 96, 96)) == ((-41, -33), (85, 73), (12, 12))
    assert fieldmap(model, "0.dilated", (3, 96, 96)) == ((-23, -15), (55, 43), (6, 6))


class Positive(nn.Module):
    """Positive weights, no ReLU and average pools: every window pixel gets a gradient."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, 2, 3, stride=2, padding=1),
                nn.Conv2d(2, 2, 4, padding="same", dilation=2),
                nn.Conv2d(2, 2, (2, 5), stride=(1, 2), padding=(0, 3)),
                nn.Conv2d(2, 2, 4, padding="same"),
            ]
        )
        self.out = nn.Identity()
        for p in self.parameters():
            p.data.uniform_(0.5, 1.0)

    def forward(self, x):
        x = F.pad(self.convs[0](x), (2, 0, 1, 1))
        x = F.avg_pool2d(self.convs[1](x), 3, stride=2, padding=1, count_include_pad=True)
        x = self.convs[3](self.convs[2](x))
        return self.out(x)


def test_fieldmaps_are_the_windows_that_gradients_reach():
    model = Positive()
    shape = (1, 64, 64)
    (oy, ox), (sy, sx), (ty, tx) = fieldmap(model, "out", shape)
    x = torch.rand(1, *shape, requires_grad=True)
    y = model(x)
    for i, j in itertools.product(range(2, y.shape[2] - 2), range(2, y.shape[3] - 2)):
        (grad,) = torch.autograd.grad(y[0, 0, i, j], x, retain_graph=True)
        rows, cols = np.nonzero(grad[0, 0].numpy())
        assert (rows.min(), rows.max() + 1) == (max(0, i * ty + oy), min(64, i * ty + oy + sy))
        assert (cols.min(), cols.max() + 1) == (max(0, j * tx + ox), min(64, j * tx + ox + sx))


class Gated(nn.Module):
    """A squeeze-and-excitation gate: the 1x1 gate broadcasts over the map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.gate = nn.Conv2d(4, 4, 1)
        self.out = nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        return self.out(x * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(x, 1))))


def test_a_broadcast_gate_does_not_carry_geometry():
    assert fieldmap(Gated(), "out", (3, 15, 15)) == square(0, 3, 2)


class Upsampled(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.functional = functional

    def forward(self, x):
        x = self.conv1(x)
        x = F.interpolate(x, scale_factor=2) if self.functional else self.up(x)
        return self.conv2(x)


@pytest.mark.parametrize("functional", [False, True])
def test_an_upsample_before_the_layer_is_refused(functional):
    model = Upsampled(functional).train()
    model.conv1.eval()
    with pytest.raises(ValueError, match=r"'conv2'.*interpolate.*8x8 -> 16x16.*bilinear"):
        fieldmap(model, "conv2", (3, 8, 8))
    assert fieldmap(model, "conv1", (3, 8, 8)) == square(-1, 3, 1)
    assert model.training and model.conv2.training and not model.conv1.training
    assert not has_hooks(model)


def test_a_layer_without_a_map_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model.eval()
    with pytest.raises(ValueError, match=r"'2'.*not a spatial map.*bilinear"):
        fieldmap(model, "2", (3, 8, 8))
    assert not model.training
    assert not has_hooks(model)


def test_torchvision_models():
    # alexnet (conv1 11/4 p2): conv1 (-2, 11, 4); pool 3/2 (-2, 19, 8); conv2 5 p2 (-18, 51, 8);
    # pool 3/2 (-18, 67, 16); conv3, conv4, conv5 3 p1: (-34, 99, 16), (-50, 131, 16),
    # features.10 = conv5 (-66, 163, 16)
    model = alexnet(weights=None)
    assert fieldmap(model, "features.10", (3, 224, 224)) == square(-66, 163, 16)
    assert model.training and not has_hooks(model)
    # resnet18: conv1 7/2 p3 (-3, 7, 2); maxpool 3/2 p1 (-5, 11, 4); layer1: each block two
    # 3x3 p1 convs (+8 in size, -4 in offset each) beat the identity: (-13, 27, 4), (-21, 43, 4);
    # layer2.0: conv1 3/2 p1 (-25, 51, 8), conv2 (-33, 67, 8) beats the 1x1/2 downsample
    # (-21, 43, 8); layer2.1 (-49, 99, 8); layer3.0 (-57, 115, 16), (-73, 147, 16); layer3.1
    # (-105, 211, 16); layer4.0 (-121, 243, 32), (-153, 307, 32); layer4.1 (-217, 435, 32)
    model = resnet18(weights=None)
    assert fieldmap(model, "layer2.0", (3, 224, 224)) == square(-33, 67, 8)
    assert fieldmap(model, "layer4", (3, 224, 224)) == square(-217, 435, 32)
    # vgg16: 3x3 p1 convs add 2 * step to the size and take step from the offset, 2x2/2 pools
    # add step to the size and double it: conv1_2 (-2, 5, 1), pool1 (-2, 6, 2); conv2_2 (-6, 14, 2),
    # pool2 (-6, 16, 4); conv3_3 (-18, 40, 4), pool3 (-18, 44, 8); conv4_3 (-42, 92, 8),
    # pool4 (-42, 100, 16); conv5_1 (-58, 132, 16), conv5_2 (-74, 164, 16),
    # features.28 = conv5_3 (-90, 196, 16)
    model = vgg16(weights=None)
    assert fieldmap(model, "features.28", (3, 224, 224)) == square(-90, 196, 16)


def test_centres_are_the_authors_arange():
    for o, s, t, a, r in itertools.product(
        range(-9, 4), (1, 2, 5, 8), (1, 2, 3, 8), (1, 4), (1, 2, 3)
    ):
        if t // r == 0:
            continue
        fm = ((o, 0), (s, 1), (t, 1))
        theirs = np.arange((s // 2 + o) // r, (s // 2 + o + a * t) // r, t // r)
        assert len(theirs) >= a
        ay, _ = centres(fm, (a, 1), r)
        np.testing.assert_array_equal(ay, theirs[:a])


def test_centres_with_a_step_below_the_reduction():
    # step 1 or 2 under reduction 3: exact positions (s // 2 + o + i * t) / r
    ay, ax = centres(((-1, 0), (3, 5), (1, 2)), (4, 3), 3)
    np.testing.assert_allclose(ay, np.array([0, 1, 2, 3]) / 3)
    np.testing.assert_allclose(ax, np.array([2, 4, 6]) / 3)
    assert ay.dtype == ax.dtype == np.float64


def spline(ay, ax, a, shape):
    return RectBivariateSpline(ay, ax, a, kx=1, ky=1)(np.arange(shape[0]), np.arange(shape[1]))


@pytest.mark.parametrize(
    "ay, ax, shape",
    [
        (np.arange(8.0, 105, 8), np.arange(8.0, 105, 8), (113, 113)),  # CaffeNet conv5
        (np.array([3.0, 11.0]), np.array([-2.0, 4.5]), (15, 9)),
        (np.array([-3.5, 0.25, 2.0, 7.0, 7.5, 16.0, 22.0]), np.array([1.5, 2.0, 9.0]), (20, 12)),
    ],
)
def test_linear_weights_are_the_authors_spline(ay, ax, shape):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(len(ay), len(ax)))
    wy, wx = linear_weights(ay, shape[0]), linear_weights(ax, shape[1])
    assert wy.shape == (shape[0], len(ay)) and wx.shape == (shape[1], len(ax))
    np.testing.assert_allclose(wy.sum(1), 1.0, atol=1e-15)
    np.testing.assert_allclose(wy @ a @ wx.T, spline(ay, ax, a, shape), rtol=0, atol=1e-12)


def test_linear_weights_on_random_positions():
    rng = np.random.default_rng(1)
    for _ in range(5):
        ay = np.sort(rng.choice(np.linspace(-5, 40, 451), size=6, replace=False))
        ax = np.sort(rng.uniform(3, 20, size=4))
        a = rng.normal(size=(6, 4))
        got = linear_weights(ay, 35) @ a @ linear_weights(ax, 24).T
        np.testing.assert_allclose(got, spline(ay, ax, a, (35, 24)), rtol=0, atol=1e-12)


def test_linear_weights_edge_cases():
    np.testing.assert_array_equal(linear_weights(np.array([4.0]), 3), np.ones((3, 1)))
    w = linear_weights(np.array([1.0, 3.0]), 5)
    np.testing.assert_allclose(w, [[1, 0], [1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    with pytest.raises(ValueError, match="increasing"):
        linear_weights(np.array([2.0, 2.0]), 4)
    with pytest.raises(ValueError, match="non-empty"):
        linear_weights(np.array([]), 4)


def test_everything_is_undone_after_an_error_in_the_forward_pass():
    model = CaffeNet().train()
    with pytest.raises(RuntimeError):
        fieldmap(model, "conv5", (4, 227, 227))  # conv1 expects 3 channels
    assert model.training and all(m.training for m in model.modules())
    assert not has_hooks(model)
    assert torch._C._len_torch_function_stack() == 0
    assert fieldmap(model, "conv5", (3, 227, 227)) == square(-64, 163, 16)


def test_mask_centres_follow_the_authors_where_their_reduction_holds():
    """227 px on 113-px masks (broden1_227) and 224 on 112: the authors' integer centres; a net
    fed the probe at another scale (64 px on 112-px masks, where their reduction would be 1 and
    the map would cover 64 of 112 mask pixels): the float centres scaled to the mask."""
    caffenet = ((-64, -64), (163, 163), (16, 16))
    ys, xs = mask_centres(caffenet, (13, 13), 227, (113, 113))
    assert ys.tolist() == xs.tolist() == list(range(8, 105, 8))
    ys, _ = mask_centres(caffenet, (13, 13), 224, (112, 112))
    assert np.array_equal(ys, centres(caffenet, (13, 13), 2)[0])
    tower = ((-18, -18), (43, 43), (4, 4))  # 16x16 maps of a 64-px input
    ys, xs = mask_centres(tower, (16, 16), 64, (112, 112))
    np.testing.assert_allclose(ys, (3 + 4 * np.arange(16)) * 112 / 64)
    assert ys[-1] > 100  # the map spans the mask
    ys, _ = mask_centres(caffenet, (13, 13), 227, (112, 112))  # 227 px on broden1_224's masks
    np.testing.assert_allclose(ys, (17 + 16 * np.arange(13)) * 112 / 227)
