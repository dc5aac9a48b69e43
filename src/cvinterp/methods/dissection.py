"""Network Dissection (Bau, Zhou, Khosla, Oliva & Torralba 2017), scored as the authors' code
scores it (CSAILVision/NetDissect: `labelprobe.py`, `intersect.py`, `upsample.py`,
`makeresult.py`), with NetDissect-Lite's variant (`feature_operation.py`) as an option.

For every unit k of a layer:

1. its threshold T_k is the top `quantile` (0.005) of its activations over every spatial position
   of every probe image (`TopQuantile`: the exact K-th largest, streamed on the device; the
   authors read an approximate quantile sketch, which differs by under 1% and moves no count on
   the released CaffeNet); activations are taken after the layer's ReLU, as in the authors' Caffe
   nets (`rectify`; a no-op where the recorded module ends in a ReLU);
2. its activation map on each image is upsampled to the mask resolution (`Upsampler`) and
   thresholded, M_k = S_k > T_k. `fieldmap` (the original): each activation sits at the centre of
   its receptive field, derived from the net's conv/pool geometry (`cvinterp.fieldmap`), values
   are linear between centres and held beyond the outer ones; `bilinear` (Lite): half-pixel
   bilinear interpolation;
3. IoU_{k,c} = I / (A + T - I), where, as in the authors' tally:
   - label numbers are global: every mask layer of every category and every whole-image label of
     an image is a label plane, and a label's pixels count wherever they occur (a label listed
     under two categories counts in the masks of both);
   - T_c counts label c's pixels once per plane (a pixel labelled c in two part masks counts
     twice; a whole-image label counts every pixel, once per listing), I_{k,c} the active pixels
     of k under c the same way;
   - A counts unit k's active pixels: `scoring="original"`, on the images that carry any label
     whose primary category is c's; `scoring="lite"`, per image, towards the categories of the
     labels under the active pixels (whole-image labels lie under every pixel);
   - a label's primary category is where `c_<category>.csv` gives it the highest coverage (ties
     to the later category: `cvinterp.data.broden.primary_categories`); it picks the
     denominator and the category in which the label competes;
4. per category, the unit's best label is the highest IoU among the labels of that primary
   category; its best concept overall is the best of those (ties to the later category); it
   detects it when the IoU exceeds `iou_threshold` (0.04).

Where we depart: the threshold is exact (above); every (unit, label) count is kept, where the
original's tally keeps the 2048 largest counts per image (`tally_depth`); every listing of a
label counts, where the original's per-image sum keeps one of two equal (unit, label) entries (a
whole-image label listed twice on one image, or listed and also in a mask: absent from Broden;
Lite counts each too); images without any label are kept for the threshold, where the original
drops them (every Broden image has colour labels).

"Unique detectors" are counted two ways (`count_detectors`), and every table says which:

- `top_label`: units whose best concept overall passes the threshold; unique = distinct best
  labels (the authors' per-unit result files: CaffeNet ImageNet conv5 has 50);
- `per_category`: for each category, the units whose best concept within it passes the
  threshold, unique = distinct such labels, summed over categories (the rule behind the paper's
  figures: CaffeNet ImageNet conv5 has 61).

`dissect(model, layer, probe)` is the face for notebooks (a Broden folder, or image and mask
pairs held in memory); `iou_by_label` scores activations one already has; `dissect_layers` is
the engine the experiments call. `random_rotation` and `rotation_powers` give the paper's
rotated bases Q^alpha (Sec. 3.2: is interpretability axis-aligned?).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvinterp.data.broden import BrodenDataset, primary_categories
from cvinterp.fieldmap import Fieldmap, fieldmap, linear_weights, mask_centres
from cvinterp.instrument import model_device
from cvinterp.models import IMAGENET_RGB, Preprocessing

QUANTILE = 0.005
IOU_THRESHOLD = 0.04
RULES = ("top_label", "per_category")
SCORINGS = ("original", "lite")
UPSAMPLINGS = ("fieldmap", "bilinear")
DEFAULT_UPSAMPLING = {"original": "fieldmap", "lite": "bilinear"}


@dataclass
class Concepts:
    """The probe's labels as dense concept indices 0..C-1 (in label-number order), each with its
    primary category."""

    numbers: list[int]  # Broden label number of each concept
    names: list[str]
    categories: list[str]
    category: np.ndarray  # (C,) index into `categories` of each concept's primary category
    lookup: np.ndarray  # label number -> concept + 1 (0: not a label of the probe)

    @classmethod
    def of(cls, ds) -> Concepts:
        cats = list(ds.categories)
        kept = [(n, name, cat) for n, name, cat in sorted(ds.labels) if cat in cats and n > 0]
        lookup = np.zeros(max([n for n, _, _ in ds.labels] + [0]) + 1, np.int32)
        for i, (n, _, _) in enumerate(kept):
            lookup[n] = i + 1
        return cls(
            [n for n, _, _ in kept],
            [name for _, name, _ in kept],
            cats,
            np.array([cats.index(cat) for _, _, cat in kept], np.int64),
            lookup,
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dtype(self):
        """The narrowest integer type that holds concept + 1 (what the label planes store)."""
        return np.int16 if len(self) < np.iinfo(np.int16).max else np.int32

    def labelled(self, item: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One Broden item's labels, compactly: (mask planes (M, sh, sw) of concept + 1 in
        `dtype`, 0 = none, one per mask layer of every category; concept + 1 of each listed
        whole-image label of the probe, int32 (W,); the primary categories of the labels the
        image carries, bool (K,)). `planes` spreads them into full planes. A label number the
        probe does not list (a corrupt mask) is unlabelled."""
        lut, shape = self.lookup, tuple(item["mask_shape"])
        masks = []
        for stack in item["masks"].values():
            for mask in stack:
                known = (mask >= 0) & (mask < len(lut))
                masks.append(np.where(known, lut[np.where(known, mask, 0)], 0).astype(self.dtype))
        whole = [
            lut[n]
            for numbers in item["image_labels"].values()
            for n in numbers
            if 0 <= n < len(lut) and lut[n]
        ]
        masks = np.stack(masks) if masks else np.zeros((0, *shape), self.dtype)
        whole = np.asarray(whole, np.int32)
        present = np.zeros(len(self) + 1, bool)  # concept + 1 -> on this image
        present[masks] = True
        present[whole] = True
        carried = np.zeros(len(self.categories), bool)
        carried[self.category[present[1:]]] = True
        return masks, whole, carried

    def planes(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        """One Broden item as (label planes int32 (L, sh, sw) of concept + 1, 0 = none: one per
        mask layer of every category, then one full plane per whole-image label; the primary
        categories of the labels the image carries, bool (K,))."""
        masks, whole, carried = self.labelled(item)
        return _spread(masks, whole), carried


def _spread(masks: np.ndarray, whole: np.ndarray, depth: int | None = None) -> np.ndarray:
    """Mask planes and whole-image labels as `depth` (default: as many as there are) full
    int32 label planes, the masks first, then one full plane per whole-image label, then empty
    planes."""
    n = len(masks) + len(whole)
    planes = np.zeros((n if depth is None else depth, *masks.shape[1:]), np.int32)
    planes[: len(masks)] = masks
    planes[len(masks) : n] = whole.reshape(-1, 1, 1)
    return planes


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


class Upsampler:
    """Unit maps (n, h, w) to the mask size (sh, sw).

    fieldmap=None: half-pixel bilinear (NetDissect-Lite). A fieldmap ((oy, ox), (sy, sx),
    (ty, tx)) with the network's `input_size` (px): the original's receptive-field centres
    (`cvinterp.fieldmap.mask_centres`: the authors' reduction round(input_size / sw) where the
    masks are the input at that integer scale), linear between centres and held beyond the
    outer ones, computed in float64 (the authors' spline) and returned in the maps' dtype
    (their output array's).
    """

    def __init__(self, fieldmap: Fieldmap | None = None, input_size: int | None = None):
        if fieldmap is not None and not input_size:
            raise ValueError("receptive-field upsampling needs the network's input_size (px)")
        self.fieldmap, self.input_size = fieldmap, input_size
        self._weights: dict = {}

    @property
    def mode(self) -> str:
        return "bilinear" if self.fieldmap is None else "fieldmap"

    def __call__(self, maps: torch.Tensor, size) -> torch.Tensor:
        size = tuple(int(s) for s in size)
        if self.fieldmap is None:
            up = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            return up.squeeze(1)
        wy, wx = self.weights(tuple(maps.shape[-2:]), size, maps.device)
        return (wy @ (maps.to(wy.dtype) @ wx.T)).to(maps.dtype)

    def weights(self, shape, size, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (sh, h) and (sw, w) interpolation matrices, made once per shape and device."""
        key = (shape, size, str(device))
        if key not in self._weights:
            ys, xs = mask_centres(self.fieldmap, shape, self.input_size, size)
            dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
            self._weights[key] = tuple(
                torch.as_tensor(linear_weights(p, n), dtype=dtype, device=device)
                for p, n in ((ys, size[0]), (xs, size[1]))
            )
        return self._weights[key]


class Tally:
    """Batched IoU counts of thresholded unit maps against the label planes.

    intersection (U, C): active pixels of unit u labelled c, once per plane (gathered from the
    active pixels, which are few, and counted with one bincount);
    activation (U, K): active pixels of unit u counted towards category k (`scoring`);
    truth (C,): pixels labelled c, once per plane.
    """

    def __init__(
        self,
        units: int,
        concepts: Concepts,
        device,
        *,
        scoring: str = "original",
        upsampler: Upsampler | None = None,
        chunk: int = 1 << 25,
    ):
        if scoring not in SCORINGS:
            raise ValueError(f"scoring {scoring!r}: choose one of {SCORINGS}")
        self.units, self.n_concepts = units, len(concepts)
        self.scoring, self.upsample = scoring, upsampler or Upsampler()
        self.category = torch.as_tensor(concepts.category, device=device)
        self.k = len(concepts.categories)
        self.intersection = torch.zeros(units * self.n_concepts, dtype=torch.int64, device=device)
        self.activation = torch.zeros(units, self.k, dtype=torch.int64, device=device)
        self.truth = torch.zeros(self.n_concepts, dtype=torch.int64, device=device)
        self.chunk = chunk  # upsampled elements held at once

    def update(self, acts, thresholds, planes, carried) -> None:
        """acts (B, U, h, w) float; thresholds (U,); planes (B, L, sh, sw) int, concept + 1, as
        `Concepts.planes` gives them; carried (B, K) bool, the categories each image carries.

        Upsampling is a convex combination of a map's values: it never exceeds the map's peak by
        more than float rounding, so only the (image, unit) maps whose peak comes within a
        rounding margin of the threshold are upsampled; the others have no active pixel. The
        result is the same as upsampling every map, and several times faster.
        """
        b = acts.shape[0]
        size = planes.shape[-2:]
        flat = planes.reshape(b, planes.shape[1], -1).long()
        self.truth += torch.bincount(flat[flat > 0] - 1, minlength=self.n_concepts)
        margin = 1e-4 * thresholds.abs() + 1e-30  # far above a few float32 ulps
        reach = acts.amax((2, 3)) + margin.view(1, -1) > thresholds.view(1, -1)
        ib, iu = reach.nonzero(as_tuple=True)
        step = max(1, self.chunk // (size[0] * size[1]))
        for j0 in range(0, len(ib), step):
            pb, pu = ib[j0 : j0 + step], iu[j0 : j0 + step]
            active = self.upsample(acts[pb, pu], size) > thresholds[pu].view(-1, 1, 1)
            pair, pixel = active.reshape(len(pb), -1).nonzero(as_tuple=True)
            area = torch.bincount(pair, minlength=len(pb))  # active pixels per map
            labels = flat[pb[pair], :, pixel]  # (n, L) concept + 1 at each active pixel
            hit = labels > 0
            concept = labels[hit] - 1
            unit = pu[pair].unsqueeze(1).expand_as(labels)[hit]
            self.intersection += torch.bincount(
                unit * self.n_concepts + concept, minlength=self.intersection.numel()
            )
            if self.scoring == "original":
                counted = carried[pb]
            else:  # Lite: the categories of the labels under the active pixels
                owner = pair.unsqueeze(1).expand_as(labels)[hit]
                found = torch.bincount(
                    owner * self.k + self.category[concept], minlength=len(pb) * self.k
                )
                counted = found.view(len(pb), self.k) > 0
            self.activation.index_add_(0, pu, area.unsqueeze(1) * counted.long())

    def iou(self) -> torch.Tensor:
        """(U, C) IoU on the CPU (float64, which not every device has), each concept against
        the activation counted for its primary category."""
        counts = self.intersection.view(self.units, self.n_concepts).cpu()
        area = self.activation.cpu()[:, self.category.cpu()] + self.truth.cpu()
        inter, union = counts.double(), (area - counts).double()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


@dataclass
class UnitLabels:
    """Per unit: best concept overall and best concept within each category, with IoUs."""

    best: np.ndarray  # (U,) concept index
    best_iou: np.ndarray  # (U,)
    per_category: np.ndarray  # (U, K) concept index (-1: category has no concept)
    per_category_iou: np.ndarray  # (U, K)


def label_units(iou: np.ndarray, concepts: Concepts) -> UnitLabels:
    """Each unit's best concept within each category (first maximum in label-number order) and
    overall: the best of those, ties to the later category (the authors' `makeresult.py`). A
    category where every IoU is 0 names its first label (the original names label 0 there: a
    name only, as no such unit detects anything)."""
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
    scored = np.where(per_cat >= 0, per_cat_iou, -np.inf)
    if not len(concepts):
        return UnitLabels(np.zeros(u, np.int64), np.zeros(u), per_cat, per_cat_iou)
    bestcat = k - 1 - scored[:, ::-1].argmax(1)  # the last category among equal maxima
    rows = np.arange(u)
    return UnitLabels(per_cat[rows, bestcat], per_cat_iou[rows, bestcat], per_cat, per_cat_iou)


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
    categories); `masks=False` skips the masks, `images=False` the images.

    An index (i, images, masks) instead reads what the flags ask of item i, as (image or None,
    `Concepts.labelled`'s compact labels or None): what `ProbeFeed`'s DataLoader workers
    decode, one worker pool for passes that read different things."""

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

    def __getitem__(self, index):
        if isinstance(index, tuple):
            index, images, masks = index
            image = self.image(index) if images else None
            labels = self.concepts.labelled(self.ds.item(index, image=False)) if masks else None
            return image, labels
        image = self.image(index) if self.images else None
        if not self.masks:
            return image, None, None
        planes, carried = self.concepts.planes(self.ds.item(index, image=False))
        return image, planes, carried


def _collate(batch):
    """Items read by (i, images, masks) keys -> (images uint8 (B, S, S, 3) or None, the
    images' compact labels or None)."""
    images = None if batch[0][0] is None else torch.from_numpy(np.stack([b[0] for b in batch]))
    labels = None if batch[0][1] is None else [b[1] for b in batch]
    return images, labels


class _Plan:
    """The batch sampler of a `ProbeFeed`'s DataLoader: the batches of (i, images, masks) keys
    of the pass under way (set before each pass: the workers persist across passes)."""

    def __init__(self):
        self.batches: list[list[tuple[int, bool, bool]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _available_host_bytes() -> float:
    """The host memory available now (MemAvailable of /proc/meminfo; unbounded where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


def _label_bytes(ds, concepts: Concepts) -> int:
    """What every image's compact labels take in memory (`Concepts.labelled`: the mask layers
    in its dtype, with a small allowance per image), counted from the index: no mask read."""
    width = np.dtype(concepts.dtype).itemsize
    total = 0
    for i in range(len(ds)):
        layers, sh, sw = ds.mask_layers(i)
        total += layers * sh * sw * width + 512
    return total


class ProbeFeed:
    """The images and label planes of a probe, batch by batch in order, for the passes of one
    or several dissections (of one probe at one input size and batch size).

    What a pass needs is decoded by DataLoader workers (`workers`; persistent, one pool for
    every pass, prefetching while the device computes; pinned and copied without blocking to a
    CUDA device) and kept for later passes where it fits in `cache_mb`: the resized images
    (uint8) on a CUDA device when they take under a quarter of its free memory, else in host
    memory; the labels (mask layers at the mask size, `Concepts.labelled`) in host memory with
    what the host's share leaves (at most half the memory available). Whatever is kept is
    decoded once, by the first pass that reads it (a pass reads the labels too where they will
    be kept), and the later passes and dissections read it from memory. The data are the same
    either way, so the dissection's results are too.
    """

    def __init__(
        self,
        ds,
        concepts: Concepts,
        size: int,
        *,
        batch_size: int,
        device,
        workers: int = 0,
        cache_mb: float = 0,
    ):
        self.items = ProbeItems(ds, concepts, size)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.pin = self.device.type == "cuda"
        n, budget = len(ds), cache_mb * 2**20
        host = min(budget, _available_host_bytes() / 2)
        image_bytes = n * size * size * 3
        self.images_at: torch.device | None = None
        if size and self.pin and image_bytes <= min(budget, torch.cuda.mem_get_info(device)[0] / 4):
            self.images_at = self.device
        elif size and image_bytes <= host:
            self.images_at, host = torch.device("cpu"), host - image_bytes
        self.images: torch.Tensor | None = None
        self.labels: list | None = [None] * n if _label_bytes(ds, concepts) <= host else None
        self.has_images = self.has_labels = False
        self._plan = _Plan()
        self._loader = torch.utils.data.DataLoader(
            self.items,
            batch_sampler=self._plan,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.pin,
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return len(self.items)

    def nbytes(self, device) -> int:
        """Bytes of the kept images on `device` (and of the labels, on the CPU)."""
        device = torch.device(device)
        held = 0
        if self.images is not None and self.images.device.type == device.type:
            held += self.images.numel()
        if self.labels is not None and device.type == "cpu":
            held += sum(sum(a.nbytes for a in lab) for lab in self.labels if lab is not None)
        return held

    def batches(self, images: bool = True, labels: bool = True):
        """Consecutive batches of `batch_size` images in dataset order: (images uint8
        (B, S, S, 3), label planes int32 (B, L, sh, sw) of concept + 1 (0 = none; the masks,
        then one full plane per whole-image label, then empty planes), carried categories bool
        (B, K)), on the device, each None where not asked for."""
        n, step = len(self), self.batch_size
        read_images = (images or self.images_at is not None) and not self.has_images
        read_labels = (labels or self.labels is not None) and not self.has_labels
        if read_images and self.images_at is not None and self.images is None:
            size = self.items.size
            self.images = torch.empty((n, size, size, 3), dtype=torch.uint8, device=self.images_at)
        starts = range(0, n, step)
        if read_images or read_labels:
            self._plan.batches = [
                [(i, read_images, read_labels) for i in range(a, min(a + step, n))] for a in starts
            ]
            stream = iter(self._loader)
        else:
            stream = itertools.repeat((None, None))
        for a, (got, lab) in zip(starts, stream, strict=False):
            b = min(a + step, n)
            x = planes = carried = None
            if got is not None:
                x = got.to(self.device, non_blocking=self.pin)
                if self.images is not None:
                    kept = x if self.images.device == x.device else got
                    self.images[a:b].copy_(kept, non_blocking=self.pin)
            elif images:
                x = self.images[a:b].to(self.device, non_blocking=self.pin)
            if lab is not None and self.labels is not None:
                self.labels[a:b] = lab
            if labels:
                planes, carried = self._label_batch(lab if lab is not None else self.labels[a:b])
            yield (x if images else None), planes, carried
        self.has_images |= read_images and self.images is not None
        self.has_labels |= read_labels and self.labels is not None
        needed = (self.images_at is None, self.labels is None)
        if not any(needed) and self.has_images and self.has_labels:
            self._loader = None  # everything is in memory: the workers can go

    def _label_batch(self, labels) -> tuple[torch.Tensor, torch.Tensor]:
        depth = max(1, max(len(m) + len(w) for m, w, _ in labels))
        shape = labels[0][0].shape[1:]
        planes = torch.zeros((len(labels), depth, *shape), dtype=torch.int32, pin_memory=self.pin)
        view = planes.numpy()
        for i, (masks, whole, _) in enumerate(labels):
            view[i] = _spread(masks, whole, depth)
        carried = torch.from_numpy(np.stack([c for _, _, c in labels]))
        if self.pin:
            carried = carried.pin_memory()
        return (
            planes.to(self.device, non_blocking=self.pin),
            carried.to(self.device, non_blocking=self.pin),
        )


@dataclass
class LayerDissection:
    """One layer's result: thresholds (U,), IoU (U, C), its unit labels, and the top images
    (by the unit's strongest activation) of every unit."""

    thresholds: np.ndarray
    iou: np.ndarray
    labels: UnitLabels
    top_images: np.ndarray  # (k, U) dataset indices
    fieldmap: Fieldmap | None = None  # the receptive-field geometry upsampled by (or bilinear)


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


@torch.no_grad()
def dissect_layers(
    model: torch.nn.Module,
    pre,
    paths: list[str],
    ds,
    *,
    size: int,
    device,
    quantile: float = QUANTILE,
    scoring: str = "original",
    upsample: str | None = None,
    rotations: Mapping[str, tuple[str, torch.Tensor]] | None = None,
    batch_size: int = 32,
    workers: int = 2,
    top_k: int = 4,
    cache_mb: float = 1024,
    chunk: int = 1 << 25,
    rectify: bool = True,
    progress: str = "",
    feed: ProbeFeed | None = None,
) -> tuple[dict[str, LayerDissection], dict[str, float]]:
    """Dissect the modules `paths` of `model` on `ds`; images resized to `size`.

    scoring: "original" or "lite" (the activation denominator, see the module docstring);
    upsample: "fieldmap" or "bilinear" (None: the scoring's own, fieldmap for the original).
    rotations: {name: (path, Q)}: also dissect the representation Q a of layer `path` (Q a
    (U, U) matrix applied to the rectified unit vector at every position), as the authors'
    `netprobe.py` rotates a blob; its result is keyed by `name`.

    Pass 1 runs the model on the images and streams the per-unit thresholds (and top images);
    pass 2 tallies the IoUs against the masks. The layers' activations from pass 1 are kept on
    the device when they fit in `cache_mb` (less what the feed keeps there), else pass 2 runs
    the model again. The images and masks come from `feed` (a `ProbeFeed` of `ds` at `size` and
    `batch_size`, shared by the dissections of one probe so that each image is decoded once;
    default: one of this dissection's own, keeping what fits in `cache_mb`, so that pass 2
    decodes nothing where it fits). Returns the per-layer results and the wall seconds per
    stage (decode, forward, quantile, tally).
    """
    from tqdm import tqdm

    from cvinterp.instrument import Instrument
    from cvinterp.methods.top_images import StreamingTopK

    upsample = upsample or DEFAULT_UPSAMPLING.get(scoring)
    if scoring not in SCORINGS:
        raise ValueError(f"scoring {scoring!r}: choose one of {SCORINGS}")
    if upsample not in UPSAMPLINGS:
        raise ValueError(f"upsample {upsample!r}: choose one of {UPSAMPLINGS}")
    rotations = dict(rotations or {})
    clash = [r for r, (p, _) in rotations.items() if r in paths or p not in paths]
    if clash:
        raise ValueError(f"rotations {clash}: name a new key and rotate one of {paths}")
    rotated = {r: (p, torch.as_tensor(q, device=device)) for r, (p, q) in rotations.items()}
    keys = list(paths) + list(rotated)
    source = {p: p for p in paths} | {r: p for r, (p, _) in rotated.items()}
    concepts = Concepts.of(ds)
    if feed is None:
        feed = ProbeFeed(
            ds,
            concepts,
            size,
            batch_size=batch_size,
            device=device,
            workers=workers,
            cache_mb=cache_mb,
        )
    elif (feed.items.ds, feed.items.size, feed.batch_size) != (ds, size, batch_size):
        raise ValueError(
            f"the probe feed serves {len(feed)} images at size {feed.items.size} in batches of "
            f"{feed.batch_size}: make it for this dissection's probe, size and batch size"
        )
    model.eval()
    clock = _Clock(device)
    quant = {p: TopQuantile(len(ds), quantile) for p in keys}
    tops = {p: StreamingTopK(top_k) for p in keys}
    cache: dict[str, list[torch.Tensor]] | None = {p: [] for p in keys}
    geometry: dict[str, Fieldmap | None] = {}
    seen = 0

    def forward(images) -> dict[str, torch.Tensor]:
        x = pre(images)
        if not geometry:  # the receptive fields, from the model's layers, once
            for p in paths:
                geometry[p] = (
                    fieldmap(model, p, tuple(x.shape[1:])) if upsample == "fieldmap" else None
                )
        # the instrument only around the model: the statistics run without its function mode
        with Instrument(model, paths, detach=True, stop_early=True) as ins:
            ins.forward(x)
            acts = {p: ins[p].clamp(min=0) if rectify else ins[p] for p in paths}
        for r, (p, q) in rotated.items():
            acts[r] = torch.einsum("vu,buhw->bvhw", q.to(acts[p].dtype), acts[p])
        return acts

    clock.start()
    batches = feed.batches(images=True, labels=False)
    total = -(-len(ds) // batch_size)
    for images, _, _ in tqdm(batches, desc=f"{progress} thresholds", unit="batch", total=total):
        clock.lap("decode")
        acts = forward(images)
        clock.lap("forward")
        for p in keys:
            quant[p].update(acts[p])
            tops[p].update(acts[p], seen)
        if cache is not None and seen == 0:
            per_image = sum(acts[p][0].numel() * acts[p].element_size() for p in keys)
            if per_image * len(ds) > cache_mb * 2**20 - feed.nbytes(device):
                cache = None
        if cache is not None:
            for p in keys:
                cache[p].append(acts[p])
        seen += len(images)
        clock.lap("quantile")
    thresholds = {p: quant[p].thresholds() for p in keys}
    del quant
    tallies = {
        p: Tally(
            thresholds[p].numel(),
            concepts,
            device,
            scoring=scoring,
            upsampler=Upsampler(geometry[source[p]], size),
            chunk=chunk,
        )
        for p in keys
    }
    clock.start()
    batches = feed.batches(images=cache is None, labels=True)
    for i, (images, planes, carried) in enumerate(
        tqdm(batches, desc=f"{progress} tally", unit="batch", total=total)
    ):
        clock.lap("decode")
        if cache is None:
            acts = forward(images)
            clock.lap("forward")
        else:
            acts = {p: cache[p][i] for p in keys}
            for p in keys:
                cache[p][i] = None  # free as we go
        for p in keys:
            tallies[p].update(acts[p], thresholds[p], planes, carried)
        clock.lap("tally")
    results = {}
    for p in keys:
        iou = tallies[p].iou().cpu().numpy()
        results[p] = LayerDissection(
            thresholds[p].cpu().numpy(),
            iou,
            label_units(iou, concepts),
            tops[p].result().index.numpy(),
            geometry[source[p]],
        )
    return results, clock.seconds


def iou_by_label(
    activations,
    broden_root: str | Path,
    thresholds,
    fieldmap: Fieldmap | None = None,
    input_size: int | None = None,
    scoring: str = "original",
    batch_size: int = 32,
) -> np.ndarray:
    """Score activations one already has against a Broden folder, without a model.

    activations: (N, U, h, w) array or tensor, one row per row of `index.csv`, in order (scored
    on its device); thresholds: (U,). Returns an (U, max_label + 1) float64 array of IoUs
    indexed by Broden label number (column 0 unused). fieldmap=None: half-pixel bilinear
    upsampling; ((oy, ox), (sy, sx), (ty, tx)) as in the original's fieldmap, with the
    network's `input_size` (px): receptive-field-centre upsampling. scoring: "original" or
    "lite" (the activation denominator).
    """
    ds = BrodenDataset(broden_root)
    acts = torch.as_tensor(activations)
    if acts.ndim != 4 or len(acts) != len(ds):
        raise ValueError(
            f"activations of shape {tuple(acts.shape)}: expected (N, U, h, w) with N = "
            f"{len(ds)}, the rows of {Path(broden_root) / 'index.csv'}"
        )
    if not acts.is_floating_point():
        acts = acts.float()
    thr = torch.as_tensor(thresholds, dtype=acts.dtype, device=acts.device).reshape(-1)
    if thr.numel() != acts.shape[1]:
        raise ValueError(f"{thr.numel()} thresholds for {acts.shape[1]} units")
    concepts = Concepts.of(ds)
    tally = Tally(
        acts.shape[1],
        concepts,
        acts.device,
        scoring=scoring,
        upsampler=Upsampler(fieldmap, input_size),
    )
    feed = ProbeFeed(ds, concepts, 0, batch_size=batch_size, device=acts.device)
    start = 0
    for _, planes, carried in feed.batches(images=False, labels=True):
        stop = start + len(planes)
        tally.update(acts[start:stop], thr, planes, carried)
        start = stop
    out = np.zeros((acts.shape[1], len(concepts.lookup)))
    out[:, concepts.numbers] = tally.iou().cpu().numpy()
    return out


def random_rotation(n: int, seed: int) -> np.ndarray:
    """A rotation drawn uniformly from SO(n) (the paper's Q: QR of a Gaussian matrix with R's
    diagonal made positive; a reflection turned into a rotation by negating one row)."""
    a = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[0] = -q[0]
    return q


def rotation_powers(q: np.ndarray, alphas: Iterable[float]) -> list[np.ndarray]:
    """Q^alpha for each alpha, on the minimal geodesic from I (alpha = 0) to Q (alpha = 1): the
    real Schur form of Q (one decomposition for all alphas) with each 2x2 block's signed
    rotation angle scaled by alpha. The paper computes its Q^alpha from a Schur decomposition
    too; the authors' `rotate.py` reads the angles unsigned (arccos of the diagonal), so its
    alpha = 1 is not exactly its Q: here Q^1 is Q."""
    from scipy.linalg import schur

    t, w = schur(q, output="real")
    n = len(q)
    blocks, i = [], 0
    while i < n:
        if i + 1 < n and abs(t[i + 1, i]) > 1e-9:  # a 2x2 rotation block
            blocks.append((i, math.atan2(t[i + 1, i], t[i, i])))
            i += 2
        else:  # an eigenvalue +1 (-1, a half turn with no 2x2 block, has measure zero)
            if t[i, i] < 0:
                raise ValueError("Q has an isolated eigenvalue -1: its powers are not defined")
            i += 1
    out = []
    for alpha in alphas:
        block = np.eye(n)
        for i, angle in blocks:
            c, s = math.cos(alpha * angle), math.sin(alpha * angle)
            block[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
        out.append(w @ block @ w.T)
    return out


def rotation_power(q: np.ndarray, alpha: float) -> np.ndarray:
    """Q^alpha (`rotation_powers` of one alpha)."""
    return rotation_powers(q, [alpha])[0]


class MemoryProbe:
    """A probe set held in memory, read as a `BrodenDataset` is.

    pairs: (image uint8 (H, W, 3) RGB, {category: labels}), where labels is an integer mask
    (sh, sw) of label numbers (0: unlabelled) or a stack of them (k, sh, sw), or an int or a
    list of ints that label the whole image. Every mask of the probe has one shape (the images
    may differ: they are resized for the network). Label numbers are shared by all categories,
    as in Broden; a label's primary category is the one where it covers the most image area
    (its coverage in whole images, as Broden's c_*.csv; ties go to the later category, as the
    authors break them). labels: {number: name} (default: the number).
    """

    def __init__(self, pairs: Iterable, labels: Mapping[int, str] | None = None):
        self.categories: list[str] = []
        self.entries: list[tuple[np.ndarray, dict, dict]] = []
        coverage: dict[str, dict[int, float]] = {}
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
                    area = {n: float(whole[category].count(n)) for n in whole[category]}
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
                    found, count = np.unique(stack, return_counts=True)
                    pixels = stack.shape[1] * stack.shape[2]
                    area = {int(n): c / pixels for n, c in zip(found, count, strict=True) if n}
                else:
                    raise ValueError(f"probe image {i}, {category}: labels of shape {value.shape}")
                if any(n < 0 for n in area):
                    raise ValueError(f"probe image {i}, {category}: negative label number")
                per = coverage.setdefault(category, {})
                for n, a in area.items():
                    per[n] = per.get(n, 0.0) + a
            self.entries.append((image, masks, whole))
        if not self.entries:
            raise ValueError("the probe has no images")
        if self.mask_shape is None:  # whole-image labels only
            self.mask_shape = self.entries[0][0].shape[:2]
        names = dict(labels or {})
        numbers = sorted({n for per in coverage.values() for n in per})
        coverage = {c: coverage.get(c, {}) for c in self.categories}
        primary = primary_categories(self.categories, coverage, numbers)
        self.labels: list[tuple[int, str, str]] = [
            (n, str(names.get(n, n)), primary[n]) for n in numbers
        ]

    def __len__(self) -> int:
        return len(self.entries)

    def open_image(self, index: int):
        """The image of an item as a PIL image (as `BrodenDataset.open_image`)."""
        from PIL import Image

        return Image.fromarray(self.entries[index][0])

    def mask_layers(self, index: int) -> tuple[int, int, int]:
        """(mask layers, sh, sw) of an item (as `BrodenDataset.mask_layers`)."""
        return sum(len(m) for m in self.entries[index][1].values()), *self.mask_shape

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
    scoring: str = "original",
    upsample: str | None = None,
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
    (`rectify`), upsampled at their receptive-field centres (`upsample="fieldmap"`, the
    original's; or "bilinear", Lite's), thresholded at their top `quantile`, scored as the
    authors' original code scores them (`scoring="original"`; or "lite"), and a unit detects its
    best concept when their IoU exceeds `iou_threshold`. Runs on the model's device (or
    `device`); puts the model in eval mode.
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
        scoring=scoring,
        upsample=upsample,
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
    model,
    pre,
    path: str,
    images: np.ndarray,
    units,
    size,
    device,
    rectify: bool = True,
    fieldmap: Fieldmap | None = None,
) -> torch.Tensor:
    """The maps of `units` of module `path` on `images` (after the ReLU when `rectify`),
    upsampled to the images' `size` (h, w) as the dissection upsamples them (at the
    receptive-field centres of `fieldmap`, or bilinearly without one): (N, len(units), h, w),
    for the figures."""
    from cvinterp.instrument import Instrument

    with torch.no_grad(), Instrument(model, [path], detach=True, stop_early=True) as ins:
        ins.forward(pre(images).to(device))
        acts = ins[path][:, list(units)]
    acts = acts.clamp(min=0) if rectify else acts
    n, u = acts.shape[:2]
    up = Upsampler(fieldmap, input_size=images.shape[2])(acts.flatten(0, 1), size)
    return up.view(n, u, *up.shape[-2:]).cpu()
