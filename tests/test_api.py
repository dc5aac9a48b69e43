"""The notebook face, `from cvinterp.methods import ...`: each function against the lower-level
function it is built on (exactly) or Captum, its target forms and shapes, under torch.no_grad()
and torch.inference_mode(), with no hook left behind (also after an error); and the README's
example, run as it is written."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, Saliency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cvinterp.data.broden import BrodenDataset
from cvinterp.instrument import Instrument, InstrumentError, has_hooks
from cvinterp.methods import (
    Dissection,
    OcclusionMaps,
    TopK,
    UnitAblation,
    Visualisation,
    ablate,
    actmax,
    deconvnet,
    dissect,
    guided_backprop,
    occlusion,
    saliency,
    top_activations,
)
from cvinterp.methods.ablation import Ablation, selectivity, single_units
from cvinterp.methods.actmax import YOSINSKI_SETTINGS, erhan, pixel_space, unit_objective, yosinski
from cvinterp.methods.backward import project
from cvinterp.methods.dissection import MemoryProbe, count_detectors, dissect_layers
from cvinterp.models import IMAGENET_RGB, Preprocessing

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def mode_stack_empty() -> bool:
    return torch._C._len_torch_function_stack() == 0


class Small(nn.Module):
    """conv -> in-place ReLU -> max-pool -> conv -> functional ReLU -> linear (4 classes)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, classes)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc(F.relu(self.conv2(x)).flatten(1))


def small(seed: int = 0) -> Small:
    torch.manual_seed(seed)
    return Small().eval()


