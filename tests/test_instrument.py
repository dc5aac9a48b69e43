"""The instrument: recording, editing and the swapped backward rules of ReLUs and max-pools.

Checked against plain autograd, a hand-written layer-by-layer backward pass, Captum (on nets
where Captum's module hooks are right: separate, non-inplace ReLU modules), and on the models
that break hook-based libraries (in-place ReLUs, a ReLU module called twice, functional ReLUs).
"""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, Occlusion, Saliency
from torch import nn
from torchvision.models import alexnet, resnet18

from cvinterp.instrument import Instrument, InstrumentError, has_hooks
from cvinterp.methods.backward import project
from cvinterp.methods.occlusion import occlusion

RULES = {"backprop": "gradient", "deconvnet": "deconvnet", "guided_backprop": "guided"}


class Tiny(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> linear, every ReLU its own module."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5 * 4 * 4, n_classes)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc(self.relu2(self.conv2(x)).flatten(1))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def inputs(n: int = 4, size: int = 8, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, size, size)


def mode_stack_empty() -> bool:
    return torch._C._len_torch_function_stack() == 0


# --- recording and editing ------------------------------------------------------------------


def test_recording_is_the_exact_module_output():
    net, x = tiny(), inputs()
    with Instrument(net, ["conv1", "relu1", "pool", "conv2", "fc"]) as ins:
        out = net(x)
    a1 = net.conv1(x)
    p1 = F.max_pool2d(a1.relu(), 2)
    a2 = net.conv2(p1)
    torch.testing.assert_close(ins["conv1"], a1, rtol=0, atol=0)
    torch.testing.assert_close(ins["relu1"], a1.relu(), rtol=0, atol=0)
    torch.testing.assert_close(ins["pool"], p1, rtol=0, atol=0)
    torch.testing.assert_close(ins["conv2"], a2, rtol=0, atol=0)
    torch.testing.assert_close(ins["fc"], out, rtol=0, atol=0)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    assert (ins["conv1"] < 0).any()  # pre-ReLU
    assert ins["conv1"].requires_grad and ins["conv1"].grad_fn is not None
    with pytest.raises(InstrumentError, match="was not recorded"):
        ins["conv2.weight"]


def test_detach_gives_tensors_without_grad():
    net, x = tiny(), inputs()
    with Instrument(net, ["conv1", "conv2"], detach=True) as ins:
        net(x)
    for path in ("conv1", "conv2"):
        assert not ins[path].requires_grad and ins[path].grad_fn is None
    torch.testing.assert_close(ins["conv1"], net.conv1(x).detach(), rtol=0, atol=0)


def test_recordings_are_replaced_on_each_forward_pass():
    net = tiny()
    x1, x2 = inputs(seed=1), inputs(n=2, seed=2)
    with Instrument(net, ["conv2"], detach=True) as ins:
        net(x1)
        net(x2)
    torch.testing.assert_close(ins["conv2"], net.conv2(net.pool(net.conv1(x2).relu())).detach())


def test_editing_zeroes_a_channel_exactly_as_a_manual_computation():
    net, x = tiny(), inputs()

    def zero_channel_2(t):
        t = t.clone()
        t[:, 2] = 0
        return t

    with Instrument(net, ["conv1", "relu1"], edit={"conv1": zero_channel_2}) as ins:
        out = net(x)
    a1 = net.conv1(x)
    a1[:, 2] = 0
    expected = net.fc(net.conv2(F.max_pool2d(a1.relu(), 2)).relu().flatten(1))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert (ins["conv1"][:, 2] == 0).all()  # the recording is the edited output
    assert (ins["relu1"][:, 2] == 0).all()
    assert not torch.equal(out, net(x))  # and the edit is gone outside the `with`


def test_wrong_rule_or_path_is_an_error_and_leaves_no_hooks():
    net = tiny()
    with pytest.raises(InstrumentError, match="relu rule"):
        Instrument(net, relu="smooth")
    with pytest.raises(InstrumentError, match="maxpool rule"):
        Instrument(net, maxpool="median")
    with pytest.raises(InstrumentError, match="no module 'conv9'"):
        Instrument(net, ["conv9"])
    assert not has_hooks(net) and mode_stack_empty()


# --- the gradient rule is the gradient ------------------------------------------------------


def test_gradient_rule_equals_plain_autograd():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 5),
    ).eval()
    x = torch.randn(3, 3, 12, 12)
    seed = torch.randn(3, 5)

    xa = x.clone().requires_grad_(True)
    (net(xa) * seed).sum().backward()

    xb = x.clone().requires_grad_(True)
    with Instrument(net, relu="gradient"):
        out = net(xb)
    (out * seed).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)

    classes = torch.tensor([0, 3, 4])
    xc = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xc)[torch.arange(3), classes].sum(), xc)
    maps, values = project(net, x, None, classes, "backprop")
    torch.testing.assert_close(maps, g)
    torch.testing.assert_close(values, net(x)[torch.arange(3), classes])


