"""activations: every channel of chosen layers as tiled maps for one input, and how sparse each
layer is over the probe images (Yosinski et al. 2015)."""

from __future__ import annotations

import numpy as np
import torch

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.data import photos
from cvinterp.data.probe import centre_square
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Loaded,
    Model,
    Probe,
    inputs,
    limit,
    load,
)
from cvinterp.instrument import Instrument
from cvinterp.models import layer_path

DECLARATION = Declaration(short=True)


def _showcase(m: Loaded) -> np.ndarray:
    """The input the figure shows: a bundled photo for ImageNet nets, else the first test
    image."""
    if m.imagenet:
        return centre_square(photos(["chelsea"])["chelsea"], m.size)
    return m.images.image(0)


@torch.no_grad()
def compute(models: dict[str, Model], *, images: int, probe: Probe, device) -> Computed:
    """Each layer's channels (after the ReLU) for the showcase input, and the fraction of zero
    activations of each layer over `images` probe images (and per image, for the claim's
    interval)."""
    metrics: dict = {"models": {}}
    shown, per_image = {}, {}
    for name, model in models.items():
        m = load(model, probe, device)
        layers = model.settings["layers"]
        paths = [layer_path(m.arch, layer) for layer in layers]
        showcase = _showcase(m)
        with Instrument(m.model, paths, detach=True, stop_early=True) as ins:
            ins.forward(inputs(m, showcase[None], device))
            maps = {p: ins[p][0].clamp(min=0).cpu().numpy() for p in paths}
            zero: dict[str, list] = {p: [] for p in paths}
            count = 0
            for x in limit(m.images.batches(m.pre, 64, device), images):
                ins.forward(x)
                for p in paths:
                    zero[p].append((ins[p] <= 0).flatten(1).float().mean(1).cpu().numpy())
                count += len(x)
        zero = {p: np.concatenate(v).astype(np.float64) for p, v in zero.items()}
        per_image[name] = {layer: zero[p] for layer, p in zip(layers, paths, strict=True)}
        entry = {"probe": m.images.description, "images": count, "layers": {}}
        layer_maps = {}
        for layer, p in zip(layers, paths, strict=True):
            a = layer_maps[layer] = maps[p][:, None, None] if maps[p].ndim == 1 else maps[p]
            entry["layers"][layer] = {
                "channels": int(a.shape[0]),
                "map": list(a.shape[1:]),
                "fraction_zero": float(zero[p].mean()),
            }
        metrics["models"][name] = entry
        shown[name] = {"input": showcase, "maps": layer_maps}  # a linear layer: a pixel per unit
    layers = {n: m.settings["layers"] for n, m in models.items()}
    return Computed(
        metrics, {"shown": shown, "layers": layers, "fraction_zero": per_image, "seed": probe.seed}
    )


def figures(result: Computed, figure_dir) -> None:
    """One row per model: the input, then every channel of each layer as one mosaic."""
    import matplotlib.pyplot as plt

    for name, s in result.data["shown"].items():
        panels, titles = [fig.as_rgb(s["input"])], ["input"]
        for layer, a in s["maps"].items():
            panels.append(fig.tile(a, pad=max(1, a.shape[-1] // 16)))
            titles.append(f"{layer}: {a.shape[0]} channels {a.shape[1]}x{a.shape[2]}")
        f, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
        for ax, panel, t in zip(axes[0], panels, titles, strict=True):
            ax.imshow(panel, cmap="gray", interpolation="nearest")
            ax.set_title(t, fontsize=8)
            ax.axis("off")
        f.suptitle(
            f"{name}: activations of every channel (ReLU output) — after Yosinski et al. 2015",
            fontsize=9,
        )
        fig.save(f, figure_dir / f"{name}.png")


def claims(result: Computed) -> dict:
    """deeper_layers_sparser: per model, the fraction of zero activations of its deepest shown
    layer minus its shallowest, mean over the probe images with a 95% bootstrap interval over
    the images (the two layers read the same images: the per-image differences are resampled);
    the weakest model decides."""
    parts, left_out, texts, counts = {}, {}, [], []
    seed = result.data.get("seed", 0)
    for name, layers in result.data["layers"].items():
        if layers[0] == layers[-1]:
            left_out[name] = "one layer shown: nothing to compare"
            continue
        zero = result.data["fraction_zero"][name]
        diff = np.asarray(zero[layers[-1]]) - np.asarray(zero[layers[0]])
        lo, hi = stats.bootstrap(diff, np.mean, seed=seed)
        parts[name] = stats.estimate(float(diff.mean()), (lo, hi))
        texts.append(
            f"{name}: {layers[-1]} {np.mean(zero[layers[-1]]):.3f} vs {layers[0]} "
            f"{np.mean(zero[layers[0]]):.3f} zero, {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
        counts.append(f"{name}: {len(diff)} images of {result.metrics['models'][name]['probe']}")
    conditions = "; ".join(counts) + "; the paper watched CaffeNet's conv5 on live webcam video"
    return {
        "deeper_layers_sparser": stats.claim(parts, "; ".join(texts), conditions, left_out=left_out)
    }
