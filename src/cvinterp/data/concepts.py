"""An offline concept probe written in the Broden layout: a stand-in for Broden, not Broden.

Broden (Bau et al. 2017) cannot be had offline, so the default profile dissects on images
composed from real material that ships in packages, with pixel labels known by construction:

- scene (whole-image label): which of the 12 bundled photos the background is cropped from
  (`<photo>-s`; photo identity, some of them micrographs, not scene categories);
- texture and material (pixel masks): a random region filled with one of GIMP's 58 texture
  tiles (Debian gimp-data); the texture is the tile (`<tile>-t`), the material its GIMP folder
  (wood, stone, fabric, ...; the synthetic "Legacy" tiles carry no material), so material is a
  grouping of textures over the same region;
- object (pixel masks): one or two Fashion-MNIST items (28x28 grey product photos of
  clothing, upscaled to 30-60% of the image side, colour-tinted) pasted onto the background;
  the mask is the item's silhouette;
- colour (pixel masks): every pixel of the finished image named by the nearest of eleven focal
  colours in CIELAB (Broden's colour terms; a nearest-prototype naming, not Broden's learned
  colour model).

Later layers occlude earlier ones in the masks: an object hides the texture under it. The same
reader (`cvinterp.data.broden.BrodenDataset`) and the same dissection code run on this folder
and on the real broden1_224 / broden1_227.
"""

from __future__ import annotations

import csv
import struct
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from cvinterp.data.images import FASHION_CLASSES, DataError, fashion_mnist, photos

CATEGORIES = ["color", "object", "material", "scene", "texture"]
INDEX_HEADER = ["image", "split", "ih", "iw", "sh", "sw"] + [
    "color",
    "object",
    "material",
    "part",
    "scene",
    "texture",
]
GIMP_PATTERNS = "/usr/share/gimp/2.0/patterns"
NO_MATERIAL = {"Legacy"}  # GIMP's synthetic tiles: a texture, but no material
# Broden's eleven colour terms at focal sRGB values.
FOCAL_COLOURS = {
    "black": (20, 20, 20), "blue": (30, 60, 200), "brown": (120, 70, 30),
    "green": (40, 150, 40), "grey": (128, 128, 128), "orange": (240, 140, 20),
    "pink": (240, 150, 180), "purple": (120, 40, 150), "red": (200, 30, 30),
    "white": (245, 245, 245), "yellow": (240, 220, 40),
}  # fmt: skip


def read_gimp_pattern(path: str | Path) -> np.ndarray:
    """A GIMP .pat tile as uint8 (h, w, 3) RGB: header `>5I` (header size, version, width,
    height, bytes per pixel), magic GPAT, name, then the pixels from the header size on."""
    data = Path(path).read_bytes()
    if len(data) < 24 or data[20:24] != b"GPAT":
        raise DataError(f"{path} is not a GIMP pattern (no GPAT magic)")
    header, _, w, h, bpp = struct.unpack(">5I", data[:20])
    pixels = np.frombuffer(data[header : header + w * h * bpp], np.uint8)
    if pixels.size != w * h * bpp or bpp not in (1, 2, 3, 4):
        raise DataError(f"{path} is truncated or has {bpp} bytes per pixel")
    img = pixels.reshape(h, w, bpp)
    if bpp <= 2:  # grey (+ alpha)
        return np.repeat(img[..., :1], 3, axis=2)
    return img[..., :3].copy()


