"""top_images: the top-k images of chosen units of several layers and the receptive-field crops
that excite them most, found in one streaming pass; how class-pure each layer's top-k are
(Zeiler & Fergus 2014, Fig. 2, left)."""

from __future__ import annotations

import numpy as np

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    layer_tops,
    load,
    model_conditions,
    spread,
)

DECLARATION = Declaration(short=True)

#: Label permutations of the claim's null (lookups in the stored top images: no forward pass).
PERMUTATIONS = 200


def _purity(labels: np.ndarray) -> float:
    """Fraction of labels equal to the most common one."""
    return float(np.bincount(labels).max() / len(labels))


def unit_purities(labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per unit (column of `index`, its top-k image indices): the fraction of its top-k images
    carrying their most common label."""
    _, codes = np.unique(labels, return_inverse=True)
    lab = codes.reshape(-1)[np.asarray(index)]  # (k, units)
    counts = (lab[..., None] == np.arange(codes.max() + 1)).sum(0)  # (units, classes)
    return counts.max(-1) / lab.shape[0]


def compute(
    models: dict[str, Model],
    *,
    units: int,
    k: int,
    max_images: int | None,
    probe: Probe,
    device,
) -> Computed:
    """Per layer: its units, dead units, receptive field and mean class purity of the live
    units' top-k (against the purity of k random probe images); the top images of `units`
    units spread over the layer."""
    metrics: dict = {"models": {}}
    shown, tops_of, conditions = {}, {}, {}
    for name, model in models.items():
        m = load(model, probe, device)
        n, per_layer = layer_tops(m, model.settings["layers"], k, max_images)
        labels = np.asarray(m.images.labels)
        rng = np.random.default_rng(probe.seed)
        chance = np.mean([_purity(rng.choice(labels[:n], k)) for _ in range(2000)])
        info = {"probe": m.images.description, "images": n, "layers": {}}
        info["chance_purity"] = float(chance)
        shown[name] = []
        tops_of[name] = {"labels": np.asarray(labels[:n]), "index": {}}
        conditions[name] = model_conditions(model, m.images.description, n) + f", top-{k}"
        for lt in per_layer:
            t = lt.tops
            alive = (t.values[0] > 0).numpy()
            index = t.index.numpy()[:, alive]
            tops_of[name]["index"][lt.layer] = index
            purity = unit_purities(labels[:n], index) if alive.any() else []
            info["layers"][lt.layer] = {
                "units": int(t.values.shape[1]),
                "dead_units": int((~alive).sum()),
                "receptive_field": list(lt.field.size),
                "top_k_class_purity": float(np.mean(purity)) if len(purity) else None,
            }
            for u in spread(t.values.shape[1], units):
                idx, loc = t.index[:, u].numpy(), t.location[:, u].numpy()
                shown[name].append(
                    {
                        "label": f"{lt.layer} unit {u}\nmax {float(t.values[0, u]):.2g}",
                        "images": [m.images.image(int(i)) for i in idx],
                        "boxes": lt.boxes[loc],
                    }
                )
        metrics["models"][name] = info
    layers = {n: m.settings["layers"] for n, m in models.items()}
    data = {"shown": shown, "k": k, "layers": layers, "tops": tops_of}
    return Computed(metrics, {**data, "conditions": conditions, "seed": probe.seed})


def _boxed(img: np.ndarray, box) -> np.ndarray:
    """The image with the box's outline drawn in red."""
    a = fig.as_rgb(img).copy()
    t = max(1, a.shape[0] // 64)  # line width
    y0, y1, x0, x1 = (int(v) for v in box)
    red = np.array([1.0, 0.1, 0.1])
    a[y0 : y0 + t, x0:x1] = a[max(y0, y1 - t) : y1, x0:x1] = red
    a[y0:y1, x0 : x0 + t] = a[y0:y1, max(x0, x1 - t) : x1] = red
    return a


def figures(result: Computed, figure_dir) -> None:
    """A row per unit: its top image with the receptive field outlined, then the crops."""
    k = result.data["k"]
    for name, units in result.data["shown"].items():
        rows = [
            [_boxed(u["images"][0], u["boxes"][0])]
            + [fig.crop_to(im, b, 64) for im, b in zip(u["images"], u["boxes"], strict=True)]
            for u in units
        ]
        fig.image_rows(
            rows,
            [u["label"] for u in units],
            f"{name}: top-{k} images per unit (first: top image with its receptive field; then "
            "the field's crops)",
            figure_dir / f"{name}.png",
        )


def purity_gain(labels: np.ndarray, shallow: np.ndarray, deep: np.ndarray, seed: int) -> dict:
    """The deep layer's mean top-k class purity minus the shallow layer's (live units; `shallow`
    and `deep` are their top-k image indices, k x units) with its 95% bootstrap interval, the
    two layers' units resampled independently; the null is the same difference with the probe
    images' labels permuted (the chance purity of each unit's top-k), its interval the 2.5-97.5
    percentiles over `PERMUTATIONS` permutations."""
    a, b = unit_purities(labels, deep), unit_purities(labels, shallow)
    value = float(a.mean() - b.mean())
    interval = stats.bootstrap((a, b), stats.mean_difference, seed=seed)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(PERMUTATIONS):
        p = rng.permutation(labels)
        null.append(unit_purities(p, deep).mean() - unit_purities(p, shallow).mean())
    return stats.estimate(
        value,
        interval,
        null=float(np.mean(null)),
        null_interval=tuple(np.percentile(null, [2.5, 97.5])),
    )


def claims(result: Computed) -> dict:
    """deeper_layers_class_specific: one part per model (deepest vs shallowest shown layer),
    the weakest decides."""
    parts, left_out, ours, conditions = {}, {}, [], []
    seed = result.data.get("seed", 0)
    for name, layers in result.data["layers"].items():
        tops = result.data["tops"][name]
        first, last = layers[0], layers[-1]
        conditions.append(result.data["conditions"][name] + f", {first} vs {last}")
        if first == last:
            left_out[name] = "one layer shown"
            continue
        shallow, deep = tops["index"][first], tops["index"][last]
        if 0 in (shallow.shape[1], deep.shape[1]):
            left_out[name] = f"no live unit in {first if shallow.shape[1] == 0 else last}"
            continue
        est = purity_gain(tops["labels"], shallow, deep, seed)
        parts[name] = est
        ours.append(
            f"{name}: {last} minus {first} top-k purity {est['value']:+.3f} "
            f"{stats.interval_text(est)} ({deep.shape[1]} vs {shallow.shape[1]} live units; "
            f"label-permuted null {est['null']:+.3f})"
        )
    return {
        "deeper_layers_class_specific": stats.claim(
            parts, "; ".join(ours), "; ".join(conditions), left_out=left_out
        )
    }
