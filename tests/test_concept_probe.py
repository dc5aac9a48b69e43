"""The offline concept probe (a stand-in for Broden): GIMP tiles, colour naming, the probe
builder, the pinned GIMP tile fetch, and the dissection config."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from cvinterp.config import ConfigError, resolve
from cvinterp.data import fetch
from cvinterp.data.broden import BrodenDataset, decode_mask
from cvinterp.data.concepts import (
    CATEGORIES,
    FOCAL_COLOURS,
    build_concept_probe,
    colour_names,
    gimp_patterns,
    read_gimp_pattern,
)
from cvinterp.data.images import DataError
from tests.conftest import ROOT, SCHEMA

# --- GIMP .pat tiles ------------------------------------------------------------------------


def pat_bytes(pixels: np.ndarray, name: str = "tile") -> bytes:
    """A GIMP pattern file: `>5I` header (header size, version 1, w, h, bpp), GPAT, name\\0."""
    pixels = np.asarray(pixels, np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, bpp = pixels.shape
    raw_name = name.encode() + b"\0"
    header = struct.pack(">5I", 24 + len(raw_name), 1, w, h, bpp) + b"GPAT" + raw_name
    return header + pixels.tobytes()


def write_pat(path: Path, pixels: np.ndarray, name: str = "tile") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pat_bytes(pixels, name))
    return path


def test_rgb_pattern_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # h != w: catches a transpose
    out = read_gimp_pattern(write_pat(tmp_path / "rgb.pat", pixels, "A longer name"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grey_pattern_becomes_three_equal_channels(tmp_path):
    grey = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) * 10
    out = read_gimp_pattern(write_pat(tmp_path / "grey.pat", grey))
    assert out.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_grey_alpha_and_rgba_patterns_drop_alpha(tmp_path):
    rng = np.random.default_rng(1)
    ga = rng.integers(0, 256, (3, 4, 2), dtype=np.uint8)
    out = read_gimp_pattern(write_pat(tmp_path / "ga.pat", ga))
    np.testing.assert_array_equal(out, np.repeat(ga[..., :1], 3, axis=2))
    rgba = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_gimp_pattern(write_pat(tmp_path / "a.pat", rgba)),
                                  rgba[..., :3])  # fmt: skip


def test_file_without_magic_is_refused(tmp_path):
    data = bytearray(pat_bytes(np.zeros((2, 2, 3))))
    data[20:24] = b"GIMP"
    (tmp_path / "bad.pat").write_bytes(bytes(data))
    with pytest.raises(DataError, match="GPAT"):
        read_gimp_pattern(tmp_path / "bad.pat")
    (tmp_path / "short.pat").write_bytes(data[:10])
    with pytest.raises(DataError):
        read_gimp_pattern(tmp_path / "short.pat")


def test_truncated_pattern_is_refused(tmp_path):
    data = pat_bytes(np.zeros((4, 4, 3)))
    (tmp_path / "cut.pat").write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_gimp_pattern(tmp_path / "cut.pat")


def test_unsupported_bytes_per_pixel_is_refused(tmp_path):
    data = bytearray(pat_bytes(np.zeros((2, 2, 3))))
    data[16:20] = struct.pack(">I", 0)
    (tmp_path / "bpp0.pat").write_bytes(bytes(data))
    with pytest.raises(DataError):
        read_gimp_pattern(tmp_path / "bpp0.pat")


# --- colour naming --------------------------------------------------------------------------


def test_focal_colours_name_themselves():
    rgb = np.array([list(FOCAL_COLOURS.values())], np.uint8)  # (1, 11, 3)
    idx = colour_names(rgb)
    assert idx.shape == (1, len(FOCAL_COLOURS))
    assert idx[0].tolist() == list(range(len(FOCAL_COLOURS)))


@pytest.mark.parametrize(
    ("rgb", "name"),
    [((250, 250, 250), "white"), ((0, 0, 255), "blue"), ((255, 0, 0), "red"),
     ((0, 0, 0), "black"), ((0, 160, 0), "green"), ((255, 255, 0), "yellow")],
)  # fmt: skip
def test_near_focal_pixels_get_the_colour_name(rgb, name):
    img = np.full((2, 3, 3), rgb, np.uint8)
    idx = colour_names(img)
    assert idx.shape == (2, 3)
    assert {list(FOCAL_COLOURS)[i] for i in idx.ravel()} == {name}


# --- the probe builder ----------------------------------------------------------------------

TILE_FOLDERS = {"a": "Wood", "b": "Stone", "c": "Legacy"}  # Legacy: a texture, no material


@pytest.fixture(scope="module")
def patterns(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("patterns")
    rng = np.random.default_rng(7)
    write_pat(folder / "Wood" / "a.pat", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    write_pat(folder / "Stone" / "b.pat", rng.integers(0, 256, (9, 9, 4), dtype=np.uint8))
    write_pat(folder / "Legacy" / "c.pat", rng.integers(0, 256, (12, 8), dtype=np.uint8))
    return folder


def build(root: Path, patterns: Path, fashion_dir: Path, seed: int = 0) -> Path:
    return build_concept_probe(
        root, images=6, size=32, seed=seed, patterns_dir=patterns, fashion_dir=fashion_dir
    )


@pytest.fixture(scope="module")
def probe(tmp_path_factory, patterns, fashion_dir) -> Path:
    return build(tmp_path_factory.mktemp("probe"), patterns, fashion_dir)


def masks_of(root: Path) -> list[dict[str, np.ndarray]]:
    ds = BrodenDataset(root)
    return [{c: m.copy() for c, m in ds.item(i, image=False)["masks"].items()} for i in range(6)]


def test_gimp_patterns_lists_tiles_with_their_folder(patterns):
    tiles = gimp_patterns(patterns)
    assert [(n, f) for n, f, _ in tiles] == [("c", "Legacy"), ("b", "Stone"), ("a", "Wood")]
    assert all(t.shape[2] == 3 for _, _, t in tiles)


def test_probe_reads_as_broden(probe):
    ds = BrodenDataset(probe)
    assert len(ds) == 6
    assert ds.categories == CATEGORIES == ["color", "object", "material", "scene", "texture"]
    names = {name for _, name, _ in ds.labels}
    assert {"wood", "stone", "a-t", "b-t", "c-t"} <= names
    assert "legacy" not in names  # the Legacy folder is no material
    numbers = [n for n, _, _ in ds.labels]
    assert sorted(numbers) == list(range(1, len(numbers) + 1))  # global numbering from 1
    for i in range(len(ds)):
        item = ds.item(i)
        assert item["image"].shape == (32, 32, 3)
        assert item["mask_shape"] == (16, 16)
        for cat, m in item["masks"].items():
            assert m.shape[1:] == (16, 16), cat
            assert {ds.primary[n] for n in np.unique(m).tolist() if n} <= {cat}
        scene = item["image_labels"]["scene"]
        assert len(scene) == 1 and ds.primary[scene[0]] == "scene"
        assert ds.label_names[scene[0]].endswith("-s")
        colour = item["masks"]["color"]
        assert colour.shape == (1, 16, 16) and (colour > 0).all()


def test_primary_category_is_the_labels_category(probe):
    """Each label is coded in one category, with its coverage (area in whole images) as
    Broden's c_*.csv give it; a label the probe never shows covers nothing (and falls to the
    last category by the authors' rule: it has no pixel to score)."""
    ds = BrodenDataset(probe)
    area = {}
    for m in (ds.item(i, image=False) for i in range(len(ds))):
        for stack in m["masks"].values():
            for n, c in zip(*np.unique(stack, return_counts=True), strict=True):
                if n:
                    area[int(n)] = area.get(int(n), 0) + c / stack[0].size
        for numbers in m["image_labels"].values():
            for n in numbers:
                area[n] = area.get(n, 0) + 1.0
    for cat in CATEGORIES:
        assert ds.codes[cat], cat
        assert sorted(ds.codes[cat]) == list(range(1, len(ds.codes[cat]) + 1))  # dense codes
        for number in ds.codes[cat].values():
            assert ds.coverage[cat][number] == pytest.approx(area.get(number, 0), rel=1e-5)
            if number in area:
                assert ds.primary[number] == cat, (cat, ds.label_names[number])
            else:
                assert ds.primary[number] == ds.categories[-1]
    colours = [ds.label_names[ds.codes["color"][k + 1]] for k in range(len(FOCAL_COLOURS))]
    assert colours == [f"{c}-c" for c in FOCAL_COLOURS]


