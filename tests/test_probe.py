import numpy as np
import pytest
import torch
from PIL import Image

from cvinterp.data import DataError
from cvinterp.data.probe import FolderProbe, InMemoryProbe, photo_crops
from cvinterp.models import Preprocessing


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """An ImageNet-style folder: 1000 class folders, one small image each."""
    from cvinterp.data.images import imagenet_wnids

    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for wnid in imagenet_wnids():
        (root / wnid).mkdir()
        pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / wnid / "a.png")
    return root


def test_folder_probe_streams_centre_crops_in_order(imagenet_like):
    probe = FolderProbe(str(imagenet_like), size=8, n=5, workers=2)
    assert len(probe) == 5 and len(set(probe.labels)) == 5  # a stratified sample: 5 classes
    pre = Preprocessing(mean=[0.5] * 3, std=[0.25] * 3)
    batches = list(probe.batches(pre, 2, torch.device("cpu")))
    assert [len(b) for b in batches] == [2, 2, 1]
    first = probe.image(0)
    assert first.shape == (8, 8, 3) and first.dtype == np.uint8
    torch.testing.assert_close(batches[0][0], pre(first[None])[0])
    torch.testing.assert_close(batches[2][0], pre(probe.image(4)[None])[0])


def test_folder_probe_needs_the_folder(tmp_path):
    with pytest.raises(DataError, match="never downloaded"):
        FolderProbe(str(tmp_path / "missing"), size=8, n=5, workers=0)


def test_photo_crops_are_deterministic_real_photos():
    a, b = photo_crops(64, 6, seed=1), photo_crops(64, 6, seed=1)
    assert a.images.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.std() > 10  # real content, not a blank
    probe = InMemoryProbe(a, "crops")
    assert len(probe) == 6 and probe.image(2).shape == (64, 64, 3)
