"""deconvnet: the deconvnet projections of chosen units' top-k activations beside their
receptive-field crops, with and without max-pooling switches (Zeiler & Fergus 2014, Fig. 2)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import sobel
from scipy.stats import spearmanr

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
    projections,
    spread,
    top_activations_of,
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


def other_unit_partners(units, image_ids, seed: int) -> np.ndarray:
    """For each top activation i (unit-major, as `top_activations_of` gives them), the index
    of a top activation of ANOTHER unit on ANOTHER image, drawn uniformly among those (seeded),
    or -1 where there is none: the null's pairing, an image whose edges have nothing to do with
    the projection (a neighbour in the list would be the same unit's next top image, often
    alike or, for overlapping units, the very same image)."""
    units, ids = np.asarray(units), np.asarray(image_ids)
    rng = np.random.default_rng(seed)
    out = np.full(len(units), -1, dtype=np.int64)
    for i in range(len(units)):
        ok = np.flatnonzero((units != units[i]) & (ids != ids[i]))
        if len(ok):
            out[i] = rng.choice(ok)
    return out


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
    shown, pairs, conditions = {}, {}, {}
    for name, model in models.items():
        m = load(model, probe, device)
        n, per_layer = layer_tops(m, model.settings["layers"], k, max_images)
        pooled = _has_maxpool(m.model)
        info = {"probe": m.images.description, "images": n, "has_maxpool": pooled, "layers": {}}
        conditions[name] = (
            model_conditions(model, m.images.description, n) + f", {units} units x top-{k}"
        )
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
                flat_edges = edge_correlation(top.images, flat, top.box)
                layer_info["edge_correlation_no_switches"] = float(np.mean(flat_edges))
                # the null: each projection against the edges (same box) of a top image of
                # another unit, not the same image
                ids = lt.tops.index[:, chosen].T.reshape(-1).numpy()
                partner = other_unit_partners(top.unit.cpu().numpy(), ids, probe.seed)
                ok = partner >= 0
                other, box, sel = top.images[partner[ok]], top.box[ok], torch.from_numpy(ok)
                pairs[name] = {
                    "layer": lt.layer,
                    "switches": edges,
                    "no_switches": flat_edges,
                    "switches_other_image": edge_correlation(other, maps[sel], box),
                    "no_switches_other_image": edge_correlation(other, flat[sel], box),
                }  # the last (deepest) layer stays
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
    data = {"shown": shown, "k": k, "layers": layers, "pairs": pairs}
    return Computed(metrics, {**data, "conditions": conditions, "seed": probe.seed})


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


def _paired_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def switch_gain(p: dict, seed: int) -> dict:
    """Mean over unit-image pairs of the edge correlation with switches minus without, its 95%
    paired bootstrap interval over the pairs; the null is the same gain with each projection
    compared against the edges of a top image of another unit, not the same image
    (`other_unit_partners`: a switch gain that is not image-specific)."""
    value = float(np.mean(p["switches"]) - np.mean(p["no_switches"]))
    interval = stats.bootstrap(
        (p["switches"], p["no_switches"]), _paired_difference, seed=seed, paired=True
    )
    a, b = p["switches_other_image"], p["no_switches_other_image"]
    null_interval = stats.bootstrap((a, b), _paired_difference, seed=seed, paired=True)
    null = float(np.mean(a) - np.mean(b))
    return stats.estimate(value, interval, null=null, null_interval=null_interval)


def claims(result: Computed) -> dict:
    """switches_keep_image_structure: one part per max-pooling net (its deepest shown layer),
    the weakest decides."""
    parts, left_out, ours, conditions = {}, {}, [], []
    seed = result.data.get("seed", 0)
    for name in result.data["layers"]:
        conditions.append(result.data["conditions"][name])
        p = result.data["pairs"].get(name)
        if p is None:
            left_out[name] = "no max-pooling: nothing to switch"
            continue
        if len(p["switches_other_image"]) < 2:
            left_out[name] = (
                "no null: fewer than 2 top activations have a top image of another unit "
                "(show more than one unit)"
            )
            continue
        est = parts[name] = switch_gain(p, seed)
        ours.append(
            f"{name} {p['layer']}: edge correlation {np.mean(p['switches']):.3f} with switches vs "
            f"{np.mean(p['no_switches']):.3f} without, gain {est['value']:+.3f} "
            f"{stats.interval_text(est)} over {len(p['switches'])} unit-image pairs; against the "
            f"edges of a top image of another unit {est['null']:+.3f} "
            f"({len(p['switches_other_image'])} pairs)"
        )
    return {
        "switches_keep_image_structure": stats.claim(
            parts, "; ".join(ours), "; ".join(conditions), left_out=left_out
        )
    }
