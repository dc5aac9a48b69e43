"""Network Dissection (Bau, Zhou, Khosla, Oliva & Torralba 2017).

For every unit k of a layer:

1. its threshold T_k is the top `quantile` (0.005) of its activations over every spatial position
   of every probe image (`TopQuantile`: an exact streaming top-K on the device, where the
   authors read an approximate quantile); activations are taken after the layer's ReLU, as
   in the authors' Caffe nets (`rectify`; a no-op where the recorded module ends in a ReLU);
2. its activation map on each image is upsampled bilinearly to the mask resolution and
   thresholded, M_k = S_k > T_k;
3. for each concept c, IoU_{k,c} = sum |M_k & L_c| / sum |M_k | L_c|, the sums running over the
   images that carry a label of c's category (`Tally`: intersections and areas as batched
   counts); each label is scored in its primary category only: its pixels in the masks of
   another category (a Broden label listed under two) are not counted, and the activation
   area runs over the images carrying the primary category;
4. the unit detects its best concept when that IoU exceeds `iou_threshold` (0.04).

"Unique detectors" are counted two ways (`count_detectors`), and every table says which:

- `top_label`: units whose best concept overall passes the threshold; unique = distinct best
  labels (the authors' per-unit result files: CaffeNet ImageNet conv5 has 50);
- `per_category`: for each category, the units whose best concept within it passes the
  threshold, unique = distinct such labels, summed over categories (the rule behind the paper's
  figures: CaffeNet ImageNet conv5 has 61).

`dissect(model, layer, probe)` is the face for notebooks (a Broden folder, or image and mask
pairs held in memory); `dissect_layers` is the engine the experiments call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvinterp.data.broden import BrodenDataset
from cvinterp.instrument import model_device
from cvinterp.models import IMAGENET_RGB, Preprocessing

QUANTILE = 0.005
IOU_THRESHOLD = 0.04
RULES = ("top_label", "per_category")


@dataclass
class Concepts:
    """The probe's labels as dense concept indices 0..C-1, each with its primary category."""

    numbers: list[int]  # Broden label number of each concept
    names: list[str]
    categories: list[str]
    category: np.ndarray  # (C,) index into `categories` of each concept's primary category
    lookup: dict[str, np.ndarray]  # category -> label number -> concept + 1 (0: not scored)

    @classmethod
    def of(cls, ds: BrodenDataset) -> Concepts:
        cats = list(ds.categories)
        kept = [(n, name, cat) for n, name, cat in sorted(ds.labels) if cat in cats]
        top = max([n for n, _, _ in ds.labels] + [0])
        lookup = {c: np.zeros(top + 1, np.int32) for c in cats}
        for i, (n, _, cat) in enumerate(kept):
            lookup[cat][n] = i + 1  # scored only in its primary category
        return cls(
            [n for n, _, _ in kept],
            [name for _, name, _ in kept],
            cats,
            np.array([cats.index(cat) for _, _, cat in kept], np.int64),
            lookup,
        )

    def __len__(self) -> int:
        return len(self.names)

    def planes(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        """One Broden item as (label planes int32 (L, sh, sw) of concept + 1, 0 = none;
        categories the image carries, bool (K,)). Whole-image labels fill a plane; a concept
        named twice at one pixel (two mask files of a category) counts once."""
        shape = None
        planes = []
        for cat, stack in item["masks"].items():
            shape = stack.shape[1:]
            lut = self.lookup[cat]
            for mask in stack:  # an unknown label number (corrupt mask) is unlabelled
                known = (mask >= 0) & (mask < len(lut))
                planes.append(np.where(known, lut[np.where(known, mask, 0)], 0))
        carried = np.zeros(len(self.categories), bool)
        for cat in set(item["masks"]) | set(item["image_labels"]):
            carried[self.categories.index(cat)] = True
        if shape is None:
            shape = item["mask_shape"]
        for cat, numbers in item["image_labels"].items():
            for n in numbers:
                value = self.lookup[cat][n] if n < len(self.lookup[cat]) else 0
                planes.append(np.full(shape, value, np.int32))
        if not planes:
            return np.zeros((0, *shape), np.int32), carried
        stack = np.stack(planes)
        for i in range(1, len(stack)):  # keep each concept once per pixel
            stack[i][(stack[:i] == stack[i]).any(0)] = 0
        return stack, carried


class TopQuantile:
    """Exact per-unit threshold: the K-th largest activation, K = ceil(quantile * positions),
    over a stream of (B, U, h, w) maps. Keeps the current top-K per unit on the maps' device."""

    def __init__(self, total_images: int, quantile: float = QUANTILE):
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.total_images, self.quantile = total_images, quantile
        self.top: torch.Tensor | None = None
        self.k = 0

    def update(self, acts: torch.Tensor) -> None:
        b, u, h, w = acts.shape
        if self.top is None:
            self.k = max(1, math.ceil(self.quantile * self.total_images * h * w))
            self.top = acts.new_empty(u, 0)
        values = acts.permute(1, 0, 2, 3).reshape(u, -1)
        if self.top.shape[1] == self.k:
            # only values above a unit's current K-th largest can change it: take the batch's
            # top n first, n = the most such values any unit has (small once the stream runs)
            n = int((values > self.top.min(1, keepdim=True).values).sum(1).max())
            if n == 0:
                return
            values = values.topk(n, dim=1, sorted=False).values
        values = torch.cat([self.top, values], 1)
        self.top = values.topk(min(self.k, values.shape[1]), dim=1, sorted=False).values

    def thresholds(self) -> torch.Tensor:
        """(U,) thresholds; exact once `total_images` images have been seen."""
        if self.top is None:
            raise RuntimeError("no activations seen")
        return self.top.min(1).values


class Tally:
    """Batched IoU counts of thresholded unit maps against concept masks.

    intersection (U, C): active pixels of unit u labelled c (gathered from the active pixels,
    which are few, and counted with one bincount);
    activation (U, K): active pixels of unit u on images carrying category k;
    truth (C,): pixels labelled c.
    """

    def __init__(self, units: int, concepts: Concepts, device, chunk: int = 1 << 25):
        self.units, self.n_concepts = units, len(concepts)
        self.category = torch.as_tensor(concepts.category, device=device)
        k = len(concepts.categories)
        self.intersection = torch.zeros(units * self.n_concepts, dtype=torch.int64, device=device)
        self.activation = torch.zeros(units, k, dtype=torch.int64, device=device)
        self.truth = torch.zeros(self.n_concepts, dtype=torch.int64, device=device)
        self.chunk = chunk  # upsampled elements held at once

    def update(self, acts, thresholds, planes, carried) -> None:
        """acts (B, U, h, w) float; thresholds (U,); planes (B, L, sh, sw) int, concept + 1,
        each concept at most once per pixel (as `Concepts.planes` gives them); carried (B, K)
        bool.

        A bilinear upsample is a convex combination of source values: it never exceeds the
        map's peak by more than float rounding, so only the (image, unit) maps whose peak comes
        within a rounding margin of the threshold are upsampled; the others have no active
        pixel. The result is the same as upsampling every map, and several times faster.
        """
        b = acts.shape[0]
        size = planes.shape[-2:]
        flat = planes.reshape(b, planes.shape[1], -1).long()
        labelled = flat[flat > 0] - 1
        self.truth += torch.bincount(labelled, minlength=self.n_concepts)
        margin = 1e-4 * thresholds.abs() + 1e-30  # far above a few float32 ulps
        reach = acts.amax((2, 3)) + margin.view(1, -1) > thresholds.view(1, -1)
        ib, iu = reach.nonzero(as_tuple=True)
        step = max(1, self.chunk // (size[0] * size[1]))
        for j0 in range(0, len(ib), step):
            pb, pu = ib[j0 : j0 + step], iu[j0 : j0 + step]
            up = F.interpolate(
                acts[pb, pu].unsqueeze(1), size=size, mode="bilinear", align_corners=False
            )
            active = up.squeeze(1) > thresholds[pu].view(-1, 1, 1)  # (n, sh, sw)
            pair, pixel = active.reshape(len(pb), -1).nonzero(as_tuple=True)
            area = torch.bincount(pair, minlength=len(pb))  # active pixels per map
            self.activation.index_add_(0, pu, area.unsqueeze(1) * carried[pb].long())
            labels = flat[pb[pair], :, pixel]  # (n, L) concept + 1 at each active pixel
            unit = pu[pair].unsqueeze(1).expand_as(labels)
            hit = labels > 0
            index = unit[hit] * self.n_concepts + labels[hit] - 1
            self.intersection += torch.bincount(index, minlength=self.intersection.numel())

    def iou(self) -> torch.Tensor:
        """(U, C) IoU, each concept against the activation on its primary category's images."""
        inter = self.intersection.view(self.units, self.n_concepts).double()
        union = (self.activation[:, self.category] + self.truth - inter.long()).double()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


@dataclass
class UnitLabels:
    """Per unit: best concept overall and best concept within each category, with IoUs."""

    best: np.ndarray  # (U,) concept index
    best_iou: np.ndarray  # (U,)
    per_category: np.ndarray  # (U, K) concept index (-1: category has no concept)
    per_category_iou: np.ndarray  # (U, K)


def label_units(iou: np.ndarray, concepts: Concepts) -> UnitLabels:
    iou = np.asarray(iou, np.float64)
    u, k = iou.shape[0], len(concepts.categories)
    per_cat = np.full((u, k), -1, np.int64)
    per_cat_iou = np.zeros((u, k))
    for j in range(k):
        members = np.flatnonzero(concepts.category == j)
        if members.size:
            pick = iou[:, members].argmax(1)
            per_cat[:, j] = members[pick]
            per_cat_iou[:, j] = iou[np.arange(u), members[pick]]
    best = iou.argmax(1) if iou.shape[1] else np.zeros(u, np.int64)
    best_iou = iou[np.arange(u), best] if iou.shape[1] else np.zeros(u)
    return UnitLabels(best, best_iou, per_cat, per_cat_iou)


def count_detectors(
    labels: UnitLabels, concepts: Concepts, threshold: float = IOU_THRESHOLD
) -> dict[str, dict]:
    """Both counting rules: {rule: {"units": detector units, "unique": unique detectors,
    "by_category": {category: unique detectors}}}."""
    top = labels.best_iou > threshold
    top_unique = {int(c) for c in labels.best[top]}
    by_cat_top = {
        cat: sum(1 for c in top_unique if concepts.category[c] == j)
        for j, cat in enumerate(concepts.categories)
    }
    passing = labels.per_category_iou > threshold
    by_cat = {
        cat: len({int(c) for c in labels.per_category[passing[:, j], j]})
        for j, cat in enumerate(concepts.categories)
    }
    return {
        "top_label": {
            "units": int(top.sum()),
            "unique": len(top_unique),
            "by_category": by_cat_top,
        },
        "per_category": {
            "units": int(passing.any(1).sum()),
            "unique": sum(by_cat.values()),
            "by_category": by_cat,
        },
    }


# --- the two passes over a probe set ------------------------------------------------------


class ProbeItems(torch.utils.data.Dataset):
    """A Broden-layout dataset as (image uint8 (size, size, 3), label planes, carried
    categories), decoded in DataLoader workers; `masks=False` skips the masks (pass 1),
    `images=False` the images (pass 2 with cached activations)."""

    def __init__(self, ds: BrodenDataset, concepts: Concepts, size: int, masks=True, images=True):
        self.ds, self.concepts, self.size = ds, concepts, size
        self.masks, self.images = masks, images

    def __len__(self) -> int:
        return len(self.ds)

    def image(self, index: int) -> np.ndarray:
        from PIL import Image

        with self.ds.open_image(index) as im:
            im = im.convert("RGB")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)

    def __getitem__(self, index: int):
        image = self.image(index) if self.images else None
        if not self.masks:
            return image, None, None
        planes, carried = self.concepts.planes(self.ds.item(index, image=False))
        return image, planes, carried


def _collate(batch):
    images = None if batch[0][0] is None else np.stack([b[0] for b in batch])
    if batch[0][1] is None:
        return images, None, None
    depth = max(1, max(len(b[1]) for b in batch))
    shape = batch[0][1].shape[1:]
    planes = np.zeros((len(batch), depth, *shape), np.int32)
    for i, (_, p, _) in enumerate(batch):
        planes[i, : len(p)] = p
    return images, torch.from_numpy(planes), torch.from_numpy(np.stack([b[2] for b in batch]))


@dataclass
class LayerDissection:
    """One layer's result: thresholds (U,), IoU (U, C), its unit labels, and the top images
    (by the unit's strongest activation) of every unit."""

    thresholds: np.ndarray
    iou: np.ndarray
    labels: UnitLabels
    top_images: np.ndarray  # (k, U) dataset indices


class _Clock:
    """Wall time per stage, synchronising the device so GPU work lands in its own stage."""

    def __init__(self, device):
        self.device, self.seconds = torch.device(device), {}
        self._last = None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def start(self):
        self.sync()
        self._last = time.perf_counter()

    def lap(self, stage: str):
        self.sync()
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def _loader(items: ProbeItems, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(
        items, batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )


@torch.no_grad()
def dissect_layers(
    model: torch.nn.Module,
    pre,
    paths: list[str],
    ds: BrodenDataset,
    *,
    size: int,
    device,
    quantile: float = QUANTILE,
    batch_size: int = 32,
    workers: int = 2,
    top_k: int = 4,
    cache_mb: float = 1024,
    chunk: int = 1 << 25,
    rectify: bool = True,
    progress: str = "",
) -> tuple[dict[str, LayerDissection], dict[str, float]]:
    """Dissect the modules `paths` of `model` on `ds`; images resized to `size`.

    Pass 1 reads the images and streams the per-unit thresholds (and top images); pass 2 reads
    the masks and tallies the IoUs. The layers' activations from pass 1 are kept on the device
    when they fit in `cache_mb`, else pass 2 runs the model again. Returns the per-layer results
    and the wall seconds per stage (decode, forward, quantile, tally).
    """
    from tqdm import tqdm

    from cvinterp.instrument import Instrument
    from cvinterp.methods.top_images import StreamingTopK

    concepts = Concepts.of(ds)
    model.eval()
    clock = _Clock(device)
    quant = {p: TopQuantile(len(ds), quantile) for p in paths}
    tops = {p: StreamingTopK(top_k) for p in paths}
    cache: dict[str, list[torch.Tensor]] | None = {p: [] for p in paths}
    seen = 0

    def forward(images) -> dict[str, torch.Tensor]:
        # the instrument only around the model: the statistics run without its function mode
        with Instrument(model, paths, detach=True, stop_early=True) as ins:
            ins.forward(pre(images).to(device))
            return {p: ins[p].clamp(min=0) if rectify else ins[p] for p in paths}

    clock.start()
    batches = _loader(ProbeItems(ds, concepts, size, masks=False), batch_size, workers)
    for images, _, _ in tqdm(batches, desc=f"{progress} thresholds", unit="batch"):
        clock.lap("decode")
        acts = forward(images)
        clock.lap("forward")
        for p in paths:
            quant[p].update(acts[p])
            tops[p].update(acts[p], seen)
        if cache is not None and seen == 0:
            per_image = sum(acts[p][0].numel() * acts[p].element_size() for p in paths)
            if per_image * len(ds) > cache_mb * 2**20:
                cache = None
        if cache is not None:
            for p in paths:
                cache[p].append(acts[p])
        seen += len(images)
        clock.lap("quantile")
    thresholds = {p: quant[p].thresholds() for p in paths}
    del quant
    tallies = {p: Tally(thresholds[p].numel(), concepts, device, chunk=chunk) for p in paths}
    items = ProbeItems(ds, concepts, size, masks=True, images=cache is None)
    clock.start()
    for i, (images, planes, carried) in enumerate(
        tqdm(_loader(items, batch_size, workers), desc=f"{progress} tally", unit="batch")
    ):
        clock.lap("decode")
        if cache is None:
            acts = forward(images)
            clock.lap("forward")
        else:
            acts = {p: cache[p][i] for p in paths}
            for p in paths:
                cache[p][i] = None  # free as we go
        planes, carried = planes.to(device), carried.to(device)
        for p in paths:
            tallies[p].update(acts[p], thresholds[p], planes, carried)
        clock.lap("tally")
    results = {}
    for p in paths:
        iou = tallies[p].iou().cpu().numpy()
        results[p] = LayerDissection(
            thresholds[p].cpu().numpy(),
            iou,
            label_units(iou, concepts),
            tops[p].result().index.numpy(),
        )
    return results, clock.seconds


class MemoryProbe:
    """A probe set held in memory, read as a `BrodenDataset` is.

    pairs: (image uint8 (H, W, 3) RGB, {category: labels}), where labels is an integer mask
    (sh, sw) of label numbers (0: unlabelled) or a stack of them (k, sh, sw), or an int or a
    list of ints that label the whole image. Every mask of the probe has one shape (the images
    may differ: they are resized for the network). Label numbers are shared by all categories,
    as in Broden; a label is scored in the category it occurs in most often (its primary
    category; ties go to the category seen first). labels: {number: name} (default: the number).
    """

    def __init__(self, pairs: Iterable, labels: Mapping[int, str] | None = None):
        self.categories: list[str] = []
        self.entries: list[tuple[np.ndarray, dict, dict]] = []
        counts: dict[int, dict[str, int]] = {}
        self.mask_shape: tuple[int, int] | None = None
        for i, (image, by_category) in enumerate(pairs):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"probe image {i}: expected uint8 (H, W, 3) RGB, got {image.dtype} "
                    f"{image.shape}"
                )
            masks, whole = {}, {}
            for category, value in by_category.items():
                if category not in self.categories:
                    self.categories.append(category)
                value = np.asarray(value)
                if value.dtype.kind not in "iu":
                    raise ValueError(f"probe image {i}, {category}: labels must be integers")
                if value.ndim <= 1:
                    whole[category] = [int(n) for n in value.ravel() if n]
                    numbers = set(whole[category])
                elif value.ndim in (2, 3):
                    stack = value.reshape(-1, *value.shape[-2:]).astype(np.int32)
                    if self.mask_shape is None:
                        self.mask_shape = stack.shape[1:]
                    if stack.shape[1:] != self.mask_shape:
                        raise ValueError(
                            f"probe image {i}, {category}: mask of shape {stack.shape[1:]}; "
                            f"every mask of a probe has one shape (here {self.mask_shape})"
                        )
                    masks[category] = stack
                    numbers = set(np.unique(stack).tolist()) - {0}
                else:
                    raise ValueError(f"probe image {i}, {category}: labels of shape {value.shape}")
                if any(n < 0 for n in numbers):
                    raise ValueError(f"probe image {i}, {category}: negative label number")
                for n in numbers:
                    per = counts.setdefault(n, {})
                    per[category] = per.get(category, 0) + 1
            self.entries.append((image, masks, whole))
        if not self.entries:
            raise ValueError("the probe has no images")
        if self.mask_shape is None:  # whole-image labels only
            self.mask_shape = self.entries[0][0].shape[:2]
        names = dict(labels or {})
        order = {c: i for i, c in enumerate(self.categories)}
        self.labels: list[tuple[int, str, str]] = [
            (n, str(names.get(n, n)), max(per, key=lambda c, per=per: (per[c], -order[c])))
            for n, per in sorted(counts.items())
        ]

    def __len__(self) -> int:
        return len(self.entries)

    def open_image(self, index: int):
        """The image of an item as a PIL image (as `BrodenDataset.open_image`)."""
        from PIL import Image

        return Image.fromarray(self.entries[index][0])

    def item(self, index: int, image: bool = True) -> dict:
        pixels, masks, whole = self.entries[index]
        return {
            "image": pixels if image else None,
            "masks": masks,
            "image_labels": whole,
            "mask_shape": self.mask_shape,
        }


@dataclass
class Dissection:
    """Network Dissection of one layer: each unit's best concept, and the detector counts."""

    concept: list[str]  # (U,) the name of each unit's best concept
    category: list[str]  # (U,) that concept's category
    iou: np.ndarray  # (U,) its IoU
    detector: np.ndarray  # (U,) bool: the IoU exceeds `iou_threshold`
    thresholds: np.ndarray  # (U,) each unit's activation threshold T_k
    detectors: dict  # `count_detectors`: per rule, detector units, unique detectors, by category
    iou_threshold: float
    concepts: Concepts  # every concept of the probe: names, categories
    result: LayerDissection  # everything: IoU (U, C), best concept per category, top images


def dissect(
    model: torch.nn.Module,
    layer: str | list[str],
    probe,
    *,
    labels: Mapping[int, str] | None = None,
    preprocessing: Preprocessing = IMAGENET_RGB,
    size: int | None = None,
    quantile: float = QUANTILE,
    iou_threshold: float = IOU_THRESHOLD,
    rectify: bool = True,
    batch_size: int = 32,
    top_k: int = 4,
    device=None,
    workers: int = 0,
) -> Dissection | dict[str, Dissection]:
    """Network Dissection of `layer` (a module path; or a list of them, dissected in the same
    passes: returns {path: Dissection}).

    probe: a folder in the Broden layout (its own label names), or an iterable of
    (image uint8 (H, W, 3), {category: integer label mask}) pairs (see `MemoryProbe`; `labels`
    {number: name} names their labels). Images are resized to `size` (default: the
    preprocessing's input size) and preprocessed by `preprocessing` (a `Preprocessing`,
    default torchvision's ImageNet normalisation). Unit maps are read after a ReLU
    (`rectify`), thresholded at their top `quantile`, and a unit detects its best concept when
    their IoU exceeds `iou_threshold`. Runs on the model's device (or `device`); puts the model
    in eval mode.
    """
    pre = preprocessing
    size = size or pre.input_size
    if not size:
        raise ValueError("dissect: give the input size (size=...): the preprocessing has none")
    if isinstance(probe, (str, Path)):
        if labels is not None:
            raise ValueError("a Broden folder names its labels itself (label.csv): drop labels=")
        ds = BrodenDataset(probe)
    else:
        ds = MemoryProbe(probe, labels)
    device = torch.device(device) if device is not None else model_device(model)
    device = device or torch.device("cpu")
    paths = [layer] if isinstance(layer, str) else list(layer)
    results, _ = dissect_layers(
        model,
        pre,
        paths,
        ds,
        size=size,
        device=device,
        quantile=quantile,
        batch_size=batch_size,
        workers=workers,
        top_k=top_k,
        rectify=rectify,
        progress="dissect",
    )
    concepts = Concepts.of(ds)
    out = {}
    for path, res in results.items():
        best = res.labels.best if len(concepts) else []
        out[path] = Dissection(
            concept=[concepts.names[c] for c in best],
            category=[concepts.categories[concepts.category[c]] for c in best],
            iou=res.labels.best_iou,
            detector=res.labels.best_iou > iou_threshold,
            thresholds=res.thresholds,
            detectors=count_detectors(res.labels, concepts, iou_threshold),
            iou_threshold=iou_threshold,
            concepts=concepts,
            result=res,
        )
    return out[layer] if isinstance(layer, str) else out


def unit_maps(
    model, pre, path: str, images: np.ndarray, units, size, device, rectify: bool = True
) -> torch.Tensor:
    """The maps of `units` of module `path` on `images` (after the ReLU when `rectify`),
    upsampled bilinearly to `size` (h, w): (N, len(units), h, w), for the figures."""
    from cvinterp.instrument import Instrument

    with torch.no_grad(), Instrument(model, [path], detach=True, stop_early=True) as ins:
        ins.forward(pre(images).to(device))
        acts = ins[path][:, list(units)]
    acts = acts.clamp(min=0) if rectify else acts
    return F.interpolate(acts, size=tuple(size), mode="bilinear", align_corners=False).cpu()
