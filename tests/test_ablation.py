"""Unit ablation: the cached, batched engine against one full forward pass per ablation."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvinterp.instrument import Instrument
from cvinterp.methods import ablation as ab
from cvinterp.models import build, layer_path

CLASSES = 10
TOWER = dict(widths=[16, 32, 32, 32, 32], conv1_kernel=5, fc=64)
# name: (arch, arch args, input channels, pixels, layer, its last layer, the layer right above
# the cut that the engine updates linearly, or None)
CASES = {
    "allcnn_conv8": ("all_cnn_c", dict(width=0.25), 1, 28, "conv8", "conv9", "conv9"),  # 1x1
    "allcnn_conv6": ("all_cnn_c", dict(width=0.25), 1, 28, "conv6", "conv9", "conv7"),  # 3x3 p0
    "tower_conv5": ("two_tower_alexnet", TOWER, 1, 28, "conv5", "fc8", None),  # max-pool above
    "mlp_sigmoid_fc1": ("mlp", dict(hidden=[32, 32]), 1, 28, "fc1", "fc3", None),  # sigmoid
    "mlp_relu_fc1": ("mlp", dict(hidden=[32, 32], activation="relu"), 1, 28, "fc1", "fc3", "fc2"),
    "squeezenet_fire9": ("squeezenet1_1", {}, 3, 64, "fire9", "conv10", "classifier.1"),
}
SMALL_CHUNKS, SQUEEZENET_CHUNKS = (6, 3, 5), (5, 3, 4)  # uneven chunks of 14 and 12 images
# a full squeezenet pass per unit for all 512 fire9 units is too slow here: a spread of units,
# both ends of the expand1x1 (0-255) and expand3x3 (256-511) halves among them
SQUEEZENET_UNITS = sorted({0, 255, 256, 511} | set(range(20, 512, 50)))


pytestmark = pytest.mark.usefixtures("one_thread")


def _zero(units):
    def edit(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, list(units)] = 0
        return out

    return edit


def _per_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.bincount(y[logits.argmax(1) == y], minlength=CLASSES)


def _naive(model, path, x, y, zeroed) -> torch.Tensor:
    """(len(zeroed), classes) correct per class: the full model once per set of units, the
    units zeroed in the output of module `path`."""
    rows = []
    with torch.no_grad():
        for units in zeroed:
            with Instrument(model, [], edit={path: _zero(units)}):
                rows.append(_per_class(model(x), y))
    return torch.stack(rows)


def _standardise(model: nn.Module, last: nn.Module, x: torch.Tensor) -> None:
    """Scale and shift the last layer so that each class's pre-activation has mean 0 and std 1
    over `x`: a random net then spreads its predictions over the classes, and zeroing a single
    unit flips some of them."""
    seen = []
    handle = last.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        if isinstance(last, nn.Linear):
            pre = F.linear(seen[0], last.weight)
        else:
            pre = F.conv2d(seen[0], last.weight).transpose(0, 1).flatten(1).T
        std = pre.std(0)
        last.weight.div_(std.view(-1, *[1] * (last.weight.dim() - 1)))
        last.bias.copy_(-pre.mean(0) / std)


@functools.cache
def _case(name: str):
    """A seeded float64 net in eval mode, its inputs in uneven chunks, and labels with every
    class present: the net's own predictions, some relabelled to the classes it never predicts."""
    arch, args, channels, px, layer, last, _ = CASES[name]
    chunks = SQUEEZENET_CHUNKS if arch == "squeezenet1_1" else SMALL_CHUNKS
    torch.manual_seed(0)
    model = build(arch, CLASSES, channels, **args).double().eval()
    x = torch.randn(sum(chunks), channels, px, px, dtype=torch.float64)
    _standardise(model, model.get_submodule(layer_path(arch, last)), x)
    with torch.no_grad():
        y = model(x).argmax(1)
    for c in set(range(CLASSES)) - set(y.tolist()):  # relabel an image of the commonest class
        y[(y == torch.bincount(y).argmax()).nonzero()[0]] = c
    assert set(y.tolist()) == set(range(CLASSES))
    return model, x, y, chunks, layer_path(arch, layer)