# --- deconvnet and guided backprop against a hand-written backward pass ---------------------


def _relu_backward(g, pre, rule):
    if rule == "gradient":
        return g * (pre > 0)
    if rule == "deconvnet":
        return g.clamp(min=0)  # rectify the signal, ignore the forward gate
    if rule == "guided":
        return g.clamp(min=0) * (pre > 0)
    raise ValueError(rule)


@torch.no_grad()
def hand_written_backward(net: Tiny, x, seed, rule, maxpool="switches"):
    """d(seed . logits)/dx with `rule` at each ReLU, written out layer by layer."""
    a1 = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)
    r1 = a1.clamp(min=0)
    p1, switches = F.max_pool2d(r1, 2, return_indices=True)
    a2 = F.conv2d(p1, net.conv2.weight, net.conv2.bias, padding=1)

    g = (seed @ net.fc.weight).view_as(a2)  # linear layer backward
    g = _relu_backward(g, a2, rule)
    g = torch.nn.grad.conv2d_input(p1.shape, net.conv2.weight, g, padding=1)
    if maxpool == "switches":
        g = F.max_unpool2d(g, switches, 2, output_size=r1.shape[-2:])
    else:  # spread evenly over the 2x2 window
        g = g.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4
    g = _relu_backward(g, a1, rule)
    g2 = F.conv_transpose2d(g, net.conv1.weight, padding=1)
    g = torch.nn.grad.conv2d_input(x.shape, net.conv1.weight, g, padding=1)
    torch.testing.assert_close(g, g2)  # the two ways of writing a conv's backward agree
    return g


@pytest.mark.parametrize("maxpool", ["switches", "uniform"])
@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_rules_equal_a_hand_written_backward_pass(rule, maxpool):
    net, x = tiny(), inputs(n=5)
    torch.manual_seed(3)
    seed = torch.randn(5, 3)  # mixed signs at the top: the rectification matters
    expected = hand_written_backward(net, x, seed, rule, maxpool)
    assert expected.abs().sum() > 0

    xi = x.clone().requires_grad_(True)
    with Instrument(net, relu=rule, maxpool=maxpool):
        out = net(xi)
    (got,) = torch.autograd.grad((out * seed).sum(), xi)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("rule", ["backprop", "deconvnet", "guided_backprop"])
def test_project_class_maps_equal_the_hand_written_backward_pass(rule):
    net, x = tiny(), inputs(n=5)
    classes = torch.tensor([0, 1, 2, 1, 0])
    seed = F.one_hot(classes, 3).float()
    maps, values = project(net, x, None, classes, rule)
    torch.testing.assert_close(maps, hand_written_backward(net, x, seed, RULES[rule]))
    torch.testing.assert_close(values, net(x)[torch.arange(5), classes])


def test_deconvnet_and_guided_differ_from_the_gradient():
    net, x = tiny(), inputs(n=5)
    seed = torch.randn(5, 3)
    maps = {r: hand_written_backward(net, x, seed, r) for r in ("gradient", "deconvnet", "guided")}
    assert not torch.allclose(maps["gradient"], maps["guided"])
    assert not torch.allclose(maps["gradient"], maps["deconvnet"])
    assert not torch.allclose(maps["deconvnet"], maps["guided"])


# --- agreement with Captum ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "captum_method"),
    [
        ("guided_backprop", lambda m: GuidedBackprop(m)),
        ("deconvnet", lambda m: Deconvolution(m)),
        ("backprop", lambda m: Saliency(m)),
    ],
)
def test_class_maps_equal_captum(rule, captum_method):
    net, x = tiny(), inputs(n=6)
    classes = torch.tensor([0, 1, 2, 2, 1, 0])
    kwargs = {"abs": False} if rule == "backprop" else {}
    expected = captum_method(net).attribute(x.clone(), target=classes, **kwargs)
    maps, _ = project(net, x, None, classes, rule)
    torch.testing.assert_close(maps, expected)
    assert not has_hooks(net)


def _probabilities(net):
    return lambda inp: net(inp).softmax(1)


