"""What the experiments share: the declaration the workflow reads, the models and probe images a
job is given, the pieces several unit-level figures are built from, and the claim helpers.

An experiment module (one per rule, named as the rule) has a `DECLARATION` and three parts read
top to bottom:

- `compute(models, *, <its settings>, probe, device) -> Computed`: loads and measures; returns
  the metrics (plain data, written as the experiment's metrics file) and what its figures show;
- `figures(result, figure_dir)`: draws from that result only, one file per declared figure;
- `claims(result) -> {claim id: {"value", "ours"} or {"na"}}`: the entries of compare.tsv.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import stats
from cvinterp.data import dataset_kwargs, load_images, photos
from cvinterp.data.images import ImageData
from cvinterp.data.probe import (
    IMAGENET_CHECK,
    FolderProbe,
    InMemoryProbe,
    centre_square,
    photo_crops,
)
from cvinterp.instrument import model_device
from cvinterp.methods.backward import project
from cvinterp.methods.top_images import receptive_field, top_activations
from cvinterp.models import layer_path, load_checkpoint, zoo


def _none(settings: dict) -> list[str]:
    return []


def _model_figures(settings: dict) -> list[str]:
    return list(settings["models"])


def imagenet_nets(settings: dict, models: dict) -> list[str]:
    """The experiment's models with ImageNet weights (imported or random: `weights` other than
    `train`), from its settings and the config's `models`."""
    return [m for m in settings["models"] if models[m].get("weights", "train") != "train"]


@dataclass(frozen=True)
class Declaration:
    """What the workflow needs to know of an experiment before it runs (rules, inputs, outputs,
    resources, config checks); nothing here reads a file."""

    #: figure names (files figures/<experiment>/<name>.png) from the experiment's settings
    figures: Callable[[dict], list[str]] = _model_figures
    #: table names (files tables/<experiment>/<name>.csv)
    tables: Callable[[dict], list[str]] = _none
    #: models whose training metrics (metrics/models/<model>.json) the experiment reads
    training_metrics: Callable[[dict], list[str]] = _none
    #: settings (dotted keys) that name one of the experiment's models
    model_references: tuple[str, ...] = ()
    #: its models are language models (config `language_models`), not image models
    language_models: bool = False
    #: "input" is a layer too (the identity: an inversion must give the image back)
    input_layer: bool = False
    #: its models read a probe set in the Broden layout (each model's `data["probe"]`), and the
    #: authors' released results (`data["released"]`)
    broden: bool = False
    #: cross-checks of its settings a schema cannot say; raise ValueError naming the key
    check: Callable[[dict], None] | None = None
    #: report caption per figure name, where it is not the experiment's own
    captions: dict[str, str] = field(default_factory=dict)
    #: CPU threads (None: the config's `threads`), memory (MB) and time limit (minutes) of its
    #: job, each (default profile, paper profile); whether it can use a GPU; whether it is
    #: short enough to share a cluster job with other short experiments
    threads: int | None = None
    mem_mb: tuple[int, int] = (4000, 16000)
    runtime: tuple[int, int] = (60, 360)
    gpu: bool = True
    short: bool = False
    #: (settings, the config's `models`) -> the experiment's models that need the ImageNet
    #: validation folder (datasets.imagenet_val.dir), having no offline stand-in that measures
    #: the same thing; without the folder the plan leaves them out (the experiment too when
    #: none is left) and the comparison says why. None: none needs it.
    needs_imagenet: Callable[[dict, dict], list[str]] | None = None


@dataclass
class Computed:
    """What `compute` returns: `metrics` is written to metrics/<experiment>.json (with the
    claims); `data` holds what the figures draw and the claims read beyond the metrics (images,
    maps, settings), and is not written."""

    metrics: dict
    data: dict = field(default_factory=dict)


@dataclass
class Model:
    """One model of an experiment as the workflow resolved it."""

    name: str
    checkpoint: str
    spec: dict  # its entry under the config's `models` (or `language_models`)
    settings: dict = field(default_factory=dict)  # its entry under the experiment's `models`
    metrics: str | None = None  # its training metrics, when the experiment reads them
    data: dict = field(default_factory=dict)  # folders it reads (corpus, probe, ...)


@dataclass
class Probe:
    """Where probe images come from (the config's datasets section, resolved paths)."""

    datasets: dict
    fashion_dir: str | None = None
    cifar_dir: str | None = None
    seed: int = 0
    imagenet_probe: int = 256
    threads: int = 2  # CPU threads of the job: image-reading workers, t-SNE


def split_of(spec: dict, split: str, probe: Probe) -> ImageData:
    """A split of the dataset a model of the config was trained on."""
    kw = dataset_kwargs(
        spec["dataset"], probe.datasets, probe.fashion_dir, probe.cifar_dir, probe.seed
    )
    return load_images(spec["dataset"], split, **kw)


# --- a model and its probe images ----------------------------------------------------------


