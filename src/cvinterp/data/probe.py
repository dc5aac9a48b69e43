"""Probe images: the images a unit-level method looks at for one model.

- a model trained here: its dataset's test split;
- an ImageNet model: the ImageNet validation folder when `datasets.imagenet_val.dir` is set
  (streamed from disk in worker processes), otherwise crops of the bundled colour photos at the
  model's input size (the offline stand-in, named as such in every metrics file).

Both answer `len()`, `image(i)` (uint8 HWC RGB) and `batches(pre, ...)` (preprocessed tensors in
dataset order), so the streaming top-k never holds the dataset in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cvinterp.data.images import ImageData, imagenet_val, photo_patches, resize_short_side


class InMemoryProbe:
    def __init__(self, data: ImageData, description: str):
        self.data, self.description = data, description
        self.labels, self.classes = data.labels, data.classes

    def __len__(self) -> int:
        return len(self.data)

    def image(self, i: int) -> np.ndarray:
        return self.data.images[i]

    def batches(self, pre, batch_size: int, device) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield pre(self.data.images[start : start + batch_size]).to(device)


class CentreCrop:
    """PIL image -> uint8 (size, size, 3): short side resized to `size`, centre square."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img) -> np.ndarray:
        im = resize_short_side(np.asarray(img.convert("RGB")), self.size)
        y0, x0 = (im.shape[0] - self.size) // 2, (im.shape[1] - self.size) // 2
        return im[y0 : y0 + self.size, x0 : x0 + self.size]


def _stack(items) -> np.ndarray:
    return np.stack([im for im, _ in items])


class FolderProbe:
    """The first `n` images of an ImageNet-style folder, short side resized, centre-cropped."""

    def __init__(self, folder: str, size: int, n: int | None, workers: int):
        self.size, self.workers = size, workers
        self.dataset = imagenet_val(folder, transform=CentreCrop(size))
        total = len(self.dataset)
        self.n = total if n is None else min(n, total)
        self.labels = np.array([t for _, t in self.dataset.samples[: self.n]])
        self.classes = self.dataset.classes
        self.description = f"ImageNet validation folder {folder}: first {self.n} images"

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> np.ndarray:
        return self.dataset[i][0]

    def batches(self, pre, batch_size: int, device) -> Iterator[torch.Tensor]:
        subset = torch.utils.data.Subset(self.dataset, range(self.n))
        loader = torch.utils.data.DataLoader(
            subset,
            batch_size=batch_size,
            num_workers=self.workers,
            collate_fn=_stack,
        )
        for images in loader:
            yield pre(images).to(device)


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
