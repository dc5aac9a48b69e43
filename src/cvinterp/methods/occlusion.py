"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

A grey square is slid over the image; for every position the occluded image is classified and
three maps are kept: p(true class), the most likely label, and the total activation of the
feature map that responds most strongly to the unoccluded image. Every position is its own image
in a batch. The grey is the preprocessing's mean pixel, i.e. 0 after normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cvinterp.instrument import Instrument


@dataclass
class OcclusionMaps:
    """The maps of one image, one value per position of the grey square (ny, nx)."""

    p_true: np.ndarray  # (ny, nx) p(target class) with the square at each position
    label: np.ndarray  # (ny, nx) most likely class
    feature: np.ndarray | None  # (ny, nx) total activation of the strongest feature map (layer)
    feature_unit: int | None  # which feature map (None without a layer)
    p_true_clean: float  # p(target class) of the unoccluded image
    boxes: np.ndarray  # (ny*nx, 4) y0, y1, x0, x1 of the square


def positions(
    size: tuple[int, int], window: int, stride: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Top-left corners (P, 2) covering the image, the last row/column flush with the border,
    and the grid's shape."""
    if window > min(size):
        raise ValueError(f"occlusion window {window} is larger than the image {size}")
    if stride < 1:
        raise ValueError(f"occlusion stride must be at least 1, not {stride}")
    if stride > window:
        raise ValueError(
            f"occlusion stride {stride} is larger than the window {window}: the pixels between "
            f"two positions would never be occluded; use a stride of at most {window}"
        )
    out = []
    for n in size:
        starts = list(range(0, n - window + 1, stride))
        if starts[-1] != n - window:
            starts.append(n - window)
        out.append(starts)
    ys, xs = np.meshgrid(*out, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], 1), (len(out[0]), len(out[1]))


@torch.no_grad()
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    *,
    window: int,
    stride: int,
    layer: str | None = None,
    batch_size: int = 128,
) -> OcclusionMaps:
    """Occlusion maps of one preprocessed image x (C, H, W) for class `target`.

    A `window`-pixel square set to 0 (the mean pixel after normalisation) slides by `stride`
    (at most the window: every pixel is occluded at least once), `batch_size` positions per
    forward pass. With `layer` (a module path) the feature-map fields follow the feature map of
    that layer most active on the clean image; without, they are None. Puts the model in eval
    mode.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be one image (C, H, W), not of shape {tuple(x.shape)}")
    model.eval()
    target = int(target)
    corners, grid = positions(tuple(x.shape[1:]), window, stride)
    with Instrument(model, [layer] if layer else [], detach=True) as ins:
        p_clean = model(x[None]).softmax(1)[0, target].item()
        unit = None
        if layer:
            act = ins[layer][0]
            unit = int(act.flatten(1).sum(1).argmax()) if act.dim() > 1 else int(act.argmax())
        p, label, feat = [], [], []
        for start in range(0, len(corners), batch_size):
            chunk = corners[start : start + batch_size]
            xb = x[None].repeat(len(chunk), 1, 1, 1)
            for i, (y0, x0) in enumerate(chunk):
                xb[i, :, y0 : y0 + window, x0 : x0 + window] = 0.0
            prob = model(xb).softmax(1)
            p.append(prob[:, target])
            label.append(prob.argmax(1))
            if layer:
                a = ins[layer][:, unit]
                feat.append(a.flatten(1).sum(1) if a.dim() > 1 else a)
    boxes = np.stack(
        [corners[:, 0], corners[:, 0] + window, corners[:, 1], corners[:, 1] + window], 1
    )
    return OcclusionMaps(
        torch.cat(p).view(grid).cpu().numpy(),
        torch.cat(label).view(grid).cpu().numpy(),
        torch.cat(feat).view(grid).cpu().numpy() if layer else None,
        unit,
        p_clean,
        boxes,
    )


def object_vs_background(
    maps: OcclusionMaps, mask: np.ndarray, on_object: float = 0.75
) -> tuple[float, float] | None:
    """Mean drop of p(true class) with the square mostly on the object (>= `on_object` of its
    pixels) and entirely on the background; None when the image lacks either kind of position."""
    cover = np.array([mask[y0:y1, x0:x1].mean() for y0, y1, x0, x1 in maps.boxes])
    drop = maps.p_true_clean - maps.p_true.ravel()
    obj, bg = cover >= on_object, cover == 0
    if not obj.any() or not bg.any():
        return None
    return float(drop[obj].mean()), float(drop[bg].mean())
