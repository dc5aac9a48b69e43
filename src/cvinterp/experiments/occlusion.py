"""occlusion: a grey square slid over the image; p(true class), the most likely label and the
strongest feature map's total activation at each position (Zeiler & Fergus 2014, Fig. 7); and,
where the object's region is known (Fashion-MNIST's items on black), whether occluding the
object hurts more than occluding the background."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wilcoxon
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    class_images,
    inputs,
    load,
    model_conditions,
)
from cvinterp.methods.occlusion import object_vs_background, occlusion
from cvinterp.models import layer_path

DECLARATION = Declaration(short=True)


def compute(
    models: dict[str, Model], *, images: int, claim_images: int, probe: Probe, device
) -> Computed:
    """Occlusion maps of `images` labelled images per model (its `layer`, `window` and `stride`
    under `models`); for a model trained on Fashion-MNIST, the mean drop of p(true class) with
    the square on the item vs on the background over `claim_images` correctly classified test
    images, and a one-sided Wilcoxon test."""
    metrics: dict = {"models": {}}
    shown, drops, conditions = {}, {}, {}
    for name, model in models.items():
        m = load(model, probe, device)
        s = model.settings
        conditions[name] = (
            model_conditions(model, m.images.description)
            + f", {s['window']}px square, stride {s['stride']}"
        )
        where = {
            "layer": layer_path(m.arch, s["layer"]),
            "window": s["window"],
            "stride": s["stride"],
        }
        imgs, classes = class_images(m, images, device)
        maps = [
            occlusion(m.model, inputs(m, img[None], device)[0], target=int(c), **where)
            for img, c in zip(imgs, classes, strict=True)
        ]
        shown[name] = {
            "images": imgs,
            "classes": [str(c) for c in m.classes],
            "true": [int(c) for c in classes],
            "maps": maps,
            "settings": s,
        }
        info = {
            "window": s["window"],
            "stride": s["stride"],
            "layer": s["layer"],
            "p_true_clean": [om.p_true_clean for om in maps],
            "p_true_min": [float(om.p_true.min()) for om in maps],
            "inference": sorted({om.inference for om in maps}),
        }
        if model.spec.get("dataset") == "fashion_mnist":
            info["object_vs_background"], drops[name] = _object_vs_background(
                m, where, claim_images, device
            )
            conditions[name] += f", {len(drops[name])} test images"
        metrics["models"][name] = info
    data = {"shown": shown, "drops": drops, "conditions": conditions, "seed": probe.seed}
    return Computed(metrics, data)


def _object_vs_background(m, where: dict, claim_images: int, device) -> tuple[dict, np.ndarray]:
    """Drops of p(true class) with the square on the item and on the black background: their
    means, and per image (images x [item, background])."""
    data = m.images.data
    with torch.no_grad():
        pred = torch.cat([m.model(x).argmax(1).cpu() for x in m.images.batches(m.pre, 256, device)])
    correct = np.flatnonzero(pred.numpy() == data.labels)[:claim_images]
    drops = []
    for i in tqdm(correct, desc=f"{m.name}: occlusion claim", mininterval=5):
        x = inputs(m, data.images[i : i + 1], device)[0]
        om = occlusion(m.model, x, target=int(data.labels[i]), **where)
        d = object_vs_background(om, data.images[i, :, :, 0] > 25)  # the item: all not black
        if d is not None:
            drops.append(d)
    if not drops:  # the claim is n/a for this model, saying why; the figures still stand
        return {
            "images": 0,
            "na": f"none of the {len(correct)} correctly classified test images looked at (of "
            f"{claim_images} asked for) has both item and background positions at this window: "
            "lower the occlusion window, or train the net further",
        }, np.empty((0, 2))
    d = np.array(drops)
    test = wilcoxon(d[:, 0], d[:, 1], alternative="greater")
    return {
        "images": len(d),
        "mean_drop_object": float(d[:, 0].mean()),
        "mean_drop_background": float(d[:, 1].mean()),
        "wilcoxon_p": float(test.pvalue),
    }, d


def figures(result: Computed, figure_dir) -> None:
    """Per model, a row per image: the image, p(true class), the most likely label and the
    strongest feature map's total activation with the square at each position."""
    import matplotlib.pyplot as plt

    for name, s in result.data["shown"].items():
        maps, settings = s["maps"], s["settings"]
        f, axes = plt.subplots(len(maps), 4, figsize=(11, 2.8 * len(maps)), squeeze=False)
        classes = s["classes"]
        for row, img, c, om in zip(axes, s["images"], s["true"], maps, strict=True):
            row[0].imshow(fig.as_rgb(img))
            row[0].set_title(f"true: {classes[c]}", fontsize=8)
            im = row[1].imshow(om.p_true, cmap="jet", vmin=0, vmax=max(om.p_true.max(), 1e-6))
            row[1].set_title(f"p(true) (clean {om.p_true_clean:.2f})", fontsize=8)
            f.colorbar(im, ax=row[1], fraction=0.046)
            labels, codes = np.unique(om.label, return_inverse=True)
            row[2].imshow(
                codes.reshape(om.label.shape), cmap="tab10", vmin=0, vmax=9, interpolation="nearest"
            )
            names = ", ".join(classes[int(v)][:14] for v in labels[:5])
            row[2].set_title(f"most likely label ({names})", fontsize=7)
            im = row[3].imshow(om.feature, cmap="jet")
            row[3].set_title(
                f"{settings['layer']} map {om.feature_unit}: total activation", fontsize=8
            )
            f.colorbar(im, ax=row[3], fraction=0.046)
            for ax in row:
                ax.axis("off")
        f.suptitle(
            f"{name}: occlusion with a {settings['window']}px grey square, stride "
            f"{settings['stride']} — after Zeiler & Fergus 2014 Fig. 7",
            fontsize=9,
        )
        fig.save(f, figure_dir / f"{name}.png")


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def claims(result: Computed) -> dict:
    """object_occlusion_hurts_more: one part per model whose items' regions are known (trained
    on Fashion-MNIST), the weakest decides. The value is the effect, not a p-value: the mean
    over images of (drop of p(true class) with the square on the item - on the background),
    with its 95% bootstrap interval over the images; no difference is 0, so the rule is gt 0
    (the one-sided Wilcoxon p-value stays in `ours`)."""
    parts, left_out, ours, conditions = {}, {}, [], []
    seed = result.data.get("seed", 0)
    for name, info in result.metrics["models"].items():
        conditions.append(result.data["conditions"][name])
        if name not in result.data["drops"]:
            left_out[name] = "not trained on Fashion-MNIST: the item's region is unknown"
            continue
        d = np.asarray(result.data["drops"][name], dtype=np.float64)
        o = info["object_vs_background"]
        if not len(d):
            left_out[name] = o["na"]
            continue
        diff = d[:, 0] - d[:, 1]
        est = parts[name] = stats.estimate(diff.mean(), stats.bootstrap(diff, _mean, seed=seed))
        ours.append(
            f"{name}: mean drop of p(true class) {o['mean_drop_object']:.3f} with the square on "
            f"the item vs {o['mean_drop_background']:.3f} on the background, difference "
            f"{est['value']:+.3f} {stats.interval_text(est)} ({o['images']} correctly classified "
            f"test images; one-sided Wilcoxon p = {o['wilcoxon_p']:.2g})"
        )
    return {
        "object_occlusion_hurts_more": stats.claim(
            parts, "; ".join(ours), "; ".join(conditions), left_out=left_out
        )
    }