def _batches(name: str):
    _, x, y, chunks, _ = _case(name)
    return list(zip(x.split(list(chunks)), y.split(list(chunks)), strict=True))


def _engine(name: str, linear_update: bool = True, cache_mb: float = 1e6) -> ab.Ablation:
    model, x, _, _, path = _case(name)
    engine = ab.Ablation(model, path, "cpu", linear_update=linear_update)
    engine.cache(_batches(name), cache_mb, len(x))
    return engine


def _units(name: str, units: int) -> list[int]:
    return SQUEEZENET_UNITS if name.startswith("squeezenet") else list(range(units))


@functools.cache
def _naive_single(name: str, units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct per class of the intact net, of the net with each unit of `_units` zeroed)."""
    model, x, y, _, path = _case(name)
    zeroed = [[u] for u in _units(name, units)]
    return _naive(model, path, x, y, [()])[0], _naive(model, path, x, y, zeroed)


# --------------------------------------------------------------------------- single units


@pytest.mark.parametrize("linear_update", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_single_unit_ablation_equals_one_full_pass_per_unit(name, linear_update):
    model, x, y, _, _ = _case(name)
    above = CASES[name][-1]
    engine = _engine(name, linear_update)
    assert engine.split.first is (model.get_submodule(above) if above else None)
    assert engine.linear_update == (linear_update and above is not None)
    assert engine.classes == CLASSES
    assert torch.equal(engine.class_totals(), torch.bincount(y, minlength=CLASSES))

    units = engine.units
    base, naive = _naive_single(name, units)
    ones = torch.ones(1, units, dtype=torch.bool)
    assert torch.equal(engine.correct(ones)[0], base)
    assert units % 5 != 0
    got = engine.correct(ab.single_units(units), group=5)
    assert got.shape == (units, CLASSES)
    assert torch.equal(got[_units(name, units)], naive)
    # the check has teeth: zeroing a unit changes the counts, in more than one class
    changed = (naive != base).any(1)
    assert changed.sum() >= 3
    assert ((naive != base).sum(0) > 0).sum() >= 2


class _Above(nn.Module):
    """conv_a -> ReLU -> `above` -> ReLU -> mean -> fc."""

    def __init__(self, above: nn.Module):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 3)
        self.above = above
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x):
        return self.fc(self.above(F.relu(self.conv_a(x))).relu().mean((2, 3)))


@pytest.mark.parametrize(
    "above, linear",
    [
        (nn.Conv2d(4, 4, 3, padding=1), True),
        (nn.Conv2d(4, 4, 3, groups=2), False),  # each unit feeds half the outputs only
        (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), False),  # pads with the unit
    ],
)
def test_the_layer_above_is_updated_linearly_only_when_that_is_exact(above, linear):
    torch.manual_seed(4)
    model = _Above(above).double().eval()
    x = torch.randn(40, 2, 9, 9, dtype=torch.float64)
    _standardise(model, model.fc, x)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:CLASSES] = torch.arange(CLASSES)
    engine = ab.Ablation(model, "conv_a", "cpu")
    assert engine.split.first is (above if linear else None) and engine.linear_update == linear
    engine.cache(zip(x.split(15), y.split(15), strict=True), 1e6, len(x))
    base = _naive(model, "conv_a", x, y, [()])
    naive = _naive(model, "conv_a", x, y, [[u] for u in range(4)])
    assert torch.equal(engine.correct(ab.single_units(4), group=3), naive)
    assert (naive != base).any(1).sum() >= 2


# --------------------------------------------------------------------------- several units


@pytest.mark.parametrize("name", ["allcnn_conv8", "tower_conv5", "mlp_relu_fc1"])
def test_cumulative_masks_equal_one_full_pass_with_the_units_zeroed(name):
    model, x, y, _, path = _case(name)
    engine = _engine(name)
    units = engine.units
    g = np.random.default_rng(0)
    order = g.permutation(units)
    # group 4: none zeroed and one unit beside several (a mixed group), then several only
    steps = [0, 1, 2, 3, 5, 8, 13, units // 2, units]
    keep = torch.cat([ab.cumulative(order, units, steps),
                      ab.cumulative(g.permutation(units), units, [2, 4, 7])])  # fmt: skip
    assert torch.equal((~keep).sum(1), torch.tensor(steps + [2, 4, 7]))
    assert keep[0].all() and not keep[8].any()
    zeroed = [torch.nonzero(~k).flatten().tolist() for k in keep]
    assert set(zeroed[4]) == set(order[:5].tolist())
    naive = _naive(model, path, x, y, zeroed)
    assert torch.equal(engine.correct(keep, group=4), naive)
    assert len({tuple(r) for r in naive.tolist()}) >= 4


# --------------------------------------------------------------------------- contributions


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(5, 4, 3, stride=2, padding=1, dilation=2),
        nn.Conv2d(5, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        nn.Conv2d(5, 4, 1),
    ],
)
def test_contribution_of_a_convolution_is_the_convolution_of_that_unit_alone(conv):
    torch.manual_seed(1)
    conv = conv.double()
    x = torch.randn(3, 5, 11, 10, dtype=torch.float64)
    units = torch.tensor([0, 3, 4, 3])
    got = ab._contribution(conv, x, units)
    for i, u in enumerate(units.tolist()):
        only = torch.zeros_like(x)
        only[:, u] = x[:, u]
        want = F.conv2d(only, conv.weight, None, conv.stride, conv.padding, conv.dilation)
        assert got[i].shape == want.shape
        torch.testing.assert_close(got[i], want, rtol=0, atol=1e-10)
    # the units' shares and the bias add up to the layer's output
    whole = ab._contribution(conv, x, torch.arange(5)).sum(0) + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(whole, conv(x), rtol=0, atol=1e-10)


def test_contribution_of_a_linear_layer_is_its_column_times_the_unit():
    torch.manual_seed(2)
    fc = nn.Linear(6, 4).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    units = torch.tensor([5, 0, 2])
    got = ab._contribution(fc, x, units)
    assert got.shape == (3, 5, 4)
    for i, u in enumerate(units.tolist()):
        only = torch.zeros_like(x)
        only[:, u] = x[:, u]
        torch.testing.assert_close(got[i], F.linear(only, fc.weight), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- the cut


class _Residual(nn.Module):
    """A skip connection across conv_a and conv_b; another one entirely below conv_c."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 3, 3, padding=1)
        self.conv_c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv_b(F.relu(self.conv_a(x))) + x
        return self.fc(self.conv_c(h).relu().mean((2, 3)))