def gimp_patterns(folder: str | Path) -> list[tuple[str, str, np.ndarray]]:
    """(tile name, GIMP category folder, RGB tile) of every .pat under `folder`, sorted."""
    files = sorted(Path(folder).glob("*/*.pat"))
    if not files:
        raise DataError(
            f"no GIMP patterns under {folder}: the concept probe needs Debian's gimp-data "
            "(the workflow fetches it with apt-get download)"
        )
    names = [f.stem.lower() for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"GIMP tiles under {folder} share names {twice}: one name per tile")
    return [(n, f.parent.name, read_gimp_pattern(f)) for n, f in zip(names, files, strict=True)]


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """Index into FOCAL_COLOURS of the nearest focal colour (CIELAB distance) per pixel."""
    from skimage.color import rgb2lab

    protos = np.array(list(FOCAL_COLOURS.values()), np.float64)[None] / 255.0
    lab = rgb2lab(rgb.astype(np.float64) / 255.0).reshape(-1, 1, 3)
    dist = ((lab - rgb2lab(protos)) ** 2).sum(-1)
    return dist.argmin(1).reshape(rgb.shape[:2])


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random region: the union of two ellipses covering roughly 15-50% of the image."""
    yy, xx = np.mgrid[:size, :size] / size
    region = np.zeros((size, size), bool)
    for _ in range(2):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.15, 0.35, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        region |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
    return region


def _tiled(tile: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`tile` rescaled by 0.75-1.5, repeated to cover size x size, at a random offset."""
    scale = rng.uniform(0.75, 1.5)
    h, w = tile.shape[:2]
    th, tw = max(8, round(h * scale)), max(8, round(w * scale))
    tile = np.asarray(Image.fromarray(tile).resize((tw, th), Image.BILINEAR))
    reps = (size // th + 2, size // tw + 2, 1)
    big = np.tile(tile, reps)
    y, x = rng.integers(0, th), rng.integers(0, tw)
    return big[y : y + size, x : x + size]


def _resize(img: np.ndarray, size: int, resample=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), resample))


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of 50-100% of the photo's short side, resized to `size`."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return _resize(photo[y : y + side, x : x + side], size, Image.BICUBIC)


def _save_mask(path: Path, labels: np.ndarray) -> None:
    """A label map as Broden stores it: R + 256*G."""
    rgb = np.stack([labels % 256, labels // 256, np.zeros_like(labels)], -1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_catalogue(root: Path, names: dict[str, list[str]], number, counts, coverage) -> None:
    """Broden's catalogue of a probe in its layout: c_<category>.csv, category.csv and label.csv,
    for the labels `names` ({category: names, in order}) with their label numbers
    (`number[category, name]`), image counts and mean coverages (keyed by (category, number))."""
    label_rows, category_rows = [], []
    for cat, labels in names.items():
        numbers = [number[cat, name] for name in labels]
        category_rows.append(
            [cat, numbers[0], numbers[-1], len(numbers), sum(counts[cat, n] for n in numbers)]
        )
        write_csv(
            root / f"c_{cat}.csv",
            ["code", "number", "name", "frequency", "coverage"],
            [
                [code, n, name, counts[cat, n], f"{coverage[cat, n]:.6g}"]
                for code, (n, name) in enumerate(zip(numbers, labels, strict=True), 1)
            ],
        )
        label_rows += [
            [n, name, f"{cat}({counts[cat, n]})", counts[cat, n], f"{coverage[cat, n]:.6g}", ""]
            for n, name in zip(numbers, labels, strict=True)
        ]
    write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], category_rows)
    write_csv(
        root / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        sorted(label_rows),
    )


def _slug(name: str) -> str:
    return name.lower().replace("/", "-").replace(" ", "_")


