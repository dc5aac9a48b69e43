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
    p_true: np.ndarray  # (ny, nx) p(true class) with the square at each position
    label: np.ndarray  # (ny, nx) most likely class
    feature: np.ndarray  # (ny, nx) total activation of the strongest feature map
    feature_unit: int  # which feature map
    p_true_clean: float
    boxes: np.ndarray  # (ny*nx, 4) y0, y1, x0, x1 of the square


def positions(
    size: tuple[int, int], window: int, stride: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Top-left corners (P, 2) covering the image, the last row/column flush with the border,
    and the grid's shape."""
    if window > min(size):
        raise ValueError(f"occlusion window {window} is larger than the image {size}")
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
    true_class: int,
    layer: str,
    *,
    window: int,
    stride: int,
    batch_size: int = 128,
) -> OcclusionMaps:
    """Occlusion maps of one preprocessed image x (C, H, W)."""
    model.eval()
    corners, grid = positions(tuple(x.shape[1:]), window, stride)
    with Instrument(model, [layer], detach=True) as ins:
        p_clean = model(x[None]).softmax(1)[0, true_class].item()
        act = ins[layer][0]
        unit = int(act.flatten(1).sum(1).argmax()) if act.dim() > 1 else int(act.argmax())
        p, label, feat = [], [], []
        for start in range(0, len(corners), batch_size):
            chunk = corners[start : start + batch_size]
            xb = x[None].repeat(len(chunk), 1, 1, 1)
            for i, (y0, x0) in enumerate(chunk):
                xb[i, :, y0 : y0 + window, x0 : x0 + window] = 0.0
            prob = model(xb).softmax(1)
            p.append(prob[:, true_class])
            label.append(prob.argmax(1))
            a = ins[layer][:, unit]
            feat.append(a.flatten(1).sum(1) if a.dim() > 1 else a)
    boxes = np.stack(
        [corners[:, 0], corners[:, 0] + window, corners[:, 1], corners[:, 1] + window], 1
    )
    return OcclusionMaps(
        torch.cat(p).view(grid).cpu().numpy(),
        torch.cat(label).view(grid).cpu().numpy(),
        torch.cat(feat).view(grid).cpu().numpy(),
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