@pytest.mark.parametrize("layer", ["conv_a", "conv_b"])
def test_a_skip_connection_across_the_cut_is_refused(layer):
    with pytest.raises(ab.AblationError, match="skip connection"):
        ab.split_at(_Residual(), layer)


def test_a_skip_connection_below_the_cut_is_fine():
    model = _Residual().double().eval()
    split = ab.split_at(model, "conv_c")
    assert split.first is None  # a mean follows the ReLU, not a conv / linear layer
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(split.upper(split.lower(x)), model(x))
        h = model.conv_b(F.relu(model.conv_a(x))) + x
        assert torch.equal(split.lower(x), model.conv_c(h).relu())  # x.relu() moved below


def test_resnet_block_is_refused_inside_and_fine_as_a_whole():
    torch.manual_seed(0)
    model = build("resnet18", 10).eval()
    with pytest.raises(ab.AblationError, match="skip connection"):
        ab.split_at(model, "layer3.0.conv1")
    split = ab.split_at(model, "layer3")  # two users above (conv1, downsample): no update
    assert split.first is None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split.upper(split.lower(x)), model(x), rtol=0, atol=1e-6)


def test_a_module_run_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.conv(self.conv(x))

    with pytest.raises(ab.AblationError, match="runs 2 times"):
        ab.split_at(Twice(), "conv")