@torch.no_grad()
def test_occlusion_equals_captum_non_overlapping_windows():
    net, x = tiny(), inputs(n=1)[0]
    true_class = 1
    maps = occlusion(net, x, target=true_class, layer="conv2", window=2, stride=2)
    assert maps.p_true.shape == (4, 4)
    p_clean = net(x[None]).softmax(1)[0, true_class].item()
    assert maps.p_true_clean == pytest.approx(p_clean, rel=1e-6)
    attr = Occlusion(_probabilities(net)).attribute(
        x[None], sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), baselines=0, target=true_class
    )[0]
    # every pixel is covered by exactly one window: attribution = p_clean - p_occluded
    drop = maps.p_true_clean - torch.from_numpy(maps.p_true)
    expected = drop.repeat_interleave(2, 0).repeat_interleave(2, 1).expand(3, 8, 8)
    torch.testing.assert_close(attr, expected.float())


@torch.no_grad()
def test_occlusion_equals_captum_overlapping_windows():
    net, x = tiny(seed=5), inputs(n=1, seed=6)[0]
    true_class = 2
    maps = occlusion(net, x, target=true_class, layer="conv1", window=4, stride=2, batch_size=4)
    assert maps.p_true.shape == (3, 3)  # corners 0, 2, 4 on each axis: (8 - 4) / 2 + 1
    attr = Occlusion(_probabilities(net)).attribute(
        x[None], sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0, target=true_class
    )[0]
    # Captum: each pixel gets the mean drop over the windows that cover it
    total, count = torch.zeros(8, 8, dtype=torch.float64), torch.zeros(8, 8, dtype=torch.float64)
    for (y0, y1, x0, x1), p in zip(maps.boxes, maps.p_true.ravel(), strict=True):
        total[y0:y1, x0:x1] += maps.p_true_clean - float(p)
        count[y0:y1, x0:x1] += 1
    expected = (total / count).float().expand(3, 8, 8)
    torch.testing.assert_close(attr, expected)


# --- the models that break hook-based libraries ---------------------------------------------


@pytest.fixture(scope="module")
def alexnets():
    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    return model, twin


def test_alexnet_records_pre_relu_output_despite_inplace_relu(alexnets):
    model, _ = alexnets
    x = inputs(n=2, size=64, seed=2)
    with torch.no_grad():
        plain = model(x)
        with Instrument(model, ["features.0", "features.1"]) as ins:
            out = model(x)
        conv1 = F.conv2d(x, model.features[0].weight, model.features[0].bias, stride=4, padding=2)
    assert (ins["features.0"] < 0).any()
    torch.testing.assert_close(ins["features.0"], conv1)
    torch.testing.assert_close(ins["features.1"], conv1.clamp(min=0))
    torch.testing.assert_close(out, plain)
    assert not has_hooks(model)


@pytest.mark.parametrize("rule", ["guided_backprop", "deconvnet"])
def test_alexnet_inplace_relus_get_the_rule(alexnets, rule):
    model, twin = alexnets
    x = inputs(n=2, size=64, seed=2)
    classes = torch.tensor([3, 700])
    maps, values = project(model, x, None, classes, rule)
    twin_maps, twin_values = project(twin, x, None, classes, rule)
    assert maps.abs().sum() > 0
    torch.testing.assert_close(maps, twin_maps)
    torch.testing.assert_close(values, twin_values)
    captum = GuidedBackprop if rule == "guided_backprop" else Deconvolution
    torch.testing.assert_close(maps, captum(twin).attribute(x.clone(), target=classes))


def _two_relu_forward(self, x):
    """torchvision's BasicBlock.forward with the second ReLU its own module."""
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu2(out + identity)


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    twin = copy.deepcopy(model)
    twin.relu = nn.ReLU()
    for m in twin.modules():
        if type(m).__name__ == "BasicBlock":
            m.relu, m.relu2 = nn.ReLU(), nn.ReLU()
            m.forward = types.MethodType(_two_relu_forward, m)
    return model, twin


@pytest.mark.parametrize("rule", ["guided_backprop", "deconvnet", "backprop"])
def test_resnet_relu_called_twice_gets_the_rule_both_times(resnets, rule):
    model, twin = resnets
    x = inputs(n=2, size=64, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x))
    classes = torch.tensor([1, 998])
    maps, _ = project(model, x, None, classes, rule)
    method = {"guided_backprop": GuidedBackprop, "deconvnet": Deconvolution, "backprop": Saliency}
    kwargs = {"abs": False} if rule == "backprop" else {}
    expected = method[rule](twin).attribute(x.clone(), target=classes, **kwargs)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(maps, expected)
    assert not has_hooks(model)