def build_concept_probe(
    root: str | Path,
    *,
    images: int,
    size: int,
    seed: int,
    patterns_dir: str | Path,
    fashion_dir: str | Path,
) -> Path:
    """Write the stand-in probe set under `root` in the Broden layout (deterministic per seed).

    Images are `size` px squares (jpg) with masks at half resolution, like broden1_224.
    """
    if size % 2:
        raise ValueError(f"concept probe size must be even (masks are half size), got {size}")
    root = Path(root)
    folder = root / "images" / "standin"
    folder.mkdir(parents=True, exist_ok=True)
    half = size // 2
    rng = np.random.default_rng([seed, 5])
    backgrounds = photos()
    tiles = gimp_patterns(patterns_dir)
    items = fashion_mnist(fashion_dir, "test")

    # label numbers, category by category (Broden numbers its labels globally from 1)
    names: dict[str, list[str]] = {
        "color": [f"{c}-c" for c in FOCAL_COLOURS],
        "object": [_slug(c) for c in FASHION_CLASSES],
        "material": sorted({_slug(f) for _, f, _ in tiles if f not in NO_MATERIAL}),
        "scene": [f"{p}-s" for p in backgrounds],
        "texture": [f"{t}-t" for t, _, _ in tiles],
    }
    number: dict[tuple[str, str], int] = {}
    for cat in CATEGORIES:
        for name in names[cat]:
            number[cat, name] = len(number) + 1
    counts: Counter = Counter()  # (category, label) -> images carrying it
    coverage: Counter = Counter()  # (category, label) -> area in whole images, as Broden's
    photo_names = list(backgrounds)
    index_rows = []
    for i in range(images):
        stem = f"standin/{i:05d}"
        photo = photo_names[rng.integers(len(photo_names))]
        img = _crop(backgrounds[photo], size, rng).astype(np.float32)
        material = np.zeros((size, size), np.int32)
        texture = np.zeros((size, size), np.int32)
        objects = np.zeros((size, size), np.int32)
        if rng.random() < 0.8:
            t_name, t_folder, tile = tiles[rng.integers(len(tiles))]
            region = _blob(rng, size)
            img[region] = _tiled(tile, size, rng)[region]
            texture[region] = number["texture", f"{t_name}-t"]
            if t_folder not in NO_MATERIAL:
                material[region] = number["material", _slug(t_folder)]
        for _ in range(rng.integers(1, 3)):
            j = rng.integers(len(items))
            side = int(rng.uniform(0.3, 0.6) * size)
            grey = _resize(items.images[j, :, :, 0], side).astype(np.float32) / 255.0
            y, x = rng.integers(0, size - side + 1, 2)
            alpha = np.clip(2 * grey, 0, 1)[..., None]
            tint = rng.uniform(0.2, 1.0, 3) * 255
            patch = img[y : y + side, x : x + side]
            img[y : y + side, x : x + side] = patch * (1 - alpha) + tint * grey[..., None] * alpha
            silhouette = np.zeros((size, size), bool)
            silhouette[y : y + side, x : x + side] = grey > 0.1
            label = number["object", _slug(FASHION_CLASSES[items.labels[j]])]
            objects[silhouette] = label
            texture[silhouette] = material[silhouette] = 0
        rgb = np.clip(img, 0, 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.jpg", quality=95)
        small = _resize(rgb, half, Image.BOX)
        colour_base = number["color", names["color"][0]]
        maps = {
            "color": colour_names(small).astype(np.int32) + colour_base,
            "object": objects[::2, ::2],
            "material": material[::2, ::2],
            "texture": texture[::2, ::2],
        }
        cells = {}
        for cat, labels in maps.items():
            found, pixels = np.unique(labels, return_counts=True)
            present = [(int(n), int(c)) for n, c in zip(found, pixels, strict=True) if n]
            if present:
                _save_mask(root / "images" / f"{stem}_{cat}.png", labels)
                cells[cat] = f"{stem}_{cat}.png"
                counts.update((cat, n) for n, _ in present)
                for n, c in present:
                    coverage[cat, n] += c / labels.size
        cells["scene"] = str(number["scene", f"{photo}-s"])
        counts[("scene", number["scene", f"{photo}-s"])] += 1
        coverage[("scene", number["scene", f"{photo}-s"])] += 1.0
        index_rows.append(
            [f"{stem}.jpg", "train", size, size, half, half]
            + [cells.get(c, "") for c in INDEX_HEADER[6:]]
        )
    write_csv(root / "index.csv", INDEX_HEADER, index_rows)
    write_catalogue(root, {cat: names[cat] for cat in CATEGORIES}, number, counts, coverage)
    (root / "README.txt").write_text(
        "cvinterp offline concept probe: a stand-in for Broden in Broden's layout, NOT Broden.\n"
        f"{images} images of {size} px composed from the bundled photos (scene), GIMP texture\n"
        "tiles (texture, material), Fashion-MNIST items (object) and focal-colour naming\n"
        "(color); see cvinterp.data.concepts.\n"
    )
    return root