def test_the_relu_and_eval_dropout_after_the_cut_move_below_it():
    """all_cnn_c conv6 -> relu6 -> drop6 -> conv7: the cached features are relu(conv6), and
    their class means are those of relu(conv6's output) averaged over positions."""
    model, x, y, _, path = _case("allcnn_conv6")
    engine = _engine("allcnn_conv6")
    assert engine.split.first is model.conv7
    # dropout in training mode is not transparent: the cut stops at the ReLU before it
    model.train()
    try:
        assert ab.split_at(model, path).first is None
    finally:
        model.eval()
    with torch.no_grad(), Instrument(model, [path]) as ins:
        model(x)
        rectified = ins[path].relu()
    features = torch.cat([f for f, _ in engine.chunks])
    assert (features >= 0).all() and (features == 0).any() and (features > 0).any()
    assert torch.equal(features, rectified)
    per_image = rectified.mean((2, 3))
    means = torch.stack([per_image[y == c].mean(0) for c in range(CLASSES)])
    torch.testing.assert_close(engine.class_means(), means, rtol=0, atol=1e-12)


def test_functional_and_method_relus_move_below_the_cut():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(2, 4, 3)
            self.conv_b = nn.Conv2d(4, 3, 3)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = self.conv_b(F.relu(self.conv_a(x)))
            return self.fc(torch.relu(h).mean((2, 3)))

    model = Net().double().eval()
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        split = ab.split_at(model, "conv_a")
        assert split.first is model.conv_b
        assert torch.equal(split.lower(x), F.relu(model.conv_a(x)))
        assert torch.equal(split.upper(model.conv_b(split.lower(x))), model(x))
        split = ab.split_at(model, "conv_b")
        assert split.first is None
        assert torch.equal(split.lower(x), torch.relu(model.conv_b(F.relu(model.conv_a(x)))))


# --------------------------------------------------------------------------- selectivity