def test_recording_a_relu_that_runs_twice_is_an_error(resnets):
    model, _ = resnets
    with pytest.raises(InstrumentError, match=r"'layer1\.0\.relu' ran 2 times"):
        with Instrument(model, ["layer1.0.relu"]):
            model(inputs(n=1, size=64))
    assert not has_hooks(model) and mode_stack_empty()
    with torch.no_grad(), Instrument(model, ["layer1.0.conv1", "layer1.0"]) as ins:
        model(inputs(n=1, size=64))  # modules that run once are fine
    assert ins["layer1.0"].shape == (1, 64, 16, 16)


class Functional(nn.Module):
    """ReLUs called every functional way, and an in-place method ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x), inplace=True), 2)
        x = torch.relu(self.conv2(x)).relu()  # the second ReLU is the identity forward
        x = self.conv3(x)
        x.relu_()
        return self.fc(x.flatten(1))


class ModuleTwin(Functional):
    """Functional's twin with ReLU modules. `double=False` drops the back-to-back second ReLU
    (the same function, and the same backward under every rule): Captum's Deconvolution gets
    two chained ReLU modules wrong, so Captum is compared on the single-ReLU twin."""

    def __init__(self, double: bool = True):
        super().__init__()
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.r2b = nn.ReLU() if double else nn.Identity()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.r1(self.conv1(x)))
        x = self.r2b(self.r2(self.conv2(x)))
        return self.fc(self.r3(self.conv3(x)).flatten(1))


@pytest.mark.parametrize("rule", ["guided_backprop", "deconvnet", "backprop"])
def test_functional_relus_get_the_rule(rule):
    torch.manual_seed(0)
    functional = Functional().eval()
    twin, single = ModuleTwin().eval(), ModuleTwin(double=False).eval()
    twin.load_state_dict(functional.state_dict())
    single.load_state_dict(functional.state_dict())
    x = inputs(n=4)
    classes = torch.tensor([0, 1, 2, 0])
    maps, values = project(functional, x, None, classes, rule)
    method = {"guided_backprop": GuidedBackprop, "deconvnet": Deconvolution, "backprop": Saliency}
    kwargs = {"abs": False} if rule == "backprop" else {}
    expected = method[rule](single).attribute(x.clone(), target=classes, **kwargs)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(maps, project(twin, x, None, classes, rule)[0])
    torch.testing.assert_close(values, twin(x)[torch.arange(4), classes])
    if rule != "backprop":
        assert not torch.allclose(maps, project(functional, x, None, classes, "backprop")[0])


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_other_nonlinearity_with_guided_or_deconvnet_is_an_error(rule):
    torch.manual_seed(0)
    net, x = GeluNet().eval(), inputs(n=1)
    with pytest.raises(InstrumentError, match="gelu"):
        with Instrument(net, relu=rule):
            net(x)
    assert not has_hooks(net) and mode_stack_empty()
    with pytest.raises(InstrumentError, match="gelu"):
        project(net, x, None, torch.tensor([0]), rule)
    with Instrument(net, relu="gradient"):  # the gradient is defined for any net
        net(x)


# --- hooks and the mode are always removed ---------------------------------------------------


def _assert_torch_is_normal_again():
    assert mode_stack_empty()
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    torch.relu(x).backward(torch.tensor([-3.0, -5.0, 7.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -5.0, 7.0]))  # the true gradient
    y = torch.tensor([[[[1.0, 4.0], [2.0, 3.0]]]], requires_grad=True)
    F.max_pool2d(y, 2).sum().backward()
    torch.testing.assert_close(y.grad, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))


def test_inside_the_with_torch_relu_gets_the_rule():
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    net = tiny()
    with Instrument(net, relu="guided"):
        y = torch.relu(x)
    y.backward(torch.tensor([-3.0, -5.0, 7.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 7.0]))
    _assert_torch_is_normal_again()


def test_hooks_removed_after_normal_exit():
    net, x = tiny(), inputs()
    with Instrument(net, ["conv1"], {"conv2": lambda t: t * 2}, relu="deconvnet") as ins:
        assert has_hooks(net) and not mode_stack_empty()
        net(x)
    assert not has_hooks(net)
    _assert_torch_is_normal_again()
    ins.close()  # idempotent
    assert not has_hooks(net)


def test_hooks_removed_after_exception_in_the_with_block():
    net, x = tiny(), inputs()
    with pytest.raises(KeyError):
        with Instrument(net, ["conv1"], relu="guided", maxpool="uniform"):
            net(x)
            raise KeyError("boom")
    assert not has_hooks(net)
    _assert_torch_is_normal_again()


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        F.max_pool2d(torch.relu(self.conv(x)), 2)
        raise ValueError("forward failed")


def test_hooks_removed_after_exception_in_the_forward():
    torch.manual_seed(0)
    net = Raises()
    with pytest.raises(ValueError, match="forward failed"):
        with Instrument(net, ["conv"], relu="guided", maxpool="uniform"):
            net(inputs(n=1))
    assert not has_hooks(net)
    _assert_torch_is_normal_again()


class OverwritesConv(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.how = how

    def forward(self, x):
        y = self.conv(x)
        if self.how == "relu_":
            y.relu_()
        else:
            y.mul_(2)
        return y


@pytest.mark.parametrize("detach", [False, True])
def test_inplace_change_of_a_recorded_output_is_an_error(detach):
    torch.manual_seed(0)
    net, x = OverwritesConv("mul_"), inputs(n=1)
    with pytest.raises(InstrumentError, match="'conv' was changed in place"):
        with Instrument(net, ["conv"], detach=detach):
            net(x)
    assert not has_hooks(net)
    _assert_torch_is_normal_again()
    with Instrument(net, relu="guided"):  # not recording it: fine
        net(x)


@pytest.mark.parametrize("rule", ["gradient", "guided"])
@pytest.mark.parametrize("detach", [False, True])
def test_inplace_relu_of_a_recorded_output_keeps_the_recording(detach, rule):
    """An in-place ReLU runs in place (the model's output is its true output) and the recording
    it would overwrite keeps the pre-ReLU values."""
    torch.manual_seed(0)
    net, x = OverwritesConv("relu_"), inputs(n=2)
    with torch.no_grad():
        true_out, conv = net(x), net.conv(x)
    with Instrument(net, ["conv"], detach=detach, relu=rule) as ins:
        out = net(x)
    torch.testing.assert_close(out, true_out, rtol=0, atol=0)
    torch.testing.assert_close(ins["conv"], conv, rtol=0, atol=0)
    assert (ins["conv"] < 0).any() and not has_hooks(net)


# --- max-pool without switches --------------------------------------------------------------


def test_uniform_maxpool_backward_is_average_pool_backward():
    torch.manual_seed(0)
    pool = nn.MaxPool2d(2)
    x = torch.randn(2, 3, 6, 8, requires_grad=True)
    g = torch.randn(2, 3, 3, 4)
    with Instrument(pool, maxpool="uniform"):
        out = pool(x)
    torch.testing.assert_close(out, F.max_pool2d(x, 2))  # the forward is still the max
    out.backward(g)
    torch.testing.assert_close(x.grad, g.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4)

    xa = x.detach().clone().requires_grad_(True)
    F.avg_pool2d(xa, 2).backward(g)
    torch.testing.assert_close(x.grad, xa.grad)


def test_uniform_maxpool_cannot_return_indices():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(InstrumentError, match="indices"):
        with Instrument(nn.MaxPool2d(2, return_indices=True), maxpool="uniform") as ins:
            ins.model(x)
    assert mode_stack_empty()


def test_recording_works_under_inference_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten())
    x = torch.randn(2, 1, 5, 5)
    with torch.inference_mode(), Instrument(model, ["0"]) as ins:
        model(x)
        recorded = ins["0"]
    torch.testing.assert_close(
        recorded, torch.nn.functional.conv2d(x, model[0].weight, model[0].bias)
    )
    assert not has_hooks(model)


class _MustNotRun(nn.Module):
    def forward(self, x):
        raise AssertionError("a layer above the last recording ran")


def test_stop_early_runs_nothing_above_the_recordings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1), _MustNotRun())
    x = torch.randn(2, 1, 5, 5)
    expected = model[2](torch.relu(model[0](x)))
    with Instrument(model, ["2", "0"], stop_early=True) as ins:
        assert ins.forward(x) is None
        torch.testing.assert_close(ins["2"], expected)
        with pytest.raises(InstrumentError, match=r"Instrument\.forward"):
            model(x)  # called directly, the stop is a clear error, not a silent None
    assert not has_hooks(model)
    with pytest.raises(InstrumentError, match="needs something to record"):
        Instrument(model, stop_early=True)


# --- gradients under torch.no_grad() and torch.inference_mode() --------------------------------


def _gradient_methods():
    """name -> a function of (model, images) that back-propagates; every input tensor it needs
    is made inside it, so under inference_mode they are inference tensors."""
    from cvinterp.methods.actmax import (
        YOSINSKI_SETTINGS,
        erhan,
        pixel_space,
        unit_objective,
        yosinski,
    )
    from cvinterp.methods.inversion import LossWeights, dip_invert, train_inverters, tv_invert
    from cvinterp.methods.sanity import cascading_randomisation
    from cvinterp.methods.top_images import receptive_field
    from cvinterp.models import IMAGENET_RGB

    setting = dataclasses.replace(YOSINSKI_SETTINGS[1], iterations=3)
    generator = {"channels": [4], "kernels": [3], "skip": 2}

    def targets(net, x):
        return [net.conv1(x[:1]).detach()]

    return {
        "project": lambda net, x: project(net, x, "conv2", torch.tensor([0, 3, 1, 4]), "guided")[0],
        "project_class": lambda net, x: project(
            net, x, None, torch.tensor([0, 1, 2, 1]), "deconvnet"
        )[0],
        "receptive_field": lambda net, x: torch.tensor(
            [v for t in dataclasses.astuple(receptive_field(net, "conv2", 3, probe=12)) for v in t]
        ),
        "yosinski": lambda net, x: (
            yosinski(
                unit_objective(net, "conv2", torch.tensor([0, 2, 1, 3])),
                x * 10,
                pixel_space(IMAGENET_RGB)[0],
                setting,
            ).images
        ),
        "erhan": lambda net, x: (
            erhan(
                unit_objective(net, None, torch.tensor([0, 2, 1, 0])), x, rho=5.0, iterations=3
            ).images
        ),
        "cascading_randomisation": lambda net, x: torch.from_numpy(
            cascading_randomisation(
                net, x, torch.tensor([0, 1, 2, 0]), ["fc", "conv2"], ["guided_backprop"]
            )["guided_backprop"]
        ),
        "dip_invert": lambda net, x: (
            dip_invert(
                net,
                lambda u: u,
                targets(net, x),
                ["conv1"],
                8,
                3,
                generator=generator,
                iterations=2,
                input_depth=4,
            ).images
        ),
        "tv_invert": lambda net, x: (
            tv_invert(
                net, lambda u: u, targets(net, x), ["conv1"], 8, 3, iterations=2, tv_weight=0.1
            ).images
        ),
        "train_inverters": lambda net, x: next(
            iter(
                train_inverters(
                    net,
                    lambda u: u,
                    lambda: [torch.sigmoid(x)],
                    {"c": "conv2"},
                    {"f": LossWeights(pixel=1, feature=1)},
                    8,
                    3,
                    epochs=1,
                    lr=1e-3,
                    width=4,
                    seed=0,
                    device="cpu",
                ).values()
            )
        )(torch.ones(1, 5, 4, 4)),
    }


GRADIENT_METHODS = list(_gradient_methods())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_methods_work_under_no_grad_and_inference_mode(method, mode):
    run = _gradient_methods()[method]
    net = tiny()
    expected = run(net, inputs(n=4))
    with getattr(torch, mode)():
        got = run(net, inputs(n=4))  # inputs made under the mode: inference tensors there
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not has_hooks(net) and mode_stack_empty()
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_gradients_on_and_normal_tensor():
    from cvinterp.instrument import gradients_on, normal_tensor

    with torch.inference_mode():
        t = torch.ones(2)
        assert normal_tensor(t) is t  # in inference mode a copy would be one too
        with gradients_on():
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            copy = normal_tensor(t)
            assert not copy.is_inference() and torch.equal(copy, t)
        assert torch.is_inference_mode_enabled()
    plain = torch.ones(2)
    assert normal_tensor(plain) is plain and normal_tensor(3) == 3


# --- other nonlinearities: deconvnet and guided backprop are undefined --------------------------


class Activated(nn.Module):
    """conv -> `act` -> mean over positions (GLU halves the channels)."""

    def __init__(self, act):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


NONLINEAR = {
    "nn.Sigmoid": nn.Sigmoid(),
    "torch.sigmoid": torch.sigmoid,
    "F.sigmoid": F.sigmoid,
    "Tensor.sigmoid": lambda h: h.sigmoid(),
    "Tensor.sigmoid_": lambda h: h.sigmoid_(),
    "torch.sigmoid_": torch.sigmoid_,
    "special.expit": torch.special.expit,
    "nn.Tanh": nn.Tanh(),
    "torch.tanh": torch.tanh,
    "F.tanh": F.tanh,
    "Tensor.tanh_": lambda h: h.tanh_(),
    "torch.tanh_": torch.tanh_,
    "nn.Hardsigmoid": nn.Hardsigmoid(),
    "nn.Hardsigmoid(inplace)": nn.Hardsigmoid(inplace=True),
    "F.hardsigmoid": F.hardsigmoid,
    "nn.Softsign": nn.Softsign(),
    "F.softsign": F.softsign,
    "nn.LogSigmoid": nn.LogSigmoid(),
    "F.logsigmoid": F.logsigmoid,
    "nn.GLU": nn.GLU(1),
    "F.glu": lambda h: F.glu(h, 1),
}


@pytest.mark.parametrize("form", list(NONLINEAR))
def test_sigmoid_like_nonlinearities_are_errors_for_deconvnet_and_guided(form):
    torch.manual_seed(0)
    net, x = Activated(NONLINEAR[form]).eval(), inputs(n=2)
    for rule in ("deconvnet", "guided"):
        with pytest.raises(InstrumentError, match=f"the {rule} rule is defined for ReLU"):
            with Instrument(net, relu=rule):
                net(x)
        assert not has_hooks(net) and mode_stack_empty()
    xa = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(xa)[:, 0].sum(), xa)
    for rule in ("gradient", "linear"):  # no ReLU here: both are the plain gradient
        maps, _ = project(net, x, None, torch.tensor([0, 0]), rule)
        torch.testing.assert_close(maps, expected, rtol=0, atol=0)


def test_sigmoid_mlp_gets_gradients_but_not_guided_backprop():
    from cvinterp.models import build

    torch.manual_seed(0)
    mlp = build("mlp", 10, 1, hidden=[16, 8]).eval()  # sigmoid units
    x = torch.randn(3, 1, 28, 28)
    classes = torch.tensor([1, 5, 9])
    xa = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(mlp(xa)[torch.arange(3), classes].sum(), xa)
    torch.testing.assert_close(project(mlp, x, None, classes, "backprop")[0], expected)
    with pytest.raises(InstrumentError, match="sigmoid"):
        project(mlp, x, None, classes, "guided_backprop")
    assert not has_hooks(mlp) and mode_stack_empty()


# --- ReLUs written another way ---------------------------------------------------------------


def _zero_like(h):
    return torch.zeros((), dtype=h.dtype)


RELU_FORMS = {
    "F.threshold": lambda h: F.threshold(h, 0.0, 0.0),
    "nn.Threshold": lambda h: nn.Threshold(0, 0)(h),
    "F.threshold(inplace)": lambda h: F.threshold(h, 0.0, 0.0, inplace=True),
    "torch.threshold_": lambda h: torch.threshold_(h, 0.0, 0.0),
    "torch.maximum": lambda h: torch.maximum(h, _zero_like(h)),
    "torch.maximum(zero, x)": lambda h: torch.maximum(torch.zeros_like(h), h),
    "torch.max(x, zero)": lambda h: torch.max(h, _zero_like(h)),
    "Tensor.maximum": lambda h: h.maximum(_zero_like(h)),
    "torch.where(x > 0, x, 0)": lambda h: torch.where(h > 0, h, 0),
    "torch.where(0 < x, x, zeros)": lambda h: torch.where(0 < h, h, torch.zeros_like(h)),
    "torch.where(x <= 0, 0, x)": lambda h: torch.where(h <= 0, 0.0, h),
    "Tensor.where": lambda h: h.where(h > 0, 0.0),
    "Tensor.clamp(min=0)": lambda h: h.clamp(min=0),
    "torch.clamp_min": lambda h: torch.clamp_min(h, 0),
    "torch.clip": lambda h: torch.clip(h, 0),
    "Tensor.clamp_(min=0)": lambda h: h.clamp_(min=0),
    "Tensor.clamp_min_": lambda h: h.clamp_min_(0.0),
}


class Rectified(nn.Module):
    """conv -> relu -> max-pool -> conv -> relu -> linear, the ReLU written as `relu`."""

    def __init__(self, relu):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)
        self.relu = relu

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.conv1(x)), 2)
        return self.fc(self.relu(self.conv2(x)).flatten(1))


@pytest.mark.parametrize("form", list(RELU_FORMS))
def test_relus_written_another_way_get_the_rule(form):
    torch.manual_seed(0)
    net = Rectified(RELU_FORMS[form]).eval()
    twin = Rectified(nn.ReLU()).eval()
    twin.load_state_dict(net.state_dict())
    x = inputs(n=3)
    classes = torch.tensor([0, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(net(x), twin(x), rtol=0, atol=0)
        with Instrument(net, relu="guided"):
            torch.testing.assert_close(net(x), twin(x), rtol=0, atol=0)  # the same forward
    for rule in ("backprop", "deconvnet", "guided_backprop", "linear"):
        maps, values = project(net, x, None, classes, rule)
        expected, twin_values = project(twin, x, None, classes, rule)
        torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(values, twin_values, rtol=0, atol=0)
    assert not has_hooks(net) and mode_stack_empty()


GATES = {
    "F.threshold(x, 0.1, 0)": lambda h: F.threshold(h, 0.1, 0.0),
    "F.threshold(x, 0, -1)": lambda h: F.threshold(h, 0.0, -1.0),
    "torch.maximum(x, 0.5)": lambda h: torch.maximum(h, torch.full((), 0.5)),
    "torch.maximum(x, y)": lambda h: torch.maximum(h, h.flip(1)),
    "torch.max(x, y)": lambda h: torch.max(h, h.flip(1)),
    "torch.where(x > 0, x, 0.01 x)": lambda h: torch.where(h > 0, h, 0.01 * h),
    "torch.where(x > 0.5, x, 0)": lambda h: torch.where(h > 0.5, h, 0.0),
    "torch.where(x < 0, x, 0)": lambda h: torch.where(h < 0, h, 0.0),
    "Tensor.clamp(0, 6)": lambda h: h.clamp(0, 6),
    "Tensor.clamp(min=-1)": lambda h: h.clamp(min=-1),
    "torch.clamp_min(x, 0.2)": lambda h: torch.clamp_min(h, 0.2),
    "torch.clamp_max": lambda h: torch.clamp_max(h, 0.5),
    "torch.minimum(x, zero)": lambda h: torch.minimum(h, _zero_like(h)),
}


@pytest.mark.parametrize("form", list(GATES))
def test_gates_that_are_not_relus_are_errors_for_deconvnet_and_guided(form):
    torch.manual_seed(0)
    net, x = Rectified(GATES[form]).eval(), inputs(n=2)
    classes = torch.tensor([0, 2])
    for rule in ("deconvnet", "guided_backprop"):
        with pytest.raises(InstrumentError, match="defined for ReLU networks only"):
            project(net, x, None, classes, rule)
        assert not has_hooks(net) and mode_stack_empty()
    xa = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(xa)[torch.arange(2), classes].sum(), xa)
    torch.testing.assert_close(project(net, x, None, classes, "backprop")[0], expected)


def test_masking_with_where_is_not_a_relu():
    """`torch.where` with a condition unrelated to its branches is plain masking: no error, and
    the same maps as multiplying by the mask."""
    torch.manual_seed(0)
    mask = torch.rand(1, 1, 8, 8) > 0.3

    class Masked(Rectified):
        def __init__(self, by_where: bool):
            super().__init__(nn.ReLU())
            self.by_where = by_where

        def forward(self, x):
            h = self.conv1(x)
            h = torch.where(mask, h, 0.0) if self.by_where else h * mask
            x = F.max_pool2d(self.relu(h), 2)
            return self.fc(self.relu(self.conv2(x)).flatten(1))

    net, twin = Masked(True).eval(), Masked(False).eval()
    twin.load_state_dict(net.state_dict())
    x, classes = inputs(n=2), torch.tensor([1, 2])
    for rule in ("deconvnet", "guided_backprop"):
        maps, _ = project(net, x, None, classes, rule)
        torch.testing.assert_close(maps, project(twin, x, None, classes, rule)[0])
        assert maps.abs().sum() > 0


# --- in-place ReLUs called for their side effect ---------------------------------------------


class SideEffect(nn.Module):
    """`F.relu(h, inplace=True)` called for its side effect only, its value dropped."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.fc = nn.Linear(3 * 6 * 6, 3)

    def forward(self, x):
        h = self.conv1(x)
        F.relu(h, inplace=True)
        h = self.conv2(h)
        torch.relu_(h)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided", "linear"])
def test_inplace_relu_for_its_side_effect_keeps_the_models_output(rule):
    torch.manual_seed(0)
    net, x = SideEffect().eval(), inputs(n=3)
    with torch.no_grad():
        true_out = net(x)
        conv1 = net.conv1(x)
    with torch.no_grad(), Instrument(net, ["conv1"], relu=rule) as ins:
        out = net(x)
    torch.testing.assert_close(out, true_out, rtol=0, atol=0)
    torch.testing.assert_close(ins["conv1"], conv1, rtol=0, atol=0)  # recorded before the ReLU
    assert not has_hooks(net)


def test_back_propagating_from_a_recording_overwritten_by_an_inplace_relu():
    torch.manual_seed(0)
    net, x = SideEffect().eval(), inputs(n=3)
    units = torch.tensor([0, 3, 1])
    maps, values = project(net, x, "conv1", units, "guided_backprop")
    xa = x.clone().requires_grad_(True)
    act = net.conv1(xa)[torch.arange(3), units].flatten(1)
    best = act.max(1)
    (expected,) = torch.autograd.grad(best.values.sum(), xa)  # no ReLU below conv1
    torch.testing.assert_close(values, best.values.detach())
    torch.testing.assert_close(maps, expected)
    maps, _ = project(net, x, None, torch.tensor([0, 1, 2]), "backprop")
    xa = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(xa)[torch.arange(3), torch.tensor([0, 1, 2])].sum(), xa)
    torch.testing.assert_close(maps, expected)