def test_objects_occlude_texture_and_material(probe):
    covered = 0
    for m in masks_of(probe):
        if "object" not in m:
            continue
        obj = m["object"][0] > 0
        covered += int(obj.sum())
        for cat in ("texture", "material"):
            if cat in m:
                assert not (m[cat][0][obj]).any(), cat
    assert covered > 0


def test_material_is_the_tiles_folder_and_legacy_has_none(probe):
    ds = BrodenDataset(probe)
    seen = set()
    for m in masks_of(probe):
        tex = m["texture"][0] if "texture" in m else np.zeros((16, 16), int)
        mat = m["material"][0] if "material" in m else np.zeros((16, 16), int)
        assert not mat[tex == 0].any()  # material only where there is a texture
        for t in set(np.unique(tex).tolist()) - {0}:
            folder = TILE_FOLDERS[ds.label_names[t].removesuffix("-t")]
            under = mat[tex == t]
            if folder == "Legacy":
                assert not under.any()
            else:
                assert {ds.label_names[n] for n in np.unique(under).tolist()} == {folder.lower()}
            seen.add(folder == "Legacy")
    assert seen == {True, False}  # both kinds of tile appear in this probe


def test_probe_is_deterministic_per_seed(probe, tmp_path, patterns, fashion_dir):
    again = build(tmp_path / "again", patterns, fashion_dir, seed=0)
    other = build(tmp_path / "other", patterns, fashion_dir, seed=1)
    assert (again / "index.csv").read_bytes() == (probe / "index.csv").read_bytes()
    for a, b in zip(masks_of(probe), masks_of(again), strict=True):
        assert a.keys() == b.keys()
        for cat in a:
            np.testing.assert_array_equal(a[cat], b[cat])
    for name in ("label.csv", "category.csv"):
        assert (again / name).read_bytes() == (probe / name).read_bytes()
    differs = (other / "index.csv").read_bytes() != (probe / "index.csv").read_bytes() or any(
        not np.array_equal(decode_mask(p), decode_mask(other / p.relative_to(probe)))
        for p in sorted((probe / "images" / "standin").glob("*.png"))
    )
    assert differs