def test_selectivity_hand_computed():
    # unit 0 fires for class 0 only: mu_max 1, mu_-max 0 -> 1; unit 1 never fires -> 0
    sel = ab.selectivity(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert sel.tolist() == [1.0, 0.0]
    # mu_max 2, mu_-max (1 + 1) / 2 = 1 -> (2 - 1) / (2 + 1)
    assert ab.selectivity(torch.tensor([[2.0], [1.0], [1.0]]))[0] == pytest.approx(1 / 3)
    # mu_max 4 (class 1), mu_-max (1 + 0 + 3) / 3 -> (4 - 4/3) / (4 + 4/3) = 1/2
    assert ab.selectivity(torch.tensor([[1.0], [4.0], [0.0], [3.0]]))[0] == pytest.approx(0.5)
    # the same mean for every class: not selective
    assert ab.selectivity(torch.full((5, 3), 0.7)).tolist() == [0.0, 0.0, 0.0]


def test_selectivity_equals_the_definition_per_unit():
    g = torch.Generator().manual_seed(3)
    means = torch.rand(7, 9, generator=g) ** 2
    means[:, 4] = 0
    sel = ab.selectivity(means)
    for u in range(9):
        col = means[:, u].tolist()
        top = max(col)
        rest = (sum(col) - top) / (len(col) - 1)
        want = 0.0 if top + rest == 0 else (top - rest) / (top + rest)
        assert sel[u] == pytest.approx(want, abs=1e-12)
    assert ((sel >= 0) & (sel <= 1)).all()


# --------------------------------------------------------------------------- the cache


def test_features_go_to_the_host_when_they_do_not_fit_and_results_are_the_same():
    name = "allcnn_conv8"
    _, x, _, _, _ = _case(name)
    fits = _engine(name)
    per_image = fits.chunks[0][0][0].numel() * 8  # float64
    exact = _engine(name, cache_mb=per_image * len(x) / 2**20)  # exactly fits: stays
    host = _engine(name, cache_mb=per_image * len(x) / 2**20 * (1 - 1e-6))
    assert not fits.on_host and not exact.on_host and host.on_host
    assert all(f.device.type == "cpu" for f, _ in host.chunks)
    keep = torch.cat([ab.single_units(fits.units), ab.cumulative(range(fits.units), fits.units,
                                                                 [0, 3, 9])])  # fmt: skip
    want = fits.correct(keep, group=7)
    assert torch.equal(host.correct(keep, group=7), want)
    assert torch.equal(host.class_means(), fits.class_means())
    assert torch.equal(host.class_totals(), fits.class_totals())


# --------------------------------------------------------------------------- claims


def _summary(images, mean, mean_abs, max_drop, class_drop, rho_overall, rho_class):
    return {
        "summary": {
            "images": images,
            "mean_overall_drop": mean,
            "mean_abs_overall_drop": mean_abs,
            "max_overall_drop": max_drop,
            "mean_max_class_drop": class_drop,
            "spearman_selectivity_overall": rho_overall,
            "spearman_selectivity_class": rho_class,
        }
    }


def _claims(per_model: dict) -> dict:
    """The ablation experiment's claims from per-model results."""
    from cvinterp.experiments import ablation
    from cvinterp.experiments.common import Computed

    return ablation.claims(Computed({"models": per_model}))


def test_claims_on_hand_made_summaries():
    per_model = {
        "a": {"layers": {"conv5": _summary(1000, 0.002, 0.01, 0.01, 0.05, 0.1, 0.5)}},
        "b": {
            "layers": {
                # |overall| below one image's worth (1/50): the ratio's floor
                "fc1": _summary(50, -0.001, 0.001, 0.004, 0.2, 0.3, 0.2),
                "fc2": _summary(200, 0.01, 0.01, 0.05, 0.2, 0.1, 0.4),
            }
        },
    }
    claims = _claims(per_model)
    # the largest mean overall drop, in points: fc2's 1.0
    assert claims["single_unit_overall_drop_small"]["value"] == pytest.approx(1.0)
    # ratios 0.05 / 0.01 = 5 (against the mean |change|, not the mean change), 0.2 /
    # max(0.001, 1/50) = 10, 0.2 / 0.01 = 20
    assert claims["class_drop_much_larger"]["value"] == pytest.approx(5)
    fc1 = {"b": {"layers": {"fc1": per_model["b"]["layers"]["fc1"]}}}
    assert _claims(fc1)["class_drop_much_larger"]["value"] == pytest.approx(10)
    # gaps 0.4, -0.1, 0.3
    assert claims["selectivity_predicts_class_drop"]["value"] == pytest.approx(-0.1)
    for claim in claims.values():
        assert all(k in claim["ours"] for k in ("a conv5", "b fc1", "b fc2"))

    # a layer whose selectivities or drops are all equal has no rank order: that claim is n/a
    per_model["b"]["layers"]["fc2"]["summary"]["spearman_selectivity_class"] = math.nan
    claims = _claims(per_model)
    assert set(claims["selectivity_predicts_class_drop"]) == {"na"}
    assert claims["class_drop_much_larger"]["value"] == pytest.approx(5)


def test_claims_without_layers_are_not_available():
    claims = _claims({})
    assert set(claims) == {
        "single_unit_overall_drop_small",
        "class_drop_much_larger",
        "selectivity_predicts_class_drop",
    }
    assert all("na" in c and "value" not in c for c in claims.values())
    assert _claims({"m": {"layers": {}}}) == claims


def test_an_imagenet_net_without_a_validation_folder_is_a_clear_error():
    from types import SimpleNamespace

    from cvinterp.data.images import DataError
    from cvinterp.experiments.ablation import labelled
    from cvinterp.experiments.common import Probe

    net = SimpleNamespace(imagenet=True, name="alexnet", size=224)
    probe = Probe(datasets={"imagenet_val": {"dir": None}})
    with pytest.raises(DataError, match=r"alexnet needs labelled ImageNet.*imagenet_val\.dir"):
        labelled(net, probe, None)


# --------------------------------------------------------------------------- unit predictors


def test_weight_l1_of_conv_and_linear_layers_is_the_sum_of_each_filters_abs_weights():
    net = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Conv2d(4, 6, 3, groups=2))
    fc = nn.Linear(5, 3)
    with torch.no_grad():
        w = torch.arange(24, dtype=torch.float32).view(3, 2, 2, 2) - 11.5  # signs of both kinds
        net[0].weight.copy_(w)
        net[0].bias.fill_(100.0)  # the bias is not an incoming weight
        fc.weight.copy_(torch.tensor([[1.0, -2, 0, 0, 3], [0, 0, 0, 0, 0], [-0.5, 0.5, 1, 1, 1]]))
    want = [sum(abs(v) for v in w[u].flatten().tolist()) for u in range(3)]
    assert ab.weight_l1(net, "0").tolist() == want
    assert ab.weight_l1(fc, "").tolist() == [6.0, 0.0, 4.0]
    # a grouped convolution: each unit's filter sees its group's input channels only
    grouped = ab.weight_l1(net, "1")
    assert grouped.shape == (6,) and grouped.dtype == np.float64
    np.testing.assert_allclose(grouped, net[1].weight.detach().double().abs().sum((1, 2, 3)))


