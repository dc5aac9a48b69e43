"""top_images: the top-k images of chosen units of several layers and the receptive-field crops
that excite them most, found in one streaming pass; how class-pure each layer's top-k are
(Zeiler & Fergus 2014, Fig. 2, left)."""

from __future__ import annotations

import numpy as np

from cvinterp import figures as fig
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    layer_tops,
    load,
    spread,
    weakest_difference,
)

DECLARATION = Declaration(short=True)


def _purity(labels: np.ndarray) -> float:
    """Fraction of labels equal to the most common one."""
    return float(np.bincount(labels).max() / len(labels))


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
    shown = {}
    for name, model in models.items():
        m = load(model, probe, device)
        n, per_layer = layer_tops(m, model.settings["layers"], k, max_images)
        labels = m.images.labels
        rng = np.random.default_rng(probe.seed)
        chance = np.mean([_purity(rng.choice(labels[:n], k)) for _ in range(2000)])
        info = {"probe": m.images.description, "images": n, "layers": {}}
        info["chance_purity"] = float(chance)
        shown[name] = []
        for lt in per_layer:
            t = lt.tops
            alive = t.values[0] > 0
            purity = [
                _purity(labels[t.index[:, u].numpy()]) for u in range(t.values.shape[1]) if alive[u]
            ]
            info["layers"][lt.layer] = {
                "units": int(t.values.shape[1]),
                "dead_units": int((~alive).sum()),
                "receptive_field": list(lt.field.size),
                "top_k_class_purity": float(np.mean(purity)) if purity else None,
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
    return Computed(metrics, {"shown": shown, "k": k, "layers": layers})


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


def claims(result: Computed) -> dict:
    purer = {}
    for name, layers in result.data["layers"].items():
        lay = result.metrics["models"][name]["layers"]
        first, last = lay[layers[0]]["top_k_class_purity"], lay[layers[-1]]["top_k_class_purity"]
        if layers[0] != layers[-1] and None not in (first, last):
            purer[name] = last - first
    return {"deeper_layers_class_specific": weakest_difference(purer, "two or more layers")}