def images(n: int = 4, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vgg():
    """torchvision's VGG-11 with random weights (in-place ReLUs), and a copy whose ReLUs run
    out of place: Captum's module hooks are right only on that one."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model, twin


# --- saliency, deconvnet, guided backprop ---------------------------------------------------


@pytest.mark.parametrize("target", [3, [3, 500], torch.tensor([7, 3]), torch.tensor(3)], ids=str)
def test_backward_maps_of_a_class_equal_captum(vgg, target):
    model, twin = vgg
    x = images(2, 32, seed=2)
    captum_target = target.tolist() if isinstance(target, torch.Tensor) else target
    gb = guided_backprop(model, x, target=target)
    assert gb.shape == x.shape and gb.abs().sum() > 0
    torch.testing.assert_close(gb, GuidedBackprop(twin).attribute(x, target=captum_target))
    torch.testing.assert_close(
        deconvnet(model, x, target=target), Deconvolution(twin).attribute(x, target=captum_target)
    )
    torch.testing.assert_close(
        saliency(model, x, target=target), Saliency(twin).attribute(x, target=captum_target)
    )
    torch.testing.assert_close(
        saliency(model, x, target=target, abs=False),
        Saliency(twin).attribute(x, target=captum_target, abs=False),
    )
    assert not has_hooks(model) and not has_hooks(twin) and mode_stack_empty()


def test_backward_maps_of_a_unit_equal_project():
    model, x = small(), images()
    units = torch.tensor([0, 4, 2, 2])
    for method, rule in ((saliency, "backprop"), (guided_backprop, "guided_backprop")):
        expected, _ = project(model, x, "conv2", units, rule)
        got = method(model, x, units.tolist(), layer="conv2")
        torch.testing.assert_close(got, expected.abs() if method is saliency else expected)
    locations = torch.tensor([0, 5, 15, 9])
    expected, _ = project(model, x, "conv2", units, "deconvnet", locations=locations)
    torch.testing.assert_close(
        deconvnet(model, x, units, layer="conv2", location=locations), expected
    )
    one = project(
        model, x, "conv2", torch.full((4,), 3), "guided_backprop", locations=torch.full((4,), 6)
    )
    torch.testing.assert_close(guided_backprop(model, x, 3, layer="conv2", location=6), one[0])
    uniform, _ = project(model, x, "conv2", units, "deconvnet", maxpool="uniform")
    torch.testing.assert_close(deconvnet(model, x, units, layer="conv2", switches=False), uniform)
    assert not torch.allclose(uniform, deconvnet(model, x, units, layer="conv2"))


def test_backward_maps_check_their_arguments_and_leave_no_hooks():
    model, x = small(), images()
    with pytest.raises(ValueError, match="3 values for 4 images"):
        guided_backprop(model, x, target=[0, 1, 2])
    with pytest.raises(ValueError, match=r"batch \(N, C, H, W\)"):
        saliency(model, x[0], target=1)
    with pytest.raises(InstrumentError, match="no module 'conv9'"):
        guided_backprop(model, x, target=1, layer="conv9")
    assert not has_hooks(model) and mode_stack_empty()


# --- occlusion ------------------------------------------------------------------------------


def test_occlusion_with_and_without_a_layer():
    model, x = small(), images(1)[0]
    with_layer = occlusion(model, x, target=2, layer="conv2", window=2, stride=2, batch_size=5)
    without = occlusion(model, x, target=torch.tensor(2), window=2, stride=2)
    assert isinstance(without, OcclusionMaps)
    assert without.p_true.shape == without.label.shape == (4, 4)
    assert without.feature is None and without.feature_unit is None
    assert with_layer.feature.shape == (4, 4) and with_layer.feature_unit is not None
    np.testing.assert_allclose(without.p_true, with_layer.p_true, rtol=1e-6)
    np.testing.assert_array_equal(without.boxes, with_layer.boxes)
    xo = x.clone()
    xo[:, 2:4, 4:6] = 0  # grid position (1, 2)
    with torch.no_grad():
        p = model(xo[None]).softmax(1)[0, 2].item()
    assert without.p_true[1, 2] == pytest.approx(p, rel=1e-5)
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        occlusion(model, x[None], target=2, window=2, stride=2)
    assert not has_hooks(model)


# --- top activations ------------------------------------------------------------------------


def test_top_activations_of_a_tensor_a_loader_and_batches_agree():
    model = small()
    x, y = images(19, seed=3), torch.arange(19) % 4
    from_tensor = top_activations(model, x, "conv2", k=4, batch_size=5)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    from_loader = top_activations(model, loader, ["conv2", "fc"], k=4)
    from_batches = top_activations(model, list(x.split(5)), "conv2", k=4)
    assert isinstance(from_tensor, TopK) and set(from_loader) == {"conv2", "fc"}
    for got in (from_loader["conv2"], from_batches):
        for field in ("values", "index", "location"):
            torch.testing.assert_close(getattr(got, field), getattr(from_tensor, field))
    with torch.no_grad():  # the same batches: a linear layer's sums depend on the batch size
        conv = torch.cat([model.conv2(model.pool(model.conv1(b).relu())) for b in x.split(5)])
    best = conv.flatten(2).max(2).values.topk(4, dim=0)
    torch.testing.assert_close(from_tensor.values, best.values, rtol=0, atol=0)
    torch.testing.assert_close(from_tensor.index, best.indices, rtol=0, atol=0)
    assert from_tensor.values.shape == (4, 5) and from_tensor.shape == (4, 4)
    assert from_loader["fc"].shape == (1, 1) and not has_hooks(model)


# --- activation maximisation ----------------------------------------------------------------


def _net_for_actmax() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(96, 5)
    ).eval()


def test_actmax_yosinski_equals_the_lower_level_function():
    model = _net_for_actmax()
    vis = actmax(model, target=[1, 3], setting=3, iterations=10, size=8, seed=4)
    assert isinstance(vis, Visualisation)
    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 10
    to_input, mean, bounds = pixel_space(IMAGENET_RGB)
    setting = YOSINSKI_SETTINGS[3]
    res = yosinski(
        unit_objective(model, None, torch.tensor([1, 3])), start, to_input, setting, bounds, 10
    )
    torch.testing.assert_close(vis.inputs, to_input(res.images), rtol=0, atol=0)
    torch.testing.assert_close(vis.images, ((res.images + mean) / 255).clamp(0, 1))
    torch.testing.assert_close(vis.final, res.final, rtol=0, atol=0)
    torch.testing.assert_close(vis.start, res.start, rtol=0, atol=0)
    assert vis.images.shape == (2, 3, 8, 8) and 0 <= vis.images.min() and vis.images.max() <= 1
    assert vis.target.tolist() == [1, 3]
    assert vis.settings["method"] == "yosinski" and vis.settings["iterations"] == 10


def test_actmax_of_a_unit_and_erhan():
    model = _net_for_actmax()
    vis = actmax(model, 2, layer="0", method="erhan", iterations=10, size=8, rho=6.0, seed=1)
    start = IMAGENET_RGB.from_unit(
        torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    )
    res = erhan(unit_objective(model, "0", torch.tensor([2])), start, 6.0, 10)
    torch.testing.assert_close(vis.inputs, res.images, rtol=0, atol=0)
    torch.testing.assert_close(vis.inputs.flatten(1).norm(dim=1), torch.tensor([6.0]))
    assert vis.images.min() == 0 and vis.images.max() == 1  # stretched for display
    assert vis.final > vis.start
    # a BGR net: the images are shown in RGB, the network's input is in BGR
    bgr = Preprocessing(1.0, [0.4, 0.45, 0.5], [0.2, 0.25, 0.3], bgr=True)
    flipped = actmax(model, 2, iterations=3, size=8, preprocessing=bgr)
    _, mean, _ = pixel_space(bgr)
    std = torch.tensor(bgr.std).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(flipped.images.flip(1) * 255, flipped.inputs * std + mean)
    with pytest.raises(ValueError, match="method"):
        actmax(model, 1, method="lucid", size=8)
    with pytest.raises(ValueError, match="setting must be one of"):
        actmax(model, 1, setting=5, size=8)
    with pytest.raises(ValueError, match="input size"):
        actmax(model, 1, preprocessing=Preprocessing())
    assert not has_hooks(model)


# --- Network Dissection ---------------------------------------------------------------------


def _make_broden(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_broden", ROOT / "tests" / "fixtures" / "make_broden.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_fixture(root, rng_seed=0)


@pytest.fixture
def broden(tmp_path) -> Path:
    return _make_broden(tmp_path / "broden")


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def _uint8(images) -> torch.Tensor:
    return torch.as_tensor(np.array(images)).permute(0, 3, 1, 2).float() / 255


def test_dissect_a_broden_folder_equals_dissect_layers(broden):
    torch.manual_seed(0)
    model = Convs().eval()
    pre = Preprocessing(1.0, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], input_size=16)
    got = dissect(model, "conv2", broden, preprocessing=pre, quantile=0.05, top_k=2)
    ds = BrodenDataset(broden)
    ref, _ = dissect_layers(
        model, pre, ["conv2"], ds, size=16, device="cpu", quantile=0.05, workers=0, top_k=2
    )
    ref = ref["conv2"]
    assert isinstance(got, Dissection)
    np.testing.assert_array_equal(got.thresholds, ref.thresholds)
    np.testing.assert_array_equal(got.result.iou, ref.iou)
    np.testing.assert_array_equal(got.iou, ref.labels.best_iou)
    names = [got.concepts.names[c] for c in ref.labels.best]
    assert got.concept == names and len(got.concept) == 3
    assert got.category == [
        got.concepts.categories[got.concepts.category[c]] for c in ref.labels.best
    ]
    np.testing.assert_array_equal(got.detector, ref.labels.best_iou > 0.04)
    assert got.detectors == count_detectors(ref.labels, got.concepts, 0.04)
    assert set(got.detectors) == {"top_label", "per_category"} and got.iou.max() > 0
    both = dissect(model, ["conv1", "conv2"], str(broden), preprocessing=pre, quantile=0.05)
    np.testing.assert_array_equal(both["conv2"].thresholds, ref.thresholds)
    assert len(both["conv1"].concept) == 4
    with pytest.raises(ValueError, match="names its labels itself"):
        dissect(model, "conv2", broden, preprocessing=pre, labels={1: "x"})
    assert not has_hooks(model)


def test_dissect_pairs_held_in_memory_equal_the_folder(broden):
    torch.manual_seed(0)
    model = Convs().eval()
    pre = Preprocessing(1.0, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], input_size=16)
    ds = BrodenDataset(broden)
    pairs = []
    for i in range(len(ds)):
        item = ds.item(i)
        labels = {c: stack for c, stack in item["masks"].items()}
        labels |= {c: numbers for c, numbers in item["image_labels"].items()}
        pairs.append((item["image"], labels))
    names = {n: name for n, name, _ in ds.labels}
    folder = dissect(model, "conv2", broden, preprocessing=pre, quantile=0.05)
    memory = dissect(model, "conv2", iter(pairs), preprocessing=pre, quantile=0.05, labels=names)
    np.testing.assert_array_equal(memory.thresholds, folder.thresholds)
    # the primary category from the coverage in both (the folder's c_*.csv, the masks' area in
    # memory): grass is an object and a texture, half an image each, a tie, the later: texture
    assert sorted(memory.concepts.names) == sorted(folder.concepts.names)
    for name in folder.concepts.names:
        i, j = folder.concepts.names.index(name), memory.concepts.names.index(name)
        primary = folder.concepts.categories[folder.concepts.category[i]]
        assert memory.concepts.categories[memory.concepts.category[j]] == primary
        np.testing.assert_allclose(memory.result.iou[:, j], folder.result.iou[:, i], atol=1e-12)
    grass = folder.concepts.names.index("grass")
    assert folder.concepts.categories[folder.concepts.category[grass]] == "texture"
    unnamed = dissect(model, "conv2", pairs, preprocessing=pre, quantile=0.05)
    assert sorted(unnamed.concepts.names) == sorted(str(n) for n in names)


def test_memory_probe_checks_its_pairs():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        MemoryProbe([(image.astype(np.float32), {"object": np.ones((4, 4), int)})])
    with pytest.raises(ValueError, match="one shape"):
        MemoryProbe(
            [(image, {"object": np.ones((4, 4), int)}), (image, {"object": np.ones((2, 2), int)})]
        )
    with pytest.raises(ValueError, match="integers"):
        MemoryProbe([(image, {"object": np.ones((4, 4))})])
    with pytest.raises(ValueError, match="no images"):
        MemoryProbe([])
    probe = MemoryProbe(
        [(image, {"object": np.array([[0, 2], [2, 0]]), "scene": 5}), (image, {"scene": [5, 6]})],
        labels={2: "lamp", 5: "street"},
    )
    assert probe.categories == ["object", "scene"] and len(probe) == 2
    assert probe.labels == [(2, "lamp", "object"), (5, "street", "scene"), (6, "6", "scene")]
    assert probe.item(1, image=False) == {
        "image": None,
        "masks": {},
        "image_labels": {"scene": [5, 6]},
        "mask_shape": (2, 2),
    }


# --- ablation -------------------------------------------------------------------------------


def test_ablate_equals_one_full_pass_per_unit():
    model = small().double()
    x = images(40, seed=5).double()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = torch.arange(4)  # every class present, some images wrong
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    got = ablate(model, "conv2", loader, group=4)
    assert isinstance(got, UnitAblation)
    assert got.accuracy.shape == (5,) and got.class_accuracy.shape == (5, 4)

    def zero(unit):
        def edit(out):
            out = out.clone()
            if unit is not None:
                out[:, unit] = 0
            return out

        return edit

    rows = []
    with torch.no_grad():
        for unit in [None, 0, 1, 2, 3, 4]:
            with Instrument(model, edit={"conv2": zero(unit)}):
                right = model(x).argmax(1) == y
            rows.append(
                [right[y == c].double().mean().item() for c in range(4)]
                + [right.double().mean().item()]
            )
    rows = np.array(rows)
    assert got.base_accuracy == pytest.approx(rows[0, -1])
    np.testing.assert_allclose(got.base_class_accuracy, rows[0, :4])
    np.testing.assert_allclose(got.accuracy, rows[1:, -1])
    np.testing.assert_allclose(got.class_accuracy, rows[1:, :4])
    assert (rows[1:, -1] != rows[0, -1]).any()  # zeroing a unit changes something
    np.testing.assert_array_equal(got.class_totals, np.bincount(y.numpy(), minlength=4))
    engine = Ablation(model, "conv2", "cpu")
    engine.cache(loader, 1e6, len(x))
    np.testing.assert_allclose(got.selectivity, selectivity(engine.class_means()))
    some = ablate(model, "conv2", loader, units=[3, 1])
    np.testing.assert_array_equal(some.units, [3, 1])
    np.testing.assert_allclose(some.class_accuracy, got.class_accuracy[[3, 1]])
    with pytest.raises(ValueError, match="units must be in 0..4"):
        ablate(model, "conv2", loader, units=[5])
    correct = engine.correct(single_units(5)).double()
    np.testing.assert_allclose(got.accuracy, (correct.sum(1) / len(x)).numpy())


# --- every function: no_grad, inference_mode, no hooks ----------------------------------------


def _every_function(model, x, loader_of, pairs):
    """name -> the function called on tensors made by the caller (inference tensors under
    inference_mode), returning what is compared across modes."""
    return {
        "saliency": lambda: saliency(model, x(), target=torch.tensor([0, 1, 2, 3]), layer=None),
        "deconvnet": lambda: deconvnet(model, x(), target=2, layer="conv2"),
        "guided_backprop": lambda: guided_backprop(
            model,
            x(),
            target=torch.tensor([1, 0, 4, 2]),
            layer="conv2",
            location=torch.tensor([0, 3, 5, 7]),
        ),
        "occlusion": lambda: torch.from_numpy(
            occlusion(model, x()[0], target=1, layer="conv2", window=3, stride=2).p_true
        ),
        "top_activations": lambda: top_activations(model, loader_of(), "conv2", k=2).values,
        "actmax": lambda: actmax(model, torch.tensor([1, 2]), iterations=3, size=8).images,
        "actmax_erhan": lambda: (
            actmax(model, 0, layer="conv2", method="erhan", iterations=3, size=8).inputs
        ),
        "dissect": lambda: torch.from_numpy(dissect(model, "conv2", pairs(), size=8).result.iou),
        "ablate": lambda: torch.from_numpy(ablate(model, "conv2", loader_of()).class_accuracy),
    }


EVERY_FUNCTION = [
    "saliency",
    "deconvnet",
    "guided_backprop",
    "occlusion",
    "top_activations",
    "actmax",
    "actmax_erhan",
    "dissect",
    "ablate",
]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", EVERY_FUNCTION)
def test_every_function_works_under_no_grad_and_inference_mode(name, mode):
    model = small()

    def x():
        return images(4)

    def loader_of():
        xs = images(10, seed=7)
        return DataLoader(TensorDataset(xs, torch.arange(10) % 4), batch_size=4)

    def pairs():
        rng = np.random.default_rng(0)
        return [
            (
                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                {"object": rng.integers(0, 3, (4, 4))},
            )
            for _ in range(3)
        ]

    run = _every_function(model, x, loader_of, pairs)[name]
    expected = run()
    with MODES[mode]():
        got = run()
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert not has_hooks(model) and mode_stack_empty()


def test_no_hooks_are_left_after_an_error():
    model = small()
    x = images(4)
    calls = [
        lambda: saliency(model, x, target=9),  # no class 9
        lambda: guided_backprop(model, x, target=0, layer="nowhere"),
        lambda: deconvnet(model, x, target=[0, 1, 2, 3], layer="conv2", location=[0, 1, 2, 99]),
        lambda: occlusion(model, x[0], target=0, layer="nowhere", window=2, stride=2),
        lambda: top_activations(model, x, ["conv2", "nowhere"]),
        lambda: actmax(model, 0, layer="nowhere", size=8, iterations=1),
        lambda: dissect(
            model, "nowhere", [(np.zeros((8, 8, 3), np.uint8), {"o": np.ones((4, 4), int)})], size=8
        ),
        lambda: ablate(model, "nowhere", [(x, torch.zeros(4, dtype=torch.long))]),
    ]
    for call in calls:
        with pytest.raises(Exception):  # noqa: B017  (each fails its own way)
            call()
        assert not has_hooks(model) and mode_stack_empty()


def test_the_package_re_exports_the_notebook_functions():
    import cvinterp.methods as methods

    for name in methods.__all__:
        assert getattr(methods, name) is not None
    assert callable(methods.occlusion) and callable(methods.actmax)  # the functions, not modules
    for cls in (Dissection, OcclusionMaps, TopK, UnitAblation, Visualisation):
        assert dataclasses.is_dataclass(cls) and cls.__doc__


# --- the README's example -------------------------------------------------------------------


def readme_example() -> str:
    """The one python block of the README's section "Use the methods on your own model"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use the methods on your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section has one python block"
    return blocks[0]


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's example, run as written except for one change: the pretrained weights
    (`weights="DEFAULT"`, a download) are replaced by random ones (`weights=None`). Its data is
    the stand-in it names (torchvision's FakeData), and its Broden folder is the tiny one of
    tests/fixtures/make_broden.py, written where the example reads it (the working directory)."""
    code = readme_example()
    assert code.count('weights="DEFAULT"') == 1
    code = code.replace('weights="DEFAULT"', "weights=None")
    folder = re.search(r'dissect\(model, "[^"]+", "([^"]+)"', code).group(1)
    _make_broden(tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), namespace)
    x, model = namespace["x"], namespace["model"]
    assert namespace["maps"].shape == x.shape == namespace["unit_maps"].shape
    assert isinstance(namespace["occluded"], OcclusionMaps)
    assert isinstance(namespace["top"], TopK) and namespace["top"].values.shape[0] == 9
    assert isinstance(namespace["images"], Visualisation)
    assert isinstance(namespace["units"], Dissection) and len(namespace["units"].concept) == 512
    ablated = namespace["ablated"]
    assert isinstance(ablated, UnitAblation) and ablated.accuracy.shape == (512,)
    assert not has_hooks(model) and mode_stack_empty()