class _Branches(nn.Module):
    """Three convolutions concatenated along channels, in another order than they are defined,
    through a module ReLU, a functional one, a method one and an eval dropout."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        inner = torch.cat([F.relu(self.b(x)), self.relu(self.a(x))], dim=1)
        return torch.cat((self.drop(inner), self.c(x).relu()), 1)


def test_a_fire_module_is_expand1x1s_channels_then_expand3x3s():
    from torchvision.models.squeezenet import Fire

    torch.manual_seed(0)
    fire = Fire(8, 4, 3, 5).eval()
    assert ab.unit_weights(fire, "") == [fire.expand1x1, fire.expand3x3]
    l1 = ab.weight_l1(nn.Sequential(fire), "0")
    want = torch.cat([m.weight.abs().sum((1, 2, 3)) for m in (fire.expand1x1, fire.expand3x3)])
    np.testing.assert_allclose(l1, want.detach().double().numpy(), rtol=1e-6)
    # the channels are assigned as the module computes them: with expand3x3 zeroed, its five
    # channels, the last ones, are zero and expand1x1's three are not
    with torch.no_grad():
        fire.expand3x3.weight.zero_()
        fire.expand3x3.bias.zero_()
        out = fire(torch.randn(2, 8, 5, 5))
    assert (out[:, 3:] == 0).all() and (out[:, :3] != 0).any(3).any(2).all()
    # the real SqueezeNet's fire9: 256 + 256 units
    net = build("squeezenet1_1", CLASSES)
    fire9 = net.get_submodule(layer_path("squeezenet1_1", "fire9"))
    assert ab.unit_weights(net, "features.12") == [fire9.expand1x1, fire9.expand3x3]


def test_concatenations_and_elementwise_ops_are_followed_in_order():
    net = _Branches().eval()
    assert ab.unit_weights(net, "") == [net.b, net.a, net.c]
    l1 = ab.weight_l1(net, "")
    assert l1.shape == (7,)
    np.testing.assert_allclose(l1[:4], net.b.weight.detach().abs().sum((1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(l1[4:6], net.a.weight.detach().abs().sum((1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(l1[6:], net.c.weight.detach().abs().sum((1, 2, 3)), rtol=1e-6)


class _Along(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim, self.a, self.b = dim, nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], self.dim)


@pytest.mark.parametrize(
    "block, why",
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)), r"module 'block\.1' \(MaxPool2d\)"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), r"'block\.1' \(BatchNorm2d\)"),
        (_Along(2), "function 'cat'"),  # along the rows: not channels
        (nn.Identity(), "comes from its input"),
    ],
)
def test_a_layer_whose_units_have_no_filter_is_a_clear_error(block, why):
    net = nn.Module()
    net.block = block
    with pytest.raises(ab.AblationError, match="incoming weights of the units of 'block'") as e:
        ab.weight_l1(net, "block")
    assert e.match(why)
    ok = nn.Module()
    ok.block = _Along(1)
    assert ab.weight_l1(ok, "block").shape == (4,)


def _naive_class_correlations(name: str) -> np.ndarray:
    """(units, classes) Pearson correlation between each unit's spatially averaged activation
    at the cut and the model's softmax probability of each class, from one full forward pass
    of all images, with numpy, image by image."""
    model, x, _, _, path = _case(name)
    with torch.no_grad(), Instrument(model, [path]) as ins:
        probs = torch.softmax(model(x), 1).numpy()
        out = ins[path]
    out = out if name == "mlp_sigmoid_fc1" else out.relu()  # the ReLU moves below the cut
    acts = (out.flatten(2).mean(2) if out.dim() > 2 else out).numpy()
    want = np.zeros((acts.shape[1], probs.shape[1]))
    for u in range(acts.shape[1]):
        for c in range(probs.shape[1]):
            a, p = acts[:, u], probs[:, c]
            da, dp = a - sum(a) / len(a), p - sum(p) / len(p)
            den = math.sqrt(sum(da * da) * sum(dp * dp))
            want[u, c] = sum(da * dp) / den if den > 0 else 0.0
    return want


@pytest.mark.parametrize(
    "name", ["allcnn_conv6", "tower_conv5", "mlp_sigmoid_fc1", "mlp_relu_fc1", "squeezenet_fire9"]
)
def test_class_correlations_equal_a_naive_pearson_over_the_images(name):
    engine = _engine(name)
    got = engine.class_correlations()
    assert got.dtype == torch.float64 and got.shape == (engine.units, CLASSES)
    want = _naive_class_correlations(name)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    assert np.abs(want).max() > 0.3  # correlations of some size: the check has teeth
    # the layer above's shortcut does not change the intact logits
    np.testing.assert_allclose(
        _engine(name, linear_update=False).class_correlations().numpy(), want, rtol=0, atol=1e-10
    )


def test_a_constant_activation_or_probability_has_correlation_zero():
    torch.manual_seed(4)
    model = _Above(nn.Conv2d(4, 4, 3, padding=1)).double().eval()
    with torch.no_grad():
        model.conv_a.weight[1] = 0  # unit 1 is constant: relu(bias) everywhere
        model.conv_a.weight[2] = 0
        model.conv_a.bias[2] = -1  # unit 2 never fires
    x = torch.randn(12, 2, 9, 9, dtype=torch.float64)
    y = torch.arange(12) % CLASSES
    engine = ab.Ablation(model, "conv_a", "cpu")
    engine.cache(zip(x.split(5), y.split(5), strict=True), 1e6, len(x))
    corr = engine.class_correlations()
    assert (corr[1] == 0).all() and (corr[2] == 0).all()
    assert (corr[[0, 3]] != 0).all()
    assert (corr.abs() <= 1 + 1e-12).all()
    with torch.no_grad():
        model.fc.weight.zero_()  # every probability constant
    engine = ab.Ablation(model, "conv_a", "cpu")
    engine.cache(zip(x.split(5), y.split(5), strict=True), 1e6, len(x))
    assert (engine.class_correlations() == 0).all()


def test_class_correlations_are_the_same_from_host_memory():
    name = "allcnn_conv8"
    fits, host = _engine(name), _engine(name, cache_mb=1e-6)
    assert host.on_host and not fits.on_host
    torch.testing.assert_close(host.class_correlations(), fits.class_correlations())


def _ablate_layer(name: str) -> dict:
    """The experiment's metrics of one layer of a test case, on its images."""
    from types import SimpleNamespace

    from cvinterp.experiments import ablation

    model, x, y, _, path = _case(name)
    data = SimpleNamespace(
        labels=y.numpy(), batches=lambda pre, size, device: (pre(b) for b in x.split(size))
    )
    m = SimpleNamespace(name=name, model=model, pre=lambda t: t)
    kwargs = dict(batch_size=5, group=7, steps=3, random_orders=1, cache_mb=1e6, seed=0)
    return ablation.ablate_layer(m, path, data, len(x), device="cpu", **kwargs)