@dataclass
class Loaded:
    name: str
    model: torch.nn.Module
    pre: object  # Preprocessing
    arch: str
    classes: list
    spec: dict
    images: object  # InMemoryProbe | FolderProbe
    size: int
    channels: int
    imagenet: bool  # an ImageNet net (imported or random weights), not one trained here


def imagenet_folder(folder, size: int, n: int | None, pre, arch: str, probe: Probe) -> FolderProbe:
    """A seeded class-stratified sample of n images (None: all, in that order) of the ImageNet
    validation `folder` for an ImageNet net, resized to its preprocessing's short side (or, for
    a checkpoint written before that was recorded, the zoo's) and centre-cropped to `size`."""
    resize = getattr(pre, "resize", None)
    if resize is None:
        resize = zoo().get(arch, {}).get("resize")
    return FolderProbe(folder, size, n, probe.threads, seed=probe.seed, resize=resize)


def load(model: Model, probe: Probe, device, frozen: bool = False) -> Loaded:
    """A model from its checkpoint, in eval mode, with its probe images: a net trained here looks
    at its dataset's test split; an ImageNet net at a seeded class-stratified sample of the
    validation folder (resized and centre-cropped as its weights were evaluated), or offline at
    crops of the bundled photos. `frozen`: no parameter needs a gradient
    (methods that optimise the input)."""
    net, pre, ckpt = load_checkpoint(model.checkpoint, device)
    net.eval()
    if frozen:
        net.requires_grad_(False)
    spec = model.spec
    imagenet = spec.get("weights", "train") != "train"
    if not imagenet:
        data = split_of(spec, "test", probe)
        images = InMemoryProbe(data, f"{spec['dataset']} test split ({len(data)} images)")
        size = data.images.shape[1]
    else:
        size = pre.input_size
        folder = probe.datasets.get("imagenet_val", {}).get("dir")
        if folder:
            images = imagenet_folder(folder, size, probe.imagenet_probe, pre, ckpt["arch"], probe)
        else:
            crops = photo_crops(size, probe.imagenet_probe, probe.seed)
            images = InMemoryProbe(
                crops, f"offline stand-in: {len(crops)} {size}px crops of the 12 bundled photos"
            )
    return Loaded(
        model.name,
        net,
        pre,
        ckpt["arch"],
        ckpt["classes"],
        spec,
        images,
        size,
        ckpt["in_channels"],
        imagenet,
    )


def module_path(m: Loaded, layer: str) -> str | None:
    """A paper-named layer's module path; "input" is the identity (None: the network's input)."""
    return None if layer == "input" else layer_path(m.arch, layer)


def inputs(m: Loaded, images: np.ndarray, device) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> the network's input on the device."""
    return m.pre(np.asarray(images)).to(device)


def limit(batches: Iterable, n: int) -> Iterator:
    """The first n items of a stream of batches."""
    seen = 0
    for x in batches:
        if seen >= n:
            return
        x = x[: n - seen]
        seen += len(x)
        yield x


def spread(n_units: int, k: int) -> list[int]:
    """k units spread evenly over a layer's channels (deterministic)."""
    return sorted({int(round(v)) for v in np.linspace(0, n_units - 1, min(k, n_units))})


def offline_imagenet(m: Loaded) -> bool:
    """An ImageNet net without a validation folder: its labelled images are the bundled photos
    of known class."""
    return m.imagenet and not isinstance(m.images, FolderProbe)


def probe_images(m: Loaded, n: int) -> np.ndarray:
    """The first n labelled probe images (of the ImageNet folder: of its stratified sample, so
    a stratified sample too); offline, an ImageNet net's bundled photos of known class (uint8
    NHWC)."""
    if offline_imagenet(m):
        photo = photos(list(IMAGENET_CHECK)).values()
        return np.stack([centre_square(im, m.size) for im in photo])[:n]
    return np.stack([m.images.image(i) for i in range(min(n, len(m.images)))])


def class_images(m: Loaded, n: int, device) -> tuple[np.ndarray, torch.Tensor]:
    """Images and the class each map explains: labelled images (true class) for a model trained
    here or an ImageNet net with a validation folder; offline, the bundled photos of known
    ImageNet class (the most probable of their classes)."""
    imgs = probe_images(m, n)
    if offline_imagenet(m):
        with torch.no_grad():
            prob = m.model(inputs(m, imgs, device)).softmax(1).cpu()
        known = list(IMAGENET_CHECK.values())[: len(imgs)]
        return imgs, torch.tensor(
            [max(ids, key=lambda c, i=i: prob[i, c]) for i, ids in enumerate(known)]
        )
    return imgs, torch.as_tensor(m.images.labels[: len(imgs)])


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1] (a tensor stays on its device)."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    return x.permute(0, 3, 1, 2).float() / 255


