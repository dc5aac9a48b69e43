"""Synthetic datasets written in the real datasets' own formats, for the rehearsal profile.

Each writer produces the files the paper profile downloads or is pointed at, byte-for-byte in
their layout (not their content), deterministic for a seed, vectorised so that the papers' sizes
(50,000 validation JPEGs, 63,305 Broden images) are written in minutes:

- `imagenet_val`: root/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG over the 1000 real ImageNet-1k wnids,
  at the validation set's varied sizes and aspect ratios;
- `broden` + `zip_dir`: the Broden folder (index.csv, category.csv, label.csv, c_<cat>.csv,
  images/<source>/*.jpg and R + 256*G label PNGs at half size) and its zip (top folder
  broden1_224/ or broden1_227/);
- `cifar10_tarball`: cifar-10-python.tar.gz with cifar-10-batches-py/ (Python-2 style pickles
  of dicts with bytes keys, as the real batches);
- `ptb` / `wikitext2_zip`: Mikolov's PTB text files and wikitext-2-v1.zip, each with
  Khandelwal et al.'s part-of-speech files (one line of Penn tags per line of text);
- `fashion_mnist`: the four gzip IDX files.

The content has learnable structure (class-dependent colours and stripes, a grammar over word
classes) so that training and scoring code behave, and nothing more: it is NOT the real data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from cvinterp.data.concepts import FOCAL_COLOURS, write_catalogue, write_csv
from cvinterp.data.images import FASHION_FILES, imagenet_wnids

#: (width, height) of ImageNet validation images: mostly 500 px on the long side.
VAL_SIZES = ((500, 375), (500, 333), (375, 500), (500, 500), (333, 500), (500, 400), (500, 281))
#: The paper's counts: Broden has 63,305 images, the ImageNet validation set 50,000.
BRODEN_IMAGES = 63305
IMAGENET_VAL_IMAGES = 50000
_ZIP_TIME = (2017, 1, 1, 0, 0, 0)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, max(1, min(n, parts)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _parallel(fn: Callable, jobs: Sequence[tuple], workers: int | None) -> list:
    """`fn(*job)` for each job, in order, in `workers` processes (1: in this process)."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("fork")) as pool:
        return list(pool.map(fn, *zip(*jobs, strict=True)))


def _palette(seed: int, stream: int, n: int) -> np.ndarray:
    """n distinct-ish RGB colours (float32 0-255), one per class."""
    rng = np.random.default_rng([seed, stream])
    return rng.uniform(20, 235, (n, 3)).astype(np.float32)


def _stripes(h: int, w: int, freq: float, angle: float, phase: float) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a sinusoidal grating, the classes' texture (separable:
    sin(X + Y) = sin X cos Y + cos X sin Y, so only 1-D sines are computed)."""
    k = np.float32(2 * np.pi * freq / max(h, w))
    x = k * np.float32(np.cos(angle)) * np.arange(w, dtype=np.float32) + np.float32(phase)
    y = k * np.float32(np.sin(angle)) * np.arange(h, dtype=np.float32)
    s = np.sin(y)[:, None] * np.cos(x)[None, :] + np.cos(y)[:, None] * np.sin(x)[None, :]
    return 0.5 + 0.5 * s


_NOISE: dict[int, np.ndarray] = {}


def _noise(rng: np.random.Generator, h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 1) float32 unit noise: a window at a random place of a seeded 1024 px bank (fast
    and deterministic; drawing fresh normals for every pixel would dominate the writing time)."""
    if seed not in _NOISE:
        _NOISE[seed] = (
            np.random.default_rng([seed, 99]).normal(0, 1, (1024, 1024)).astype(np.float32)
        )
    bank = _NOISE[seed]
    y, x = int(rng.integers(0, 1024 - h + 1)), int(rng.integers(0, 1024 - w + 1))
    return bank[y : y + h, x : x + w, None]


