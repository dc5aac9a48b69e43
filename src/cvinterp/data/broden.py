"""Reader for the Broden concept dataset (Bau et al. 2017, Network Dissection) in its own layout.

``index.csv`` lists one image per row (``image,split,ih,iw,sh,sw`` then one column per category);
a category cell holds ``;``-separated values, each an integer (a whole-image label) or a ``.png``
path (a pixel mask decoding as ``R + 256*G``, 0 = unlabelled, at ``sh x sw``).  Image and mask
paths are relative to ``images/``.  ``label.csv``, ``category.csv`` and ``c_<category>.csv``
describe labels, categories and per-category codes.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_CATEGORY_COUNT = re.compile(r"^\s*([^(]+?)\s*\((\d+)\)\s*$")
_HINT = (
    "Broden is not shipped offline; the paper profile downloads and extracts broden1_227 "
    "(AlexNet) / broden1_224 (VGG16, ResNet18) from the Network Dissection site."
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Broden file missing: {path}. {_HINT}")
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def primary_category(cell: str) -> str:
    """The highest-count category of a ``label.csv`` cell like ``object(12);part(3)``."""
    best, best_count = "", -1
    for entry in filter(None, cell.split(";")):
        match = _CATEGORY_COUNT.match(entry)
        name, count = (match.group(1), int(match.group(2))) if match else (entry.strip(), 0)
        if count > best_count:  # ties keep the first listed
            best, best_count = name, count
    return best


def decode_mask(path: Path) -> np.ndarray:
    """Label numbers of a Broden mask PNG: ``R + 256*G`` as int32 (0 = unlabelled)."""
    if not path.is_file():
        raise FileNotFoundError(f"Broden mask missing: {path}. {_HINT}")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1]


class BrodenDataset(Dataset):
    """Broden images with their pixel masks and whole-image labels, loaded lazily per item.

    Item: ``image`` (uint8 HWC RGB), ``masks`` {category: int32 (k, sh, sw)} for categories
    with mask files, ``image_labels`` {category: [label numbers]} for whole-image labels, plus
    ``path``, ``split`` and ``mask_shape`` (sh, sw).  ``labels`` holds
    ``(number, name, primary_category)`` per label.
    """

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        rows = _read_csv(self.root / "index.csv")
        self.categories: list[str] = [r["name"] for r in _read_csv(self.root / "category.csv")]
        self.labels: list[tuple[int, str, str]] = [
            (int(r["number"]), r["name"], primary_category(r.get("category") or ""))
            for r in _read_csv(self.root / "label.csv")
        ]
        self.label_names: dict[int, str] = {n: name for n, name, _ in self.labels}
        self.primary: dict[int, str] = {n: cat for n, _, cat in self.labels}
        # code -> label number per category (c_<category>.csv); codes are dense per category
        self.codes: dict[str, dict[int, int]] = {
            cat: {int(r["code"]): int(r["number"]) for r in _read_csv(self.root / f"c_{cat}.csv")}
            for cat in self.categories
        }
        self.rows = [r for r in rows if split is None or r["split"] == split]

    def __len__(self) -> int:
        return len(self.rows)

    def _parse(self, row: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
        masks: dict[str, list[str]] = {}
        whole: dict[str, list[int]] = {}
        for cat in self.categories:
            for value in filter(None, (v.strip() for v in (row.get(cat) or "").split(";"))):
                if value.isdigit():
                    whole.setdefault(cat, []).append(int(value))
                else:
                    masks.setdefault(cat, []).append(value)
        return masks, whole

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index)

    def image_path(self, index: int) -> Path:
        """The image file of an item (checked to exist)."""
        path = self.root / "images" / self.rows[index]["image"]
        if not path.is_file():
            raise FileNotFoundError(f"Broden image missing: {path}. {_HINT}")
        return path

    def open_image(self, index: int) -> Image.Image:
        """The image of an item, opened (not yet decoded), without reading its masks."""
        return Image.open(self.image_path(index))

    def item(self, index: int, image: bool = True) -> dict[str, Any]:
        """The item; `image=False` leaves the image out (None), reading only the labels."""
        row = self.rows[index]
        path = self.image_path(index)
        pixels = None
        if image:
            with self.open_image(index) as im:
                pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        mask_files, image_labels = self._parse(row)
        shape = (int(row["sh"]), int(row["sw"]))
        masks = {}
        for cat, files in mask_files.items():
            stack = np.stack([decode_mask(self.root / "images" / f) for f in files])
            if stack.shape[1:] != shape:
                raise ValueError(
                    f"mask of {row['image']} ({cat}) is {stack.shape[1:]}, not {shape}"
                )
            masks[cat] = stack
        return {
            "image": pixels,
            "masks": masks,
            "image_labels": image_labels,
            "path": str(path),
            "split": row["split"],
            "mask_shape": shape,
        }
