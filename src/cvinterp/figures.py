"""Small plotting helpers shared by the figures: image grids and tiled feature maps."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def as_rgb(img: np.ndarray) -> np.ndarray:
    """HW, HW1 or HW3 (uint8 or float in [0, 1]) -> float HW3 in [0, 1]."""
    a = np.asarray(img)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return np.clip(a, 0, 1)


def tile(maps: np.ndarray, pad: int = 1, columns: int | None = None) -> np.ndarray:
    """(N, H, W) maps -> one 2-D mosaic, scaled jointly from the minimum to the 99.5th
    percentile (the few larger values saturate), padding set to 1."""
    n, h, w = maps.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    lo, hi = float(maps.min()), float(np.percentile(maps, 99.5))
    hi = hi if hi > lo else float(maps.max())
    scaled = np.clip((maps - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(maps)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad), np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = scaled[i]
    return out


def crop_to(img: np.ndarray, box, size: int) -> np.ndarray:
    """The box (y0, y1, x0, x1) of an image, padded with grey to a square and resized."""
    from PIL import Image

    y0, y1, x0, x1 = (int(v) for v in box)
    patch = as_rgb(img)[y0:y1, x0:x1]
    side = max(patch.shape[:2])
    square = np.full((side, side, 3), 0.5, np.float32)
    oy, ox = (side - patch.shape[0]) // 2, (side - patch.shape[1]) // 2
    square[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch
    resample = Image.BOX if side > size else Image.NEAREST  # average down, keep pixels up
    pil = Image.fromarray((square * 255).astype(np.uint8)).resize((size, size), resample)
    return np.asarray(pil).astype(np.float32) / 255.0


def contents(fig) -> dict:
    """What a figure shows, in a form a test can read: its panels (axes that draw something),
    their titles, how many images they draw, and which panels draw a constant image."""
    panels = [
        ax
        for ax in fig.axes
        if ax.get_visible() and (ax.images or ax.lines or ax.collections or ax.patches)
    ]
    constant = [
        i
        for i, ax in enumerate(panels)
        for im in ax.images
        if np.nanstd(np.asarray(im.get_array(), dtype=np.float64)) == 0
    ]
    return {
        "panels": len(panels),
        "titles": [ax.get_title() for ax in panels],
        "images": sum(len(ax.images) for ax in panels),
        "constant_panels": constant,
    }


def save(fig, path: str | Path, dpi: int = 110) -> None:
    """Write the figure as PNG, with `contents(fig)` as JSON in its "cvinterp" text chunk
    (read back by `read_contents`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cvinterp": json.dumps(contents(fig))} if path.suffix == ".png" else None
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=meta)
    plt.close(fig)


def read_contents(path: str | Path) -> dict:
    """The contents a figure was saved with (see `save`)."""
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["cvinterp"])


def image_rows(
    rows: list[list[np.ndarray]],
    row_labels: list[str],
    title: str,
    path: str | Path,
    col_labels: list[str] | None = None,
    cell: float = 0.9,
) -> None:
    """A grid of images, one labelled row per entry of `rows`."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(cell * n_cols + 1.6, cell * n_rows + 0.8), squeeze=False
    )
    for r, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(row):
                ax.imshow(as_rgb(row[c]), interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
            if r == 0 and col_labels and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=7)
    fig.suptitle(title, fontsize=9)
    save(fig, path)