def _pattern(rng, h: int, w: int, a: np.ndarray, b: np.ndarray, style, seed: int) -> np.ndarray:
    """(h, w, 3) float32: a class's colours a/b mixed by its grating, plus pixel noise."""
    freq, angle = style
    g = _stripes(h, w, freq, angle, rng.uniform(0, 2 * np.pi))[..., None]
    return b + (a - b) * g + 12 * _noise(rng, h, w, seed)


# ---------------------------------------------------------------- ImageNet validation tree
def _val_chunk(root: str, start: int, stop: int, classes: np.ndarray, seed: int, sizes) -> None:
    wnids = imagenet_wnids()
    colours = _palette(seed, 2, 2 * len(wnids)).reshape(len(wnids), 2, 3)
    style = np.random.default_rng([seed, 3]).uniform([2, 0], [12, np.pi], (len(wnids), 2))
    for i in range(start, stop):
        rng = np.random.default_rng([seed, 4, i])
        c = int(classes[i])
        w, h = sizes[int(rng.integers(len(sizes)))]
        img = _pattern(rng, h, w, colours[c, 0], colours[c, 1], style[c], seed)
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        path = Path(root) / wnids[c] / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        Image.fromarray(rgb).save(path, "JPEG", quality=85)


def imagenet_val(
    root: str | Path,
    n_images: int = IMAGENET_VAL_IMAGES,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = VAL_SIZES,
    workers: int | None = 1,
) -> Path:
    """An ImageNet-style validation tree: root/<wnid>/ILSVRC2012_val_%08d.JPEG over the 1000
    ImageNet-1k wnids, images spread evenly over the classes in a seeded order (every class
    gets one when n_images >= 1000, as a class folder may not be empty), each of a size drawn
    from `sizes` ((width, height)); a class has its own two colours and grating."""
    wnids = imagenet_wnids()
    if n_images < len(wnids):
        raise ValueError(f"an ImageNet validation tree needs >= {len(wnids)} images (one a class)")
    root = Path(root)
    for wnid in wnids:
        (root / wnid).mkdir(parents=True, exist_ok=True)
    classes = np.random.default_rng([seed, 1]).permutation(np.arange(n_images) % len(wnids))
    jobs = [(str(root), a, b, classes, seed, tuple(sizes)) for a, b in _chunks(n_images, 64)]
    _parallel(_val_chunk, jobs, workers)
    return root


# ---------------------------------------------------------------- Broden
BRODEN_CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
BRODEN_NAMES = {
    "color": [f"{c}-c" for c in FOCAL_COLOURS],
    "object": [
        "wall", "floor", "sky", "tree", "building", "person", "car", "road", "grass", "table",
        "chair", "dog", "cat", "bird", "water", "window", "door", "bed", "plant", "mountain",
    ],
    "part": ["head", "leg", "wheel", "torso", "roof", "screen"],
    "material": ["wood", "fabric", "glass", "metal", "painted", "brick", "carpet", "tile"],
    "scene": [f"{s}-s" for s in (
        "street", "kitchen", "bedroom", "forest_path", "highway", "living_room", "coast",
        "office", "mountain", "bathroom",
    )],
    "texture": [
        "banded", "striped", "chequered", "dotted", "zigzagged", "lined", "grid", "spiralled",
        "woven", "wrinkled",
    ],
}  # fmt: skip
BRODEN_SOURCES = ("ade20k", "dtd", "opensurfaces", "pascal")
_BRODEN_INDEX = ["image", "split", "ih", "iw", "sh", "sw"] + BRODEN_CATEGORIES


def _broden_numbers() -> dict[tuple[str, str], int]:
    number: dict[tuple[str, str], int] = {}
    for cat in BRODEN_CATEGORIES:
        for name in BRODEN_NAMES[cat]:
            number[cat, name] = len(number) + 1
    return number


_FOCAL_LUT: list[np.ndarray] = []


