"""deconvnet: the deconvnet projections of chosen units' top-k activations beside their
receptive-field crops, with and without max-pooling switches (Zeiler & Fergus 2014, Fig. 2)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import sobel
from scipy.stats import spearmanr

from cvinterp import figures as fig
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    layer_tops,
    load,
    projections,
    spread,
    top_activations_of,
    weakest_difference,
)
from cvinterp.methods.backward import magnitude, to_image

DECLARATION = Declaration(short=True)


def edge_correlation(images: np.ndarray, maps: torch.Tensor, boxes) -> np.ndarray:
    """Spearman correlation, inside each box, of the projection's magnitude with the image's
    gradient magnitude (Sobel on the grey image)."""
    out = []
    mag = magnitude(maps).numpy()
    for img, mm, (y0, y1, x0, x1) in zip(images, mag, boxes, strict=True):
        grey = fig.as_rgb(img).mean(-1)
        edges = np.hypot(sobel(grey, 0), sobel(grey, 1))[y0:y1, x0:x1].ravel()
        proj = mm[y0:y1, x0:x1].ravel()
        ok = edges.std() > 0 and proj.std() > 0
        out.append(spearmanr(edges, proj).statistic if ok else 0.0)
    return np.array(out)


def _has_maxpool(model) -> bool:
    pools = (torch.nn.MaxPool2d, torch.nn.AdaptiveMaxPool2d)
    return any(isinstance(mod, pools) for mod in model.modules())


def compute(
    models: dict[str, Model],
    *,
    units: int,
    k: int,
    max_images: int | None,
    probe: Probe,
    device,
) -> Computed:
    """For `units` units spread over each layer: the deconvnet projections of their top-k
    activations, and how well they follow the image's edges with switches and (nets with
    max-pooling) with unpooling spread evenly instead."""
    metrics: dict = {"models": {}}
    shown = {}
    for name, model in models.items():
        m = load(model, probe, device)
        n, per_layer = layer_tops(m, model.settings["layers"], k, max_images)
        pooled = _has_maxpool(m.model)
        info = {"probe": m.images.description, "images": n, "has_maxpool": pooled, "layers": {}}
        shown[name] = []
        for lt in per_layer:
            chosen = spread(lt.tops.values.shape[1], units)
            top = top_activations_of(m, lt, chosen, device)
            maps = projections(m, lt, top, "deconvnet")
            edges = edge_correlation(top.images, maps, top.box)
            layer_info = {
                "units": chosen,
                "receptive_field": list(lt.field.size),
                "edge_correlation_switches": float(np.mean(edges)),
            }
            if pooled:
                flat = projections(m, lt, top, "deconvnet", "uniform")
                edges = edge_correlation(top.images, flat, top.box)
                layer_info["edge_correlation_no_switches"] = float(np.mean(edges))
            info["layers"][lt.layer] = layer_info
            shown[name].append(
                {
                    "layer": lt.layer,
                    "units": chosen,
                    "images": top.images,
                    "projections": to_image(maps, bgr=m.pre.bgr).numpy(),
                    "boxes": top.box,
                }
            )
        metrics["models"][name] = info
    layers = {n: m.settings["layers"] for n, m in models.items()}
    return Computed(metrics, {"shown": shown, "k": k, "layers": layers})


def figures(result: Computed, figure_dir) -> None:
    """A row per unit: the projections of its top-k activations, then their receptive fields."""
    for name, per_layer in result.data["shown"].items():
        rows, labels = [], []
        for s in per_layer:
            kk = len(s["images"]) // len(s["units"])
            for j, u in enumerate(s["units"]):
                part = slice(j * kk, (j + 1) * kk)
                boxes = s["boxes"][part]
                rows.append(
                    [
                        fig.crop_to(a, b, 64)
                        for a, b in zip(s["projections"][part], boxes, strict=True)
                    ]
                    + [fig.crop_to(a, b, 64) for a, b in zip(s["images"][part], boxes, strict=True)]
                )
                labels.append(f"{s['layer']} unit {u}")
        fig.image_rows(
            rows,
            labels,
            f"{name}: deconvnet projections of each unit's top-{result.data['k']} activations "
            f"(left) and their receptive fields (right) — after Zeiler & Fergus 2014 Fig. 2",
            figure_dir / f"{name}.png",
        )


def claims(result: Computed) -> dict:
    switch_gain = {}
    for name, layers in result.data["layers"].items():
        info = result.metrics["models"][name]
        deepest = info["layers"][layers[-1]]
        if info["has_maxpool"]:
            switch_gain[name] = (
                deepest["edge_correlation_switches"] - deepest["edge_correlation_no_switches"]
            )
    return {"switches_keep_image_structure": weakest_difference(switch_gain, "max-pooling")}
