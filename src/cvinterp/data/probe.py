"""Probe images: the images a unit-level method looks at for one model.

- a model trained here: its dataset's test split;
- an ImageNet model: a seeded class-stratified sample of the ImageNet validation folder when
  `datasets.imagenet_val.dir` is set (streamed from disk in worker processes, resized and
  centre-cropped as the network was evaluated), otherwise crops of the bundled colour photos at the
  model's input size (the offline stand-in, named as such in every metrics file).

Both answer `len()`, `image(i)` (uint8 HWC RGB) and `batches(pre, ...)` (preprocessed tensors in
sample order), so the streaming top-k never holds the dataset in memory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from cvinterp.data.images import ImageData, imagenet_val, photo_patches, resize_short_side


def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A CPU batch onto the device: through pinned memory and a non-blocking copy on CUDA (the
    copy overlaps the work queued before it); unchanged on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        if not x.is_pinned():
            x = x.pin_memory()
        return x.to(device, non_blocking=True)
    return x.to(device)


class InMemoryProbe:
    def __init__(self, data: ImageData, description: str):
        self.data, self.description = data, description
        self.labels, self.classes = data.labels, data.classes

    def __len__(self) -> int:
        return len(self.data)

    def image(self, i: int) -> np.ndarray:
        return self.data.images[i]

    def batches(self, pre, batch_size: int, device) -> Iterator[torch.Tensor]:
        """Preprocessed batches in order: the uint8 pixels go to the device, `pre` runs there."""
        for start in range(0, len(self), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(self.data.images[start : start + batch_size]))
            yield pre(_to_device(x, device))


def resize_and_crop(img, size: int, resize: int | None = None) -> np.ndarray:
    """PIL image -> uint8 (size, size, 3) RGB, as torchvision's ImageNet evaluation transform
    (the weights' `transforms()`): the short side resized to `resize` (default `size`;
    bilinear, PIL's antialiased filter; the long side int(resize * long / short)), then the
    centre size x size square (offsets rounded as torchvision's CenterCrop rounds them)."""
    resize = resize or size
    if resize < size:
        raise ValueError(f"cannot crop {size} px from an image resized to {resize} px")
    img = img.convert("RGB")
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(resize * long / short)
    new = (resize, new_long) if w <= h else (new_long, resize)
    if new != (w, h):
        from PIL import Image

        img = img.resize(new, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.asarray(img)[top : top + size, left : left + size]


class CentreCrop:
    """PIL image -> uint8 (size, size, 3): the short side resized to `resize` (default: `size`),
    then the centre square (`resize_and_crop`)."""

    def __init__(self, size: int, resize: int | None = None):
        self.size, self.resize = size, resize

    def __call__(self, img) -> np.ndarray:
        return resize_and_crop(img, self.size, self.resize)


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Every index of `labels` in a seeded class-stratified order: round r holds the r-th image
    of every class that has one, the classes in one seeded order and each class's images in a
    seeded order. Any prefix is a class-stratified sample (class counts differ by at most one
    while every class has images left), and consecutive slices are disjoint stratified samples.
    Deterministic for a seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 4])  # its own stream: the seed's other uses differ
    classes = np.unique(labels)
    class_rank = np.empty(int(classes.max()) + 1 if len(classes) else 0, np.int64)
    class_rank[classes] = rng.permutation(len(classes))
    within = np.empty(len(labels), np.int64)  # each image's seeded rank inside its class
    for c in classes:
        members = np.flatnonzero(labels == c)
        within[members] = rng.permutation(len(members))
    return np.lexsort((class_rank[labels], within)) if len(labels) else within


def _stack(items) -> torch.Tensor:
    return torch.from_numpy(np.stack([im for im, _ in items]))


class FolderProbe:
    """A seeded class-stratified sample of n images of an ImageNet-style folder: the first n of
    `stratified_order` (in that order, so any prefix of the sample is stratified too; `part`
    gives disjoint slices of it), each image resized to a short side of `resize` and
    centre-cropped to `size`, as the network was evaluated. `n` None, or at least the folder's
    size: all of it."""

    def __init__(
        self,
        folder: str,
        size: int,
        n: int | None,
        workers: int,
        *,
        seed: int = 0,
        resize: int | None = None,
    ):
        self.size, self.workers, self.folder, self.seed = size, workers, folder, seed
        self.resize = resize or size
        self.dataset = imagenet_val(folder, transform=CentreCrop(size, resize))
        self._all_labels = np.array([t for _, t in self.dataset.samples], np.int64)
        self._order = stratified_order(self._all_labels, seed)
        self.classes = self.dataset.classes
        self._select(0, len(self._order) if n is None else min(n, len(self._order)))

    def _select(self, start: int, stop: int) -> None:
        """This sample: images start to stop (exclusive) of the folder's stratified order."""
        self._start, self._stop = start, stop
        self.indices = self._order[start:stop]
        self.n, self.labels = len(self.indices), self._all_labels[self.indices]
        which = f"images {start + 1}-{stop} of its stratified order, " if start else ""
        self.description = (
            f"ImageNet validation folder {self.folder}: seeded class-stratified sample of "
            f"{self.n} of {len(self._order)} images ({which}{len(np.unique(self.labels))} "
            f"classes, seed {self.seed}), short side {self.resize} px, centre {self.size} px"
        )
        self._loaders: dict = {}

    def __len__(self) -> int:
        return self.n

    def part(self, start: int, n: int | None) -> FolderProbe:
        """Images `start` to `start + n` of this sample (the same folder, not scanned again):
        a prefix and the slice after it are disjoint stratified samples."""
        sub = copy.copy(self)
        begin = self._start + min(start, self.n)
        sub._select(begin, self._stop if n is None else min(begin + n, self._stop))
        return sub

    def image(self, i: int) -> np.ndarray:
        return self.dataset[int(self.indices[i])][0]

    def _loader(self, batch_size: int, pin: bool):
        """One DataLoader per batch size and pinning, kept with its worker processes (the
        job's threads) across passes."""
        key = batch_size, pin
        if key not in self._loaders:
            self._loaders[key] = torch.utils.data.DataLoader(
                torch.utils.data.Subset(self.dataset, self.indices.tolist()),
                batch_size=batch_size,
                num_workers=self.workers,
                collate_fn=_stack,
                pin_memory=pin,
                persistent_workers=self.workers > 0,
            )
        return self._loaders[key]

    def batches(self, pre, batch_size: int, device) -> Iterator[torch.Tensor]:
        """Preprocessed batches in the sample's order; decoding runs in the worker processes
        while the network computes, and on CUDA the uint8 batches come from pinned memory with
        a non-blocking copy (`pre` then runs on the device)."""
        device = torch.device(device)
        for images in self._loader(batch_size, device.type == "cuda"):
            yield pre(_to_device(images, device))


# Bundled photos whose ImageNet class is known: a check that imported weights really work, and
# the labelled images of an ImageNet net offline.
IMAGENET_CHECK = {
    "grace_hopper": {457: "bow tie", 906: "Windsor tie"},
    "coffee": {967: "espresso"},
    "chelsea": {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat"},
    "motorcycle": {665: "moped", 670: "motor scooter"},
}


def centre_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to `size` and take the central square (uint8 HWC)."""
    im = resize_short_side(img, size)
    y0, x0 = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
    return im[y0 : y0 + size, x0 : x0 + size]


def photo_crops(size: int, n: int, seed: int) -> ImageData:
    """`n` random size x size crops of the bundled photos, each photo first resized to a short
    side of 1.5 x size; labelled by photo. Deterministic for a seed."""
    return photo_patches("all", size, n, seed, short_side=round(1.5 * size))