def _colour_labels(rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest of Broden's focal colours per pixel (plain RGB distance, looked up
    in a table over 32 levels a channel)."""
    if not _FOCAL_LUT:
        focal = np.array(list(FOCAL_COLOURS.values()), np.float32)
        levels = np.arange(4, 256, 8, dtype=np.float32)
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1)
        _FOCAL_LUT.append(((grid[..., None, :] - focal) ** 2).sum(-1).argmin(-1))
    q = rgb >> 3
    return _FOCAL_LUT[0][q[..., 0], q[..., 1], q[..., 2]]


def _save_mask(path: Path, labels: np.ndarray) -> None:
    """A label map as Broden stores it: R + 256*G."""
    rgb = np.stack([labels % 256, labels // 256, np.zeros_like(labels)], -1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path, compress_level=1)


def _broden_chunk(root: str, start: int, stop: int, size: int, seed: int):
    number = _broden_numbers()
    nums = {cat: [number[cat, n] for n in BRODEN_NAMES[cat]] for cat in BRODEN_CATEGORIES}
    n_obj, n_tex = len(nums["object"]), len(nums["texture"])
    obj_colours = _palette(seed, 10, 2 * n_obj).reshape(n_obj, 2, 3)
    obj_style = np.random.default_rng([seed, 11]).uniform([2, 0], [10, np.pi], (n_obj, 2))
    tex_style = np.random.default_rng([seed, 12]).uniform([3, 0], [16, np.pi], (n_tex, 2))
    scene_colours = _palette(seed, 13, len(nums["scene"]))
    sh = (size + 1) // 2  # broden1_224: 112, broden1_227: 113
    pick = np.arange(sh) * size // sh  # nearest-neighbour downsampling of label maps
    rows, counts, coverage = [], Counter(), Counter()
    for i in range(start, stop):
        rng = np.random.default_rng([seed, 14, i])
        source = BRODEN_SOURCES[i % len(BRODEN_SOURCES)]
        stem = f"{source}/{source}_{i:08d}"
        cells: dict[str, str] = {}
        maps: dict[str, np.ndarray] = {}
        scene = int(rng.integers(len(nums["scene"])))
        img = scene_colours[scene] + 20 * _noise(rng, size, size, seed)
        img = np.broadcast_to(img, (size, size, 3)).copy()
        if source == "dtd":  # a whole-image texture
            t = int(rng.integers(n_tex))
            g = _stripes(size, size, *tex_style[t], rng.uniform(0, 2 * np.pi))[..., None]
            img = img * 0.3 + g * 180
            cells["texture"] = str(nums["texture"][t])
            counts["texture", nums["texture"][t]] += 1
            coverage["texture", nums["texture"][t]] += 1.0
        else:
            objects = np.zeros((size, size), np.int32)
            parts = np.zeros((size, size), np.int32)
            material = np.zeros((size, size), np.int32)
            for _ in range(int(rng.integers(1, 4))):
                o = int(rng.integers(n_obj))
                hh, ww = (rng.uniform(0.25, 0.7, 2) * size).astype(int)
                y, x = rng.integers(0, size - hh + 1), rng.integers(0, size - ww + 1)
                img[y : y + hh, x : x + ww] = _pattern(
                    rng, hh, ww, obj_colours[o, 0], obj_colours[o, 1], obj_style[o], seed
                )
                objects[y : y + hh, x : x + ww] = nums["object"][o]
                parts[y : y + hh, x : x + ww] = 0
                parts[y : y + hh // 3, x : x + ww] = nums["part"][o % len(nums["part"])]
                material[y : y + hh, x : x + ww] = nums["material"][o % len(nums["material"])]
            if source in ("ade20k", "pascal"):
                maps["object"], maps["part"] = objects, parts
            else:
                maps["material"] = material
            if source == "ade20k":
                cells["scene"] = str(nums["scene"][scene])
                counts["scene", nums["scene"][scene]] += 1
                coverage["scene", nums["scene"][scene]] += 1.0
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(Path(root) / "images" / f"{stem}.jpg", quality=90)
        small = np.asarray(Image.fromarray(rgb).resize((sh, sh), Image.BOX))
        maps["color"] = _colour_labels(small).astype(np.int32) + nums["color"][0]
        for cat, labels in maps.items():
            if labels.shape[0] != sh:
                labels = labels[pick][:, pick]
            found, pixels = np.unique(labels, return_counts=True)
            present = [(int(n), int(c)) for n, c in zip(found, pixels, strict=True) if n]
            if not present:
                continue
            name = f"{stem}_{cat}.png" if cat != "part" else f"{stem}_part_1.png"
            _save_mask(Path(root) / "images" / name, labels)
            cells[cat] = name
            for n, c in present:
                counts[cat, n] += 1
                coverage[cat, n] += c / labels.size
        split = "val" if rng.random() < 0.2 else "train"
        rows.append(
            [f"{stem}.jpg", split, size, size, sh, sh]
            + [cells.get(c, "") for c in BRODEN_CATEGORIES]
        )
    return rows, counts, coverage


def broden(
    root: str | Path,
    name: str = "broden1_224",
    n_images: int = BRODEN_IMAGES,
    size: int = 224,
    seed: int = 0,
    workers: int | None = 1,
) -> Path:
    """A Broden folder `root/name` in the real layout: index.csv (image, split, ih, iw, sh, sw,
    then color, object, part, material, scene, texture cells: `;`-separated mask PNG paths or
    whole-image label numbers), category.csv, label.csv, c_<category>.csv, and images/ with
    <source>/<stem>.jpg at `size` px and R + 256*G label PNGs at half size (112 or 113 px).
    Sources as in Broden: ade20k (scene, object, part), pascal (object, part), opensurfaces
    (material), dtd (whole-image texture); every image has a colour mask."""
    folder = Path(root) / name
    for source in BRODEN_SOURCES:
        (folder / "images" / source).mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), a, b, size, seed) for a, b in _chunks(n_images, 64)]
    rows, counts, coverage = [], Counter(), Counter()
    for r, n, c in _parallel(_broden_chunk, jobs, workers):
        rows += r
        counts.update(n)
        coverage.update(c)
    write_csv(folder / "index.csv", _BRODEN_INDEX, rows)
    names = {cat: BRODEN_NAMES[cat] for cat in BRODEN_CATEGORIES}
    write_catalogue(folder, names, _broden_numbers(), counts, coverage)
    return folder


def zip_dir(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip `folder` with its own name as the top folder (broden1_224/index.csv, ...), stored
    (JPEG and PNG do not compress further), with fixed times: the same bytes every time."""
    folder, zip_path = Path(folder), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            arc = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            info = zipfile.ZipInfo(arc + ("/" if path.is_dir() else ""), _ZIP_TIME)
            if path.is_dir():
                zf.writestr(info, b"")
            else:
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, path.read_bytes())
    tmp.replace(zip_path)
    return zip_path


