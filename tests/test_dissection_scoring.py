"""Network Dissection's IoU scored as the authors define it, checked against a reference written
from scratch here (csv + PIL, naive loops) so it shares no code, and no bugs, with cvinterp.

The authors' code this follows (CSAILVision/NetDissect `src/`; NetDissect-Lite):

- primary category: `labelprobe.primary_categories_per_index`: per label, the max of
  (coverage in c_<category>.csv or 0 if not coded there, category index): ties to the later one;
- counts: `labelprobe.accumulate_counts` + `intersect.tallyLabels`: all mask layers of all
  categories are stacked, each layer counts its label pixels (T) and the unit's active pixels on
  them (I); a whole-image label counts sh*sw in T and the unit's active pixel count in I;
  `loadseg.resolve_segmentation`: an integer in a cell that also holds pngs is a full plane;
- denominators: original `makeresult.count_act_with_labelcat` (the unit's active pixels on the
  images carrying any label of the primary category), Lite `feature_operation.tally_job`
  (per image, towards the categories of the labels under the unit's active pixels and of the
  image's whole-image labels);
- upsampling: original `upsample.upsampleL` / `centered_arange` (receptive-field centres,
  `RectBivariateSpline` of degree 1), Lite `imresize(mode='F')` (half-pixel bilinear);
- IoU and best labels: `makeresult.score_tally_stats`.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.interpolate import RectBivariateSpline

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_broden_rules", FIXTURES / "make_broden_rules.py"
)
rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rules)

N_UNITS = 6


# ----------------------------------------------------------------------------------------------
# Reference implementation
# ----------------------------------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def reference_primary(root: Path, rule: str = "coverage") -> dict[int, str]:
    """Each label.csv label's primary category.

    "coverage" (the authors' `primary_categories_per_index`): the highest coverage in
    c_<category>.csv, 0 where the label is not coded, ties to the later category of category.csv.
    "counts" (the rule to regress from): the highest ``category(count)`` in label.csv's cell."""
    root = Path(root)
    categories = [r["name"] for r in _read(root / "category.csv")]
    numbers = [int(r["number"]) for r in _read(root / "label.csv")]
    if rule == "coverage":
        coverage = {
            cat: {int(r["number"]): float(r["coverage"]) for r in _read(root / f"c_{cat}.csv")}
            for cat in categories
        }
        return {
            n: categories[max((coverage[c].get(n, 0.0), i) for i, c in enumerate(categories))[1]]
            for n in numbers
        }
    assert rule == "counts"
    result = {}
    for r in _read(root / "label.csv"):
        counts = dict(
            (m.group(1), int(m.group(2)))
            for m in (re.fullmatch(r"([^(]*)\(([^)]*)\)", f) for f in r["category"].split(";"))
        )
        result[int(r["number"])] = max(counts, key=lambda c: (counts[c], -categories.index(c)))
    return result


def _label_planes(
    root: Path, row: dict[str, str], categories: list[str]
) -> list[tuple[str, np.ndarray]]:
    """(category, label map) per mask layer of the image, every category, in cell order.

    A whole-image label is a full plane: that gives exactly the authors' scalar bookkeeping (T +=
    sh*sw and I += the unit's active count per listing; original A: the label is on the image;
    Lite A: its category is added, which weighs the active count, zero when nothing is active),
    and `loadseg.resolve_segmentation` makes an integer next to pngs in a cell a full plane."""
    sh, sw = int(row["sh"]), int(row["sw"])
    planes = []
    for cat in categories:
        for value in filter(None, (v.strip() for v in (row.get(cat) or "").split(";"))):
            if value.isdigit():
                planes.append((cat, np.full((sh, sw), int(value), np.int64)))
            else:
                with Image.open(root / "images" / value) as im:
                    rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
                planes.append((cat, rgb[..., 0] + 256 * rgb[..., 1]))
    return planes


def _py2_round(x: float) -> int:
    """Python 2's round (half away from zero), which the original's `int(round(iw / sw))` used."""
    return int(math.floor(x + 0.5))


def reference_upsample(
    amap: np.ndarray, sh: int, sw: int, upsample: str, fieldmap=None, input_size=None
) -> np.ndarray:
    """One unit's (h, w) map at the mask's (sh, sw), float32 as both codes keep it.

    "bilinear": half-pixel bilinear (Lite's `imresize(mode='F')` for upscaling).
    "fieldmap": the original `upsampleL`: the map's values sit at receptive-field centres
    ``(s//2 + o)//r + i*(t//r)`` (`centered_arange`, r = round(input_size / sw)), linear
    between them and held beyond the outer ones (`RectBivariateSpline`, kx = ky = 1)."""
    amap = np.asarray(amap, np.float32)
    if upsample == "bilinear":
        t = torch.from_numpy(np.ascontiguousarray(amap))[None, None]
        up = F.interpolate(t, size=(sh, sw), mode="bilinear", align_corners=False)
        return up[0, 0].numpy().astype(np.float32)
    assert upsample == "fieldmap"
    (oy, ox), (szy, szx), (ty, tx) = fieldmap
    r = _py2_round(input_size / sw)
    h, w = amap.shape
    ay = [(szy // 2 + oy) // r + i * (ty // r) for i in range(h)]
    ax = [(szx // 2 + ox) // r + i * (tx // r) for i in range(w)]
    spline = RectBivariateSpline(ay, ax, amap.astype(np.float64), kx=1, ky=1)
    return spline(np.arange(sh), np.arange(sw)).astype(np.float32)


def reference_counts(
    acts,
    root: Path,
    thresholds,
    *,
    scoring: str,
    upsample: str,
    fieldmap=None,
    input_size=None,
    primary_rule: str = "coverage",
    masks: str = "all",
    count: str = "layer",
):
    """(I (U, L), T (L,), A (U, L)) with L = max label + 1, by naive loops over images and units.

    The last three switch single rules off, to show the fixture notices each: `primary_rule`
    "counts" (label.csv's counts pick the primary category), `masks` "primary" (a label counts
    only in its primary category's cells), `count` "pixel" (a pixel counts a label once however
    many layers carry it)."""
    root = Path(root)
    acts = np.asarray(acts, np.float32)
    thresholds = np.asarray(thresholds)
    categories = [r["name"] for r in _read(root / "category.csv")]
    rows = _read(root / "index.csv")
    primary = reference_primary(root, primary_rule)
    n_labels = max(primary) + 1
    n_units = acts.shape[1]
    assert acts.shape[0] == len(rows)
    truth = np.zeros(n_labels, np.int64)
    inter = np.zeros((n_units, n_labels), np.int64)
    A_cat = {(u, c): 0 for u in range(n_units) for c in categories}
    for n, row in enumerate(rows):
        sh, sw = int(row["sh"]), int(row["sw"])
        planes = _label_planes(root, row, categories)
        if masks == "primary":
            planes = [
                (cat, np.where(np.vectorize(lambda x, c=cat: primary.get(x) == c)(p), p, 0))
                for cat, p in planes
            ]
        # one (label, where) per layer the label is in, or per label over all layers ("pixel")
        found = [(int(x), p == x) for _, p in planes for x in np.unique(p) if x != 0]
        if count == "pixel":
            found = [
                (x, np.any([w for y, w in found if y == x], axis=0)) for x in {x for x, _ in found}
            ]
        for x, where in found:
            truth[x] += int(where.sum())
        on_image = {primary[x] for x, where in found if where.any()}
        for u in range(n_units):
            active = reference_upsample(acts[n, u], sh, sw, upsample, fieldmap, input_size)
            active = active > thresholds[u]
            n_active = int(active.sum())
            for x, where in found:
                inter[u, x] += int((where & active).sum())
            if scoring == "original":
                cats = on_image
            else:
                # Lite: the categories of the labels under the active pixels, whole-image labels
                # included. (Lite's code reuses a stale `tally_cat` from the previous unit or
                # image when an image has no pixel masks; this is the meaning it intends.)
                assert scoring == "lite"
                cats = {primary[x] for x, where in found if (where & active).any()}
            for c in cats:
                A_cat[(u, c)] += n_active
    act = np.zeros((n_units, n_labels), np.int64)
    for x, c in primary.items():
        for u in range(n_units):
            act[u, x] = A_cat[(u, c)]
    return inter, truth, act


def reference_iou(
    acts,
    root: Path,
    thresholds,
    *,
    scoring: str,
    upsample: str,
    fieldmap=None,
    input_size=None,
    **rules_off,
) -> np.ndarray:
    """IoU = I / (A + T - I) as (U, max label + 1) float64 by label number, 0 where the
    denominator is 0 (and in column 0)."""
    inter, truth, act = reference_counts(
        acts,
        root,
        thresholds,
        scoring=scoring,
        upsample=upsample,
        fieldmap=fieldmap,
        input_size=input_size,
        **rules_off,
    )
    denominator = (act + truth[None, :] - inter).astype(np.float64)
    iou = np.zeros(inter.shape, np.float64)
    np.divide(inter, denominator, out=iou, where=denominator > 0)
    iou[:, 0] = 0.0
    return iou


def reference_best(iou: np.ndarray, primary: dict[int, str], categories: list[str]):
    """Per unit: {category: (best label, its IoU)} and the best category (`score_tally_stats`):
    per category the first max by label number (label 0 when all are 0, as its argmax gives),
    overall the highest per-category IoU, ties to the later category."""
    result = []
    for u in range(iou.shape[0]):
        per_cat = {}
        for cat in categories:
            best, score = 0, 0.0
            for x in sorted(n for n, c in primary.items() if c == cat):
                if iou[u, x] > score:
                    best, score = x, float(iou[u, x])
            per_cat[cat] = (best, score)
        top = None
        for cat in categories:
            if top is None or per_cat[cat][1] >= per_cat[top][1]:
                top = cat
        result.append((per_cat, top))
    return result


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def broden(tmp_path: Path) -> Path:
    return rules.write_fixture(tmp_path / "broden_rules")


def _activations(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (10, 6, 5, 5) float32 maps and per-unit 0.6-quantile thresholds (float32).

    Unit 4 is never active (all below its threshold); unit 5 covers the whole of img3."""
    rng = np.random.default_rng(seed)
    n = len(rules.images())
    acts = rng.random((n, N_UNITS, rules.MAP_SIZE, rules.MAP_SIZE), dtype=np.float32)
    acts[:, 1] = acts[:, 1] ** 3  # a skewed unit
    acts[:, 5] *= 0.5
    acts[3, 5] = 2.0
    thresholds = np.array([np.quantile(acts[:, u], 0.6) for u in range(N_UNITS)], dtype=np.float32)
    thresholds[4] = 2.0
    return acts, thresholds


# ----------------------------------------------------------------------------------------------
# The reference on a hand case
# ----------------------------------------------------------------------------------------------


def _hand_case(root: Path) -> Path:
    """Two images, 8x8 px, 4x4 masks, one unit with a 2x2 map.

    img A: object person on rows 0-1 (8 px); part layer 1 wheel on cols 2-3 (8 px), layer 2
    wheel on (0,3), (1,3) (2 px, over layer 1); scene street (whole image).
    img B: object person on (2,0), (3,0) (2 px); texture striped (whole image)."""
    a_object = np.zeros((4, 4), np.int32)
    a_object[0:2, :] = 3
    a_part1 = np.zeros((4, 4), np.int32)
    a_part1[:, 2:4] = 5
    a_part2 = np.zeros((4, 4), np.int32)
    a_part2[0:2, 3] = 5
    b_object = np.zeros((4, 4), np.int32)
    b_object[2:4, 0] = 3
    return rules.write_broden(
        root,
        ["object", "part", "scene", "texture"],
        {3: "person", 5: "wheel", 10: "street", 12: "striped"},
        [
            ("a", "train", {"object": [a_object], "part": [a_part1, a_part2], "scene": [10]}),
            ("b", "train", {"object": [b_object], "texture": [12]}),
        ],
        image_size=8,
        mask_size=4,
        folder="hand",
    )


HAND_ACTS = np.array([[[[0.0, 4.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 4.0]]]], np.float32)
HAND_THRESHOLD = np.array([1.0], np.float32)
HAND_FIELDMAP = ((0, 0), (2, 2), (2, 2))  # input 8, masks 4: r = 2, centres 0 and 1


def test_reference_upsampling_by_hand():
    """The active pixels of the hand maps, counted by hand (threshold 1, strict)."""
    # bilinear, half-pixel: source coordinate (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
    # clamped to [0, 1]: weight on the top row 1, .75, .25, 0; on the right column 0, .25, .75, 1
    up = reference_upsample(HAND_ACTS[0, 0], 4, 4, "bilinear")
    expected = 4 * np.outer([1, 0.75, 0.25, 0], [0, 0.25, 0.75, 1])
    np.testing.assert_array_equal(up, expected.astype(np.float32))
    # 1.0 at (0,1) and (2,3) is not > 1: active (0,2), (0,3), (1,2), (1,3)
    assert np.argwhere(up > 1).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    # fieldmap: centres 0 and 1 on both axes, values held beyond: row 0 is 0, 4, 4, 4
    up = reference_upsample(HAND_ACTS[0, 0], 4, 4, "fieldmap", HAND_FIELDMAP, 8)
    np.testing.assert_allclose(up, [[0, 4, 4, 4]] + [[0, 0, 0, 0]] * 3, atol=1e-6)
    assert np.argwhere(up > 1).tolist() == [[0, 1], [0, 2], [0, 3]]
    up = reference_upsample(HAND_ACTS[1, 0], 4, 4, "fieldmap", HAND_FIELDMAP, 8)
    assert (up > 1).sum() == 9 and (up[1:, 1:] > 1).all()  # rows 1-3 x cols 1-3
    assert np.argwhere(reference_upsample(HAND_ACTS[1, 0], 4, 4, "bilinear") > 1).tolist() == [
        [2, 2], [2, 3], [3, 2], [3, 3],
    ]  # fmt: skip


@pytest.mark.parametrize(
    "scoring, upsample, inter, act, iou",
    [
        # bilinear: active on A = rows 0-1 x cols 2-3 (4 px), on B = rows 2-3 x cols 2-3 (4 px).
        # person: I = 4 (A) + 0 (B); street: I = 4; striped: I = 4.
        # wheel: I = 4 (layer 1) + 2 (layer 2) = 6.
        # original A: person (object on A and B) 4 + 4 = 8; wheel (part on A) 4; street 4;
        # striped 4.  person 4 / (8 + 10 - 4) = 2/7; wheel 6 / (4 + 10 - 6) = 3/4;
        # street 4 / (4 + 16 - 4) = 1/4; striped 4 / (4 + 16 - 4) = 1/4.
        ("original", "bilinear", [4, 6, 4, 4], [8, 4, 4, 4], [2 / 7, 3 / 4, 1 / 4, 1 / 4]),
        # lite A: on B no person lies under the active pixels: person 4 -> 4 / (4 + 10 - 4) = 0.4
        ("lite", "bilinear", [4, 6, 4, 4], [4, 4, 4, 4], [0.4, 3 / 4, 1 / 4, 1 / 4]),
        # fieldmap: active on A = (0,1), (0,2), (0,3) (3 px), on B = rows 1-3 x cols 1-3 (9 px).
        # person: I = 3 + 0 (col 0 is inactive on B); wheel: 2 (layer 1) + 1 (layer 2) = 3;
        # street: 3; striped: 9.  original A: person 3 + 9 = 12, wheel 3, street 3, striped 9.
        # person 3 / (12 + 10 - 3) = 3/19; wheel 3 / (3 + 10 - 3) = 3/10; street 3 / 16;
        # striped 9 / (9 + 16 - 9) = 9/16.
        ("original", "fieldmap", [3, 3, 3, 9], [12, 3, 3, 9], [3 / 19, 3 / 10, 3 / 16, 9 / 16]),
        # lite A: person only on A: 3 -> 3 / (3 + 10 - 3) = 3/10
        ("lite", "fieldmap", [3, 3, 3, 9], [3, 3, 3, 9], [3 / 10, 3 / 10, 3 / 16, 9 / 16]),
    ],
)
def test_reference_hand_case(tmp_path, scoring, upsample, inter, act, iou):
    """I, T, A and IoU of labels person 3, wheel 5, street 10, striped 12 counted by hand.

    T: person 8 (A) + 2 (B) = 10; wheel 8 + 2 (once per layer) = 10; street 16; striped 16."""
    root = _hand_case(tmp_path / "hand")
    kwargs = dict(scoring=scoring, upsample=upsample)
    if upsample == "fieldmap":
        kwargs.update(fieldmap=HAND_FIELDMAP, input_size=8)
    got_i, got_t, got_a = reference_counts(HAND_ACTS, root, HAND_THRESHOLD, **kwargs)
    labels = [3, 5, 10, 12]
    assert got_t[labels].tolist() == [10, 10, 16, 16]
    assert got_i[0, labels].tolist() == inter
    assert got_a[0, labels].tolist() == act
    got = reference_iou(HAND_ACTS, root, HAND_THRESHOLD, **kwargs)
    assert got.shape == (1, 13) and got.dtype == np.float64
    np.testing.assert_allclose(got[0, labels], iou, rtol=0, atol=1e-15)
    assert np.count_nonzero(np.delete(got[0], labels)) == 0


def test_reference_hand_case_once_per_pixel(tmp_path):
    """Switching off once-per-layer: wheel's 2 px in layer 2 count once, T = 8 and (bilinear)
    I = 4, so 4 / (4 + 8 - 4) = 1/2 instead of 3/4."""
    root = _hand_case(tmp_path / "hand")
    got_i, got_t, _ = reference_counts(
        HAND_ACTS, root, HAND_THRESHOLD, scoring="original", upsample="bilinear", count="pixel"
    )
    assert (got_t[5], got_i[0, 5]) == (8, 4)
    got = reference_iou(
        HAND_ACTS, root, HAND_THRESHOLD, scoring="original", upsample="bilinear", count="pixel"
    )
    assert got[0, 5] == 0.5


def test_reference_best_by_hand():
    """Per category the first max by label number; overall ties go to the later category."""
    primary = {1: "object", 2: "object", 3: "part", 4: "part", 5: "scene"}
    iou = np.zeros((2, 6))
    iou[0, [1, 2, 3, 4, 5]] = [0.2, 0.2, 0.1, 0.2, 0.0]
    iou[1, [1, 3]] = [0.3, 0.3]
    best = reference_best(iou, primary, ["object", "part", "scene"])
    assert best[0] == ({"object": (1, 0.2), "part": (4, 0.2), "scene": (0, 0.0)}, "part")
    assert best[1] == ({"object": (1, 0.3), "part": (3, 0.3), "scene": (0, 0.0)}, "part")


# ----------------------------------------------------------------------------------------------
# The fixture
# ----------------------------------------------------------------------------------------------


def test_fixture_layout(broden):
    """The fixture holds the cases it claims: two part layers, G-channel labels, a mixed cell,
    whole-image lists, and the primary categories it exports."""
    categories = [r["name"] for r in _read(broden / "category.csv")]
    assert categories == rules.CATEGORIES
    rows = _read(broden / "index.csv")
    assert len(rows) == 10
    planes = [_label_planes(broden, r, categories) for r in rows]
    assert [c for c, _ in planes[0]].count("part") == 2
    assert rows[4]["material"].endswith(".png;8") and (planes[4][-1][1] == 8).all()
    assert rows[2]["texture"] == "12;13"
    seen = {int(x) for p in planes for _, m in p for x in np.unique(m)}
    assert {300, 513} <= seen and seen - {0} == set(rules.LABELS)
    assert reference_primary(broden) == rules.PRIMARY
    assert reference_primary(broden, "counts") == rules.PRIMARY_BY_COUNTS
    cover = {
        cat: {int(r["number"]): r["coverage"] for r in _read(broden / f"c_{cat}.csv")}
        for cat in ("object", "part")
    }
    assert cover["object"][rules.TIE_LABEL] == cover["part"][rules.TIE_LABEL]
    for label, cats in rules.MULTI_CATEGORY.items():
        assert rules.PRIMARY[label] in cats and rules.PRIMARY_BY_COUNTS[label] in cats
        assert rules.PRIMARY[label] != rules.PRIMARY_BY_COUNTS[label]


def test_broden_primary_categories_follow_coverage(broden):
    """`BrodenDataset.labels` picks primary categories by c_*.csv coverage, the tie (door) going
    to the later category (part), not by label.csv's counts."""
    from cvinterp.data.broden import BrodenDataset

    labels = BrodenDataset(broden).labels
    assert {n: cat for n, _, cat in labels} == rules.PRIMARY
    assert {n: name for n, name, _ in labels} == rules.LABELS
    assert dict((n, cat) for n, _, cat in labels)[rules.TIE_LABEL] == "part"


def _score(root, acts, thresholds, scoring="original", upsample="bilinear", **rules_off):
    kwargs = dict(scoring=scoring, upsample=upsample)
    if upsample == "fieldmap":
        kwargs.update(fieldmap=rules.FIELDMAP, input_size=rules.INPUT_SIZE)
    return reference_iou(acts, root, thresholds, **kwargs, **rules_off)


def test_activations_leave_healthy_counts(broden):
    """The seeded maps leave a fair share of active pixels, and most labels a nonzero IoU."""
    acts, thresholds = _activations()
    for upsample in ("bilinear", "fieldmap"):
        kwargs = dict(scoring="original", upsample=upsample)
        if upsample == "fieldmap":
            kwargs.update(fieldmap=rules.FIELDMAP, input_size=rules.INPUT_SIZE)
        inter, _, act = reference_counts(acts, broden, thresholds, **kwargs)
        assert (inter[:4].sum(axis=0) > 0).sum() >= 12
        assert inter[4].sum() == 0 and act[4].sum() == 0


def test_fixture_tells_the_rules_apart(broden):
    """Switching off any one rule moves IoUs by a clear margin, on the labels the rule is about."""
    acts, thresholds = _activations()
    base = _score(broden, acts, thresholds)

    def moved(other, labels):
        return np.abs(other - base)[:, labels].max()

    multi = list(rules.MULTI_CATEGORY)  # wheel, wood, door
    # rule 1: label.csv counts pick the primary category (and with it the denominator)
    assert moved(_score(broden, acts, thresholds, primary_rule="counts"), multi) > 0.01
    # rule 2: a label counted only in its primary category's masks
    assert moved(_score(broden, acts, thresholds, masks="primary"), [5]) > 0.01
    assert moved(_score(broden, acts, thresholds, masks="primary"), [6]) > 0.01
    assert moved(_score(broden, acts, thresholds, masks="primary"), [7]) > 0.01
    # rule 3: once per pixel instead of once per layer (wheel on img0/img2, wood on img1)
    assert moved(_score(broden, acts, thresholds, count="pixel"), [5]) > 0.01
    assert moved(_score(broden, acts, thresholds, count="pixel"), [6]) > 0.01
    # rule 4: the other denominator
    assert moved(_score(broden, acts, thresholds, scoring="lite"), list(rules.LABELS)) > 0.01
    # rule 5: bilinear vs receptive-field centres
    assert moved(_score(broden, acts, thresholds, upsample="fieldmap"), list(rules.LABELS)) > 0.01
    # and the lite denominator is not the original's under fieldmap upsampling either
    fm = _score(broden, acts, thresholds, upsample="fieldmap")
    assert np.abs(_score(broden, acts, thresholds, "lite", "fieldmap") - fm).max() > 0.01


# ----------------------------------------------------------------------------------------------
# cvinterp against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize(
    "scoring, upsample",
    [("original", "bilinear"), ("original", "fieldmap"), ("lite", "bilinear")],
)
def test_iou_by_label_matches_reference(broden, scoring, upsample, as_torch):
    """`iou_by_label` gives the reference's IoU for every unit and label number."""
    from cvinterp.methods.dissection import iou_by_label

    acts, thresholds = _activations()
    expected = _score(broden, acts, thresholds, scoring, upsample)
    kwargs = {}
    if upsample == "fieldmap":
        kwargs = dict(fieldmap=rules.FIELDMAP, input_size=rules.INPUT_SIZE)
    given = (
        (torch.from_numpy(acts), torch.from_numpy(thresholds)) if as_torch else (acts, thresholds)
    )
    got = iou_by_label(given[0], broden, given[1], scoring=scoring, **kwargs)
    got = np.asarray(got)
    assert got.shape == (N_UNITS, rules.MAX_LABEL + 1)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
