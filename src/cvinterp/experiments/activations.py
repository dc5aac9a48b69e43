"""activations: every channel of chosen layers as tiled maps for one input, and how sparse each
layer is over the probe images (Yosinski et al. 2015)."""

from __future__ import annotations

import numpy as np
import torch

from cvinterp import figures as fig
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
    weakest_difference,
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
    activations of each layer over `images` probe images."""
    metrics: dict = {"models": {}}
    shown = {}
    for name, model in models.items():
        m = load(model, probe, device)
        layers = model.settings["layers"]
        paths = [layer_path(m.arch, layer) for layer in layers]
        showcase = _showcase(m)
        with Instrument(m.model, paths, detach=True, stop_early=True) as ins:
            ins.forward(inputs(m, showcase[None], device))
            maps = {p: ins[p][0].clamp(min=0).cpu().numpy() for p in paths}
            zero = dict.fromkeys(paths, 0.0)
            count = 0
            for x in limit(m.images.batches(m.pre, 64, device), images):
                ins.forward(x)
                for p in paths:
                    zero[p] += float((ins[p] <= 0).float().mean()) * len(x)
                count += len(x)
        entry = {"probe": m.images.description, "images": count, "layers": {}}
        layer_maps = {}
        for layer, p in zip(layers, paths, strict=True):
            a = layer_maps[layer] = maps[p][:, None, None] if maps[p].ndim == 1 else maps[p]
            entry["layers"][layer] = {
                "channels": int(a.shape[0]),
                "map": list(a.shape[1:]),
                "fraction_zero": zero[p] / count,
            }
        metrics["models"][name] = entry
        shown[name] = {"input": showcase, "maps": layer_maps}  # a linear layer: a pixel per unit
    layers = {n: m.settings["layers"] for n, m in models.items()}
    return Computed(metrics, {"shown": shown, "layers": layers})


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
    deeper_sparser = {}
    for name, layers in result.data["layers"].items():
        lay = result.metrics["models"][name]["layers"]
        if layers[0] != layers[-1]:
            deeper_sparser[name] = (
                lay[layers[-1]]["fraction_zero"] - lay[layers[0]]["fraction_zero"]
            )
    return {"deeper_layers_sparser": weakest_difference(deeper_sparser, "two or more layers")}