# ---------------------------------------------------------------- CIFAR-10, Fashion-MNIST
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _class_images(n: int, side: int, channels: int, seed: int, stream: int):
    """n (side, side, channels) uint8 images and their labels 0-9: a class's colours and
    grating plus noise (vectorised over the images)."""
    rng = np.random.default_rng([seed, stream])
    labels = rng.integers(0, 10, n)
    colours = _palette(seed, 20, 20).reshape(10, 2, 3)[..., :channels]
    style = np.random.default_rng([seed, 21]).uniform([1, 0], [4, np.pi], (10, 2))
    y = np.arange(side, dtype=np.float32)[:, None] / side
    x = np.arange(side, dtype=np.float32)[None, :] / side
    freq, angle = style[labels, 0], style[labels, 1]
    t = np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    g = (0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * t + phase))[..., None]
    img = colours[labels, 0][:, None, None] * g + colours[labels, 1][:, None, None] * (1 - g)
    img += rng.normal(0, 15, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tf.addfile(info, io.BytesIO(data))


def cifar10_tarball(path: str | Path, n_train: int = 50000, n_test: int = 10000, seed=0) -> Path:
    """cifar-10-python.tar.gz as distributed: cifar-10-batches-py/data_batch_1..5, test_batch
    (Python-2 pickles, protocol 2, of {b"batch_label", b"labels", b"data" (N, 3072) uint8 in
    CHW order, b"filenames"}) and batches.meta ({b"label_names", ...})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images, labels = _class_images(n_train + n_test, 32, 3, seed, 22)
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    splits = [(f"data_batch_{k + 1}", a, b) for k, (a, b) in enumerate(_chunks(n_train, 5))]
    splits.append(("test_batch", n_train, n_train + n_test))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tf:
            for name, a, b in splits:
                batch = {
                    b"batch_label": f"synthetic {name}".encode(),
                    b"labels": [int(v) for v in labels[a:b]],
                    b"data": np.ascontiguousarray(data[a:b]),
                    b"filenames": [f"synthetic_{i}.png".encode() for i in range(a, b)],
                }
                _tar_add(tf, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
            meta = {
                b"num_cases_per_batch": max(1, n_train // 5),
                b"label_names": [n.encode() for n in CIFAR10_NAMES],
                b"num_vis": 3072,
            }
            _tar_add(tf, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
            _tar_add(tf, "cifar-10-batches-py/readme.html", b"<html>synthetic</html>\n")
    path.write_bytes(buf.getvalue())
    return path


def _idx_gz(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def fashion_mnist(folder: str | Path, n_train: int = 60000, n_test: int = 10000, seed=0):
    """The four Fashion-MNIST gzip IDX files (images magic 2051, labels 2049) in `folder`;
    returns {file name: sha256 of its gunzipped content} (the pins `FASHION_IDX_SHA256` holds
    for the real files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _class_images(n_train + n_test, 28, 1, seed, 23)
    out = {}
    for (img_name, lab_name), (a, b) in zip(
        FASHION_FILES.values(), ((0, n_train), (n_train, n_train + n_test)), strict=True
    ):
        _idx_gz(folder / img_name, images[a:b, ..., 0])
        _idx_gz(folder / lab_name, labels[a:b])
        for n in (img_name, lab_name):
            with gzip.open(folder / n, "rb") as fh:
                out[n] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ---------------------------------------------------------------- PTB, WikiText-2
# A toy grammar over word classes: every token has its Penn tag, so the tag files line up.
_TEMPLATES = [
    ["DT", "JJ", "NN", "VBD", "IN", "DT", "NN"],
    ["PRP", "VBZ", "DT", "NN", "CC", "DT", "JJ", "NNS"],
    ["DT", "NN", "MD", "VB", "CD", "NNS", "IN", "NN"],
    ["NNS", "VBP", "RB", "JJ", "TO", "VB", "DT", "NN"],
    ["DT", "NN", "IN", "DT", "NN", "VBD", "RB"],
]
_FUNCTION = {
    "DT": ["the", "a", "an", "this", "that", "some"],
    "IN": ["of", "in", "for", "on", "with", "at", "by", "from"],
    "CC": ["and", "but", "or"],
    "PRP": ["he", "she", "it", "they", "we"],
    "MD": ["will", "would", "could", "may"],
    "TO": ["to"],
}
_CONTENT = ("NN", "NNS", "VBD", "VBZ", "VBP", "VB", "JJ", "RB")
_SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni \
no nu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu".split()


def _lexicon(vocab: int, seed: int) -> dict[str, list[str]]:
    """Open-class words per tag (made-up words), about `vocab` in all."""
    rng = np.random.default_rng([seed, 30])
    per = max(2, vocab // len(_CONTENT))
    words: dict[str, list[str]] = {}
    seen: set[str] = set()
    for tag in _CONTENT:
        words[tag] = []
        while len(words[tag]) < per:
            w = "".join(rng.choice(_SYLLABLES, int(rng.integers(2, 5))))
            if w not in seen:
                seen.add(w)
                words[tag].append(w + ("s" if tag == "NNS" else "ed" if tag == "VBD" else ""))
    return words


def _sentences(n_tokens: int, vocab: int, seed: int, stream: int, ptb_style: bool):
    """Sentences (words, tags) of about `n_tokens` tokens in all; Zipf-distributed open-class
    words, some `<unk>` (PTB's unknown token) and numbers (`N` in PTB)."""
    rng = np.random.default_rng([seed, stream])
    lex = _lexicon(vocab, seed)
    out, total = [], 0
    while total < n_tokens:
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        words, tags = [], []
        for tag in template:
            if tag in _FUNCTION:
                words.append(_FUNCTION[tag][int(rng.integers(len(_FUNCTION[tag])))])
            elif tag == "CD":
                words.append("N" if ptb_style else str(int(rng.integers(2, 2000))))
            else:
                pool = lex[tag]
                k = min(len(pool) - 1, int(rng.zipf(1.3)) - 1)
                words.append(pool[k] if rng.random() > 0.03 else "<unk>")
            tags.append(words[-1] if words[-1] == "<unk>" else tag)
        out.append((words, tags))
        total += len(words) + 1
    return out


def ptb(folder: str | Path, n_tokens: int = 929_000, vocab: int = 10_000, seed: int = 0):
    """ptb.{train,valid,test}.txt in Mikolov's format (lower case, `<unk>`, `N` for numbers,
    one sentence a line with a leading and trailing space) and Khandelwal et al.'s tag files
    ptb.pos.{valid,test}.txt (one line of tags per line of text). The train split has
    `n_tokens` tokens, valid and test a tenth each (PTB's proportions, about)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_tokens, "valid": max(50, n_tokens // 12), "test": max(50, n_tokens // 11)}
    for k, (split, n) in enumerate(sizes.items()):
        sents = _sentences(n, vocab, seed, 31 + k, ptb_style=True)
        (folder / f"ptb.{split}.txt").write_text("".join(f" {' '.join(w)} \n" for w, _ in sents))
        if split != "train":
            (folder / f"ptb.pos.{split}.txt").write_text(
                "".join(f"{' '.join(t)}\n" for _, t in sents)
            )
    return folder


def _wiki_lines(n_tokens: int, vocab: int, seed: int, stream: int):
    """WikiText lines (text, tags): ' = Heading = ' sections of paragraphs, ' ' empty lines."""
    sents = _sentences(n_tokens, vocab, seed, stream, ptb_style=False)
    rng = np.random.default_rng([seed, stream, 1])
    lines: list[tuple[str, str]] = []
    i = 0
    while i < len(sents):
        head_words, head_tags = sents[i]
        title = head_words[2:4] if len(head_words) > 3 else head_words[:1]
        heading = f" = {' '.join(title).title()} = "
        lines += [(" ", ""), (heading, " ".join(["SYM"] + ["NNP"] * len(title) + ["SYM"]))]
        lines.append((" ", ""))
        i += 1
        for _ in range(int(rng.integers(1, 4))):
            take = sents[i : i + int(rng.integers(2, 6))]
            i += len(take)
            if not take:
                break
            text = " ".join(" ".join(w) + " ." for w, _ in take)
            tags = " ".join(" ".join(t) + " ." for _, t in take)
            lines += [(f" {text} ", tags), (" ", "")]
    return lines


def wikitext2_zip(
    path: str | Path, n_tokens: int = 2_088_628, vocab: int = 33_278, seed: int = 0
) -> Path:
    """wikitext-2-v1.zip as distributed (wikitext-2/wiki.{train,valid,test}.tokens: ' = Heading
    = ' lines, paragraphs with a leading and trailing space, blank lines of one space), and
    Khandelwal et al.'s tag files wikitext-2.pos.{valid,test}.txt next to it (one line of tags
    per line of text, empty for a blank line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_tokens, "valid": max(50, n_tokens // 9), "test": max(50, n_tokens // 8)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("wikitext-2/", _ZIP_TIME), b"")
        for k, (split, n) in enumerate(sizes.items()):
            lines = _wiki_lines(n, vocab, seed, 41 + k)
            info = zipfile.ZipInfo(f"wikitext-2/wiki.{split}.tokens", _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, "".join(t + "\n" for t, _ in lines).encode())
            if split != "train":
                (path.parent / f"wikitext-2.pos.{split}.txt").write_text(
                    "".join(tags + "\n" for _, tags in lines)
                )
    return path