@pytest.mark.parametrize("name", ["allcnn_conv6", "squeezenet_fire9"])
def test_the_experiment_compares_the_three_predictors(name, tmp_path):
    from scipy.stats import spearmanr

    from cvinterp.experiments import ablation

    model, _, _, _, path = _case(name)
    r = _ablate_layer(name)
    units = r["units"]
    for key in ("selectivity", "l1_norm", "class_correlation", "overall_drop", "max_class_drop"):
        assert len(r[key]) == units, key
    np.testing.assert_array_equal(r["l1_norm"], ab.weight_l1(model, path))
    corr = _naive_class_correlations(name).max(1)
    np.testing.assert_allclose(r["class_correlation"], corr, rtol=0, atol=1e-10)
    s = r["summary"]
    assert set(s["predictors"]) == {"selectivity", "l1_norm", "class_correlation"}
    for k, rho in s["predictors"].items():
        for against, drops in (("overall", r["overall_drop"]), ("class", r["max_class_drop"])):
            want = spearmanr(r[k], drops).statistic
            assert rho[against] == pytest.approx(want, abs=1e-12), (k, against)
            assert not math.isnan(rho[against])
    # the old keys stay, equal to the selectivity entry
    assert s["spearman_selectivity_overall"] == s["predictors"]["selectivity"]["overall"]
    assert s["spearman_selectivity_class"] == s["predictors"]["selectivity"]["class"]
    png = tmp_path / "layer.png"
    ablation._figure(r, [str(c) for c in range(CLASSES)], name, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablate_carries_the_unit_predictors():
    name = "allcnn_conv6"
    model, x, y, _, path = _case(name)
    got = ab.ablate(model, path, _batches(name), units=[5, 0, 17])
    np.testing.assert_array_equal(got.l1_norm, ab.weight_l1(model, path)[[5, 0, 17]])
    want = _naive_class_correlations(name).max(1)[[5, 0, 17]]
    np.testing.assert_allclose(got.class_correlation, want, rtol=0, atol=1e-10)
    # a layer whose units have no filter of their own: NaN norms, the rest as before
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    xs, ys = torch.randn(9, 2, 8, 8), torch.arange(9) % 3
    pooled = ab.ablate(net, "0", [(xs, ys)])
    assert np.isnan(pooled.l1_norm).all() and pooled.l1_norm.shape == (4,)
    assert np.isfinite(pooled.class_correlation).all()


def test_the_selectivity_claim_lists_the_other_predictors():
    layer = _summary(1000, 0.002, 0.01, 0.01, 0.05, 0.1, 0.5)
    layer["summary"]["predictors"] = {
        "selectivity": {"overall": 0.1, "class": 0.5},
        "l1_norm": {"overall": 0.62, "class": 0.31},
        "class_correlation": {"overall": -0.05, "class": 0.44},
    }
    claim = _claims({"a": {"layers": {"conv5": layer}}})["selectivity_predicts_class_drop"]
    assert claim["value"] == pytest.approx(0.4)
    assert "weight L1 norm +0.31 / +0.62" in claim["ours"]
    assert "class correlation +0.44 / -0.05" in claim["ours"]


def test_the_experiment_ablates_a_layer_without_filters_of_its_own():
    """A residual stage ends in a sum, not a convolution: no weight L1 norm per unit, the rest
    of the experiment as before (the reviewer's case: resnet18 layer3 failed the whole job)."""
    from types import SimpleNamespace

    from cvinterp.experiments import ablation

    torch.manual_seed(0)
    model = build("resnet18", 4).eval()
    x = torch.randn(12, 3, 32, 32)
    y = torch.arange(12) % 4
    data = SimpleNamespace(
        labels=y.numpy(), batches=lambda pre, size, device: (pre(b) for b in x.split(size))
    )
    m = SimpleNamespace(name="resnet18", model=model, pre=lambda t: t)
    r = ablation.ablate_layer(
        m, "layer3", data, len(x), batch_size=6, group=64, steps=2, random_orders=1,
        cache_mb=1e6, seed=0, device="cpu",
    )  # fmt: skip
    assert r["units"] == 256 and r["l1_norm"] is None
    assert "add" in r["l1_norm_unavailable"]
    rho = r["summary"]["predictors"]["l1_norm"]
    assert math.isnan(rho["overall"]) and math.isnan(rho["class"])
    assert len(r["class_correlation"]) == 256
