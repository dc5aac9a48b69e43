"""Reader for the Broden concept dataset (Bau et al. 2017, Network Dissection) in its own layout.

``index.csv`` lists one image per row (``image,split,ih,iw,sh,sw`` then one column per category);
a category cell holds ``;``-separated values, each an integer (a whole-image label) or a ``.png``
path (a pixel mask decoding as ``R + 256*G``, 0 = unlabelled, at ``sh x sw``).  Image and mask
paths are relative to ``images/``.  ``label.csv``, ``category.csv`` and ``c_<category>.csv``
describe labels, categories and per-category codes; a label listed under several categories has
its primary category where ``c_<category>.csv`` gives it the highest coverage (the authors' rule).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_HINT = (
    "Broden is not shipped offline; the paper profile downloads and extracts broden1_227 "
    "(AlexNet) / broden1_224 (VGG16, ResNet18) from the Network Dissection site."
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Broden file missing: {path}. {_HINT}")
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _coverage(row: dict[str, str], category: str) -> float:
    value = (row.get("coverage") or "").strip()
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"c_{category}.csv: label {row.get('number')} has coverage {value!r}, not a number; "
            "a Broden folder's c_<category>.csv carry every label's coverage, which decides its "
            f"primary category. {_HINT}"
        ) from None


def primary_categories(
    categories: list[str], coverage: dict[str, dict[int, float]], numbers: list[int]
) -> dict[int, str]:
    """Each label's primary category as the authors choose it (NetDissect's
    `primary_categories_per_index`): the category whose ``c_<category>.csv`` gives the label the
    highest coverage, a label not coded in a category counting 0 there; ties go to the later
    category in ``category.csv`` order."""
    if not categories:
        return {}
    best = {
        n: max((coverage[cat].get(n, 0.0), i) for i, cat in enumerate(categories)) for n in numbers
    }
    return {n: categories[i] for n, (_, i) in best.items()}


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
    ``(number, name, primary_category)`` per label of ``label.csv``, the primary category
    chosen by coverage as the authors do (`primary_categories`).
    """

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        rows = _read_csv(self.root / "index.csv")
        self.categories: list[str] = [r["name"] for r in _read_csv(self.root / "category.csv")]
        label_rows = _read_csv(self.root / "label.csv")
        self.label_names: dict[int, str] = {int(r["number"]): r["name"] for r in label_rows}
        # per category, from c_<category>.csv: code -> label number (codes are dense per
        # category) and label number -> coverage (in whole images), which picks the primary
        # category of a label listed under several
        self.codes: dict[str, dict[int, int]] = {}
        self.coverage: dict[str, dict[int, float]] = {}
        for cat in self.categories:
            coded = _read_csv(self.root / f"c_{cat}.csv")
            self.codes[cat] = {int(r["code"]): int(r["number"]) for r in coded}
            self.coverage[cat] = {int(r["number"]): _coverage(r, cat) for r in coded}
        self.primary: dict[int, str] = primary_categories(
            self.categories, self.coverage, list(self.label_names)
        )
        self.labels: list[tuple[int, str, str]] = [
            (n, name, self.primary[n]) for n, name in self.label_names.items()
        ]
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

    def mask_layers(self, index: int) -> tuple[int, int, int]:
        """(mask layers, sh, sw) of an item, from the index alone (no mask is read): what its
        label planes take in memory."""
        row = self.rows[index]
        files, _ = self._parse(row)
        return sum(map(len, files.values())), int(row["sh"]), int(row["sw"])

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