def test_odd_size_and_missing_patterns_are_refused(tmp_path, patterns, fashion_dir):
    with pytest.raises(ValueError, match="even"):
        build_concept_probe(tmp_path / "odd", images=2, size=33, seed=0,
                            patterns_dir=patterns, fashion_dir=fashion_dir)  # fmt: skip
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no GIMP patterns"):
        build_concept_probe(tmp_path / "p", images=2, size=32, seed=0,
                            patterns_dir=tmp_path / "empty", fashion_dir=fashion_dir)  # fmt: skip


# --- the pinned GIMP tile fetch -------------------------------------------------------------


@pytest.fixture
def gimp_source(tmp_path) -> Path:
    src = tmp_path / "gimp" / "patterns"
    write_pat(src / "Wood" / "w.pat", np.full((3, 3, 3), 90, np.uint8))
    write_pat(src / "Legacy" / "l.pat", np.arange(16, dtype=np.uint8).reshape(4, 4))
    return src


def fake_debian(source: Path, calls: list):
    def debian_files(package, paths, workdir):
        calls.append(package)
        if len(calls) > 1:
            raise AssertionError("debian_files called again")
        assert package == "gimp-data"
        return {p: source for p in paths}

    return debian_files


def test_gimp_tiles_that_do_not_match_the_pin_are_refused(tmp_path, gimp_source, monkeypatch):
    calls: list = []
    monkeypatch.setattr(fetch, "debian_files", fake_debian(gimp_source, calls))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum"):
        fetch.gimp_patterns_dir(dest, tmp_path / "work")
    assert calls == ["gimp-data"]
    assert not (dest / "tiles.sha256").exists()
    assert not list(dest.glob("*/*.pat"))


def test_pinned_gimp_tiles_are_copied_once(tmp_path, gimp_source, monkeypatch):
    calls: list = []
    monkeypatch.setattr(fetch, "debian_files", fake_debian(gimp_source, calls))
    monkeypatch.setattr(fetch, "GIMP_PATTERNS_SHA256", fetch._tree_hash(gimp_source))
    dest = tmp_path / "dest"
    assert fetch.gimp_patterns_dir(dest, tmp_path / "work") == dest
    for rel in ("Wood/w.pat", "Legacy/l.pat"):
        assert (dest / rel).read_bytes() == (gimp_source / rel).read_bytes()
    record = (dest / "tiles.sha256").read_text()
    assert record.split()[0] == fetch._tree_hash(gimp_source)
    assert fetch.gimp_patterns_dir(dest, tmp_path / "work") == dest  # no second fetch
    assert calls == ["gimp-data"]
    # a damaged copy is fetched again (the patched debian_files now raises)
    (dest / "Wood" / "w.pat").write_bytes(b"damaged")
    with pytest.raises(AssertionError, match="called again"):
        fetch.gimp_patterns_dir(dest, tmp_path / "work")