def from_unit(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C)."""
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


# --- the top activations of units, and their projections -----------------------------------


@dataclass
class LayerTops:
    layer: str  # paper name
    path: str  # module path
    tops: object  # TopK
    field: object  # Field
    boxes: np.ndarray  # (H*W, 4) receptive field of every feature-map position


def layer_tops(
    m: Loaded, layers: list[str], k: int, max_images: int | None, observe=None
) -> tuple[int, list[LayerTops]]:
    """The top-k images of every unit of the chosen layers in one pass over the probe images
    (`observe(path, activations)` sees that pass too), and each layer's receptive field:
    (images seen, one LayerTops per layer)."""
    paths = [layer_path(m.arch, layer) for layer in layers]
    n = len(m.images) if max_images is None else min(max_images, len(m.images))
    bar = tqdm(total=n, desc=f"{m.name}: top-{k} images", mininterval=5)
    batches = limit(m.images.batches(m.pre, 64, model_device(m.model)), n)
    tops = top_activations(m.model, batches, paths, k=k, progress=bar, observe=observe)
    bar.close()
    out = []
    for layer, p in zip(layers, paths, strict=True):
        field_ = receptive_field(m.model, p, m.channels, probe=max(96, 2 * m.size))
        out.append(LayerTops(layer, p, tops[p], field_, field_.boxes(tops[p].shape, (m.size,) * 2)))
    return n, out


@dataclass
class TopActivations:
    """The top activations of chosen units, unit-major (each unit's top-k in a row)."""

    images: np.ndarray  # uint8 (N, H, W, C)
    x: torch.Tensor  # the same, preprocessed, on the device
    unit: torch.Tensor  # (N,)
    location: torch.Tensor  # (N,) flat feature-map position
    box: np.ndarray  # (N, 4) receptive field at that position


def top_activations_of(m: Loaded, lt: LayerTops, chosen: list[int], device) -> TopActivations:
    """Read each chosen unit's top-k images once, for every projection of them."""
    idx = lt.tops.index[:, chosen].T.reshape(-1).numpy()
    loc = lt.tops.location[:, chosen].T.reshape(-1)
    images = np.stack([m.images.image(int(i)) for i in idx])
    unit = torch.tensor(chosen).repeat_interleave(lt.tops.index.shape[0])
    x = inputs(m, images, device)
    return TopActivations(images, x, unit.to(device), loc.to(device), lt.boxes[loc.numpy()])


def projections(
    m: Loaded, lt: LayerTops, top: TopActivations, rule: str, maxpool: str = "switches"
) -> torch.Tensor:
    """Projections of all the top activations to pixels, one batch for all of them."""
    maps, _ = project(
        m.model, top.x, lt.path, top.unit, rule, maxpool=maxpool, locations=top.location
    )
    return maps.cpu()


# --- claims --------------------------------------------------------------------------------


def model_conditions(model: Model, probe_text: str, n: int | None = None) -> str:
    """How a model and its probe depart from a paper's setting, in a few words: the claims'
    `conditions` (architecture, training budget or weights, the probe, the images used)."""
    spec = model.spec
    if "train" in spec:
        t = spec["train"]
        size = f", {t['max_train_images']} training images" if t.get("max_train_images") else ""
        how = f"{spec['arch']} {spec.get('arch_args', {})}, {t['epochs']} epoch(s){size}"
    elif spec.get("weights"):
        how = f"{spec['arch']} ({spec['weights']} ImageNet weights)"
    else:
        how = spec.get("arch", "?")
    used = "" if n is None else f", {n} used"
    return f"{model.name}: {how}; probe {probe_text}{used}"


def _depth_statistic(*per_layer, axis=-1):
    """Spearman correlation between layer depth (the arrays' order) and each layer's mean over
    the (resampled) images: the statistic of `stats.bootstrap(..., paired=True)`."""
    means = np.stack([np.mean(a, axis=axis) for a in per_layer])  # (layers, ...)
    depth = np.broadcast_to(
        np.arange(len(per_layer)).reshape((-1,) + (1,) * (means.ndim - 1)), means.shape
    )
    return stats.spearman(np.moveaxis(depth, 0, -1), np.moveaxis(means, 0, -1), axis=-1)


def depth_trend(per_layer: list, seed: int = 0) -> dict:
    """The estimate of "an error grows with depth": Spearman's correlation between layer depth
    (shallow to deep) and the layer's mean error over images, with a 95% bootstrap interval
    over the images (each resample keeps an image's errors at every layer together).

    One image has no interval over images: its null is then the rank correlation of the layers
    in a random order (every order of the n layers, central 95%), so a trend over a few layers
    of one image cannot pass on luck (over 3 or 4 layers, +1 is within that null)."""
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in per_layer)
    value = float(_depth_statistic(*arrays))
    if len(arrays[0]) < 2:
        orders = np.array(list(itertools.permutations(range(len(arrays)))), dtype=np.float64)
        rho = stats.spearman(orders, np.broadcast_to(np.arange(len(arrays)), orders.shape))
        null = (
            float(np.quantile(rho, 0.025, method="lower")),
            float(np.quantile(rho, 0.975, method="higher")),
        )
        return stats.estimate(value, null=0.0, null_interval=null)
    return stats.estimate(value, stats.bootstrap(arrays, _depth_statistic, seed=seed, paired=True))
