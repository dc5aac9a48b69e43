"""Peak memory is bounded by the batch, not by the dataset: each paper-scale experiment that
streams its images runs on the CPU, in a child process, on n and then on 8n images of
synthetic data in the real formats (an ImageNet validation tree of JPEGs in wnid folders,
Broden folders, Fashion-MNIST IDX files), with the paper's architectures at random weights.
The peak resident memory of a child process running on n images and of one running on 8n
images are compared: holding the data would add 7n images' worth; streaming adds next to
nothing (the batches are the same size at both counts).

Left out, and why:
- embedding: t-SNE embeds every image's features at once, so the features of all `images`
  are held by the method's nature (the images themselves stream);
- ablation: every unit of AlexNet conv5 (256) ablated over every image is hundreds of passes
  through fc6-fc8 per image, minutes on two cores; and it holds the ablated layer's features
  of every image by design (`methods/ablation.py`'s cache: on the device where they fit, else
  in host memory; at the paper's 50,000 images AlexNet conv5 is 8.7 GB, VGG16 conv5_3 20 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 64  # images of the small run; the large one has 8 N (batches of 64 or fewer at both)
FLOAT_224 = 3 * 224 * 224 * 4  # one preprocessed AlexNet input


@dataclass(frozen=True)
class Case:
    experiment: str
    small: int
    #: what holding one image costs the experiment (bytes): the bound is a quarter of 8n of them
    per_image: int


CASES = {
    "top_images": Case("top_images", N, FLOAT_224),
    "activations": Case("activations", N, FLOAT_224),
    "guided_backprop": Case("guided_backprop", N, FLOAT_224),
    "dissection": Case("dissection", N, FLOAT_224),
    # All-CNN-C on Fashion-MNIST: the share of saliency on the item over `claim_images` (the
    # paper profile's 1000), its gradients in batches of `backprop.CLAIM_BATCH` (before: one
    # batch of all). Holding an image costs its forward activations (kept for the gradient):
    # ~1.3 MB at 28 px, measured in the child.
    "backprop_claim_images": Case("backprop", 125, 0),
}


# --------------------------------------------------------------------------- the child


def _checkpoint(path: Path, arch: str, classes: int, channels: int, pre, meta: dict) -> str:
    """A seeded random-weight net of the zoo saved as a checkpoint at `path`."""
    import torch

    from cvinterp.models import build, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(
        path,
        build(arch, classes, channels),
        arch=arch,
        num_classes=classes,
        in_channels=channels,
        arch_args={},
        preprocessing=pre,
        classes=[str(i) for i in range(classes)],
        meta=meta,
    )
    return str(path)


def _alexnet(path: Path) -> str:
    from cvinterp.models import IMAGENET_RGB

    return _checkpoint(
        path, "alexnet", 1000, 3, IMAGENET_RGB, {"name": "alexnet", "weights": "random"}
    )


def _all_cnn(path: Path) -> str:
    from cvinterp.models import Preprocessing

    pre = Preprocessing(1.0, [0.286], [0.353], False, 28)
    return _checkpoint(path, "all_cnn_c", 10, 1, pre, {"name": "allcnn_fmnist", "weights": "train"})


def _activation_bytes(model, x) -> int:
    """Bytes of every module output of one forward pass (what a backward pass keeps)."""
    import torch

    total = [0]

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0] // len(x)


def _setup(case: Case, data: Path, work: Path, n: int):
    """(models, the experiment's settings, probe) of a run on n images."""
    from cvinterp.experiments import Model, Probe

    probe = dict(datasets={"imagenet_val": {"dir": str(data / "val")}}, imagenet_probe=n)
    alexnet = {"arch": "alexnet", "weights": "random"}
    if case.experiment in ("top_images", "activations", "guided_backprop"):
        layers = {"guided_backprop": ["conv5"]}.get(case.experiment, ["conv1", "conv3", "conv5"])
        ckpt = _alexnet(work / "alexnet.pt") if n == case.small else str(work / "alexnet.pt")
        models = {"alexnet": Model("alexnet", ckpt, alexnet, {"layers": layers})}
        settings = {
            "top_images": {"units": 8, "k": 9, "max_images": None},
            "activations": {"images": n},
            "guided_backprop": {"units": 2, "k": 3, "max_images": None, "test_error_model": None},
        }[case.experiment]
    elif case.experiment == "dissection":
        ckpt = _alexnet(work / "alexnet.pt") if n == case.small else str(work / "alexnet.pt")
        spec = {"layers": ["conv1", "conv5"], "size": None, "references": {}}
        folder = str(data / f"broden{n}" / "broden1_224")
        models = {"alexnet": Model("alexnet", ckpt, alexnet, spec, data={"probe": folder})}
        settings = dict(
            dataset="broden",
            scoring="original",
            upsample=None,
            random_copies=0,
            rotations=[],
            snapshots=False,
            quantile=0.005,
            iou_threshold=0.04,
            batch_size=32,
            cache_mb=0,  # the streaming path: what a probe at Broden's size takes
            top_units=2,
            top_images=4,
        )
    else:  # backprop's saliency share over claim_images, All-CNN-C on Fashion-MNIST
        ckpt = _all_cnn(work / "allcnn.pt") if n == case.small else str(work / "allcnn.pt")
        spec = {"arch": "all_cnn_c", "dataset": "fashion_mnist", "train": {"epochs": 1}}
        models = {"allcnn_fmnist": Model("allcnn_fmnist", ckpt, spec, {})}
        pins = json.loads((data / "fashion_pins.json").read_text())
        probe = dict(
            datasets={"fashion_mnist": {"content_sha256": pins}}, fashion_dir=str(data / "fm")
        )
        settings = dict(
            images=2,
            sanity={"model": "allcnn_fmnist", "images": 2, "randomise_top": 1},
            claim_images=n,
            data_randomisation=None,
        )
    return models, settings, Probe(**probe, threads=1)


def child(name: str, data: str, work: str, n: str) -> None:
    """Run one case on n images; print the process's peak resident memory (bytes)."""
    import resource

    import torch

    from cvinterp.experiments import EXPERIMENTS

    torch.set_num_threads(1)
    case, n = CASES[name], int(n)
    models, settings, probe = _setup(case, Path(data), Path(work), n)
    EXPERIMENTS[case.experiment].compute(
        models, **settings, probe=probe, device=torch.device("cpu")
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    per_image = case.per_image
    if not per_image:  # the forward activations of one image (gradient methods)
        from cvinterp.models import load_checkpoint

        net, _, _ = load_checkpoint(next(iter(models.values())).checkpoint)
        per_image = _activation_bytes(net, torch.zeros(4, 1, 28, 28))
    print("RESULT " + json.dumps({"peak": peak, "per_image": per_image}))


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic data in the real formats, written once for every case."""
    from cvinterp.rehearsal import synthetic

    root = tmp_path_factory.mktemp("streaming")
    synthetic.imagenet_val(root / "val", 1000, sizes=((96, 72), (72, 96)))
    for n in (N, 8 * N):
        synthetic.broden(root / f"broden{n}", "broden1_224", n, 224)
    small = CASES["backprop_claim_images"].small
    pins = synthetic.fashion_mnist(root / "fm", 100, 8 * small)
    (root / "fashion_pins.json").write_text(json.dumps(pins))
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_peak_memory_is_bounded_by_the_batch_not_the_dataset(name, data, tmp_path):
    case = CASES[name]
    # each size in a fresh process; glibc told to hand freed memory back, so that the peaks
    # measure what is held rather than how the allocator's arenas happen to fragment
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env |= {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0"}
    peaks, result = {}, {}
    for n in (case.small, 8 * case.small):  # the small run writes the checkpoint
        out = subprocess.run(
            [sys.executable, __file__, name, str(data), str(tmp_path), str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-4000:]
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT ") :])
        peaks[n] = result["peak"]
    small, large = case.small, 8 * case.small
    growth = peaks[large] - peaks[small]
    held = large * result["per_image"]  # what holding the large run's images would cost
    print(
        f"{name}: peak RSS {peaks[small] / 2**20:.0f} MiB at {small} images, "
        f"{peaks[large] / 2**20:.0f} MiB at {large}; growth {growth / 2**20:.1f} MiB, "
        f"holding {large} images {held / 2**20:.0f} MiB"
    )
    assert growth < 0.25 * held, (
        f"{name}: peak memory grew by {growth / 2**20:.0f} MiB from {small} to {large} images "
        f"(holding them: {held / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    child(*sys.argv[1:5])