# --- the dissection config ------------------------------------------------------------------


def load(profile):
    return yaml.safe_load((ROOT / "config" / f"{profile}.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(iou_threshold=2), r"'experiments\.dissection\.iou_threshold'"),
        (lambda d: d.update(quantile=0), r"'experiments\.dissection\.quantile'"),
        (lambda d: d.update(dataset="imagenet"), r"'experiments\.dissection\.dataset'"),
        (
            lambda d: d["models"]["tower_photos"].update(references={"conv2": {"trained": "x"}}),
            r"'experiments\.dissection\.models\.tower_photos\.references\.conv2'.*must also be "
            "listed",
        ),
        (
            lambda d: d["models"].update(vgg16={"layers": ["conv5_3"]}),
            r"'experiments\.dissection\.models\.vgg16' names model 'vgg16'",
        ),
        (
            lambda d: d["models"]["squeezenet"]["layers"].append("fire10"),
            r"experiments\.dissection\.models\.squeezenet.*'fire10' is not a named layer "
            "of squeezenet1_1",
        ),
    ],
)
def test_bad_dissection_settings_are_named(edit, message):
    cfg = load("config")
    resolve(copy.deepcopy(cfg), SCHEMA)  # the unedited profile is valid
    edit(cfg["experiments"]["dissection"])
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, SCHEMA)


def test_references_to_listed_layers_are_accepted():
    cfg = load("config")
    cfg["experiments"]["dissection"]["models"]["tower_photos"]["references"] = {
        "conv5": {"trained": "x"}
    }
    d = resolve(cfg, SCHEMA)["experiments"]["dissection"]
    ref = d["models"]["tower_photos"]["references"]
    assert ref == {"conv5": {"trained": "x", "same_weights": False}}


def test_dissection_and_probe_defaults_are_filled_in():
    raw = load("smoke")
    for key in ("quantile", "iou_threshold", "scoring", "upsample", "snapshots"):
        assert key not in raw["experiments"]["dissection"], key
    d = resolve(raw, SCHEMA)["experiments"]["dissection"]
    assert (d["quantile"], d["iou_threshold"]) == (0.005, 0.04)
    assert (d["scoring"], d["upsample"], d["snapshots"]) == ("original", None, True)
    del (
        raw["experiments"]["dissection"]["random_copies"],
        raw["experiments"]["dissection"]["rotations"],
    )
    d = resolve(raw, SCHEMA)["experiments"]["dissection"]
    assert (d["random_copies"], d["rotations"]) == (3, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(m["references"] == {} for m in d["models"].values())
    cfg = load("config")
    del cfg["datasets"]["concept_probe"]
    assert resolve(cfg, SCHEMA)["datasets"]["concept_probe"] == {"images": 1000, "size": 224}


def test_odd_probe_size_is_refused_by_the_schema():
    cfg = load("config")
    cfg["datasets"]["concept_probe"] = {"size": 33}
    with pytest.raises(ConfigError, match=r"'datasets\.concept_probe\.size'"):
        resolve(cfg, SCHEMA)


def test_references_must_name_released_results():
    from cvinterp.config import check_released_references

    released = yaml.safe_load((ROOT / "config" / "netdissect" / "released.yaml").read_text())
    paper = resolve(load("paper"), SCHEMA)
    check_released_references(paper, released)  # the paper profile's references exist
    models = paper["experiments"]["dissection"]["models"]
    models["alexnet"]["references"]["conv5"]["random"] = "nope"
    with pytest.raises(ConfigError, match=r"alexnet\.references\.conv5\.random'.*'nope'"):
        check_released_references(paper, released)
    models["alexnet"]["references"] = {}
    ref = {"trained": "vgg16_imagenet_conv5_3", "same_weights": True}
    models["vgg16"]["references"] = {"conv5_3": ref}
    with pytest.raises(ConfigError, match="no per-unit labels"):
        check_released_references(paper, released)
