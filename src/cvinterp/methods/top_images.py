"""Top-activating images per unit, found in one streaming pass over a dataset.

For every unit (channel) of the chosen layers, the k images whose strongest activation of that
unit is largest, with where in the feature map it occurred; and the receptive field of that
location, to crop the patch that excited it. Every unit of every chosen layer is tracked at once:
one forward pass per batch, a running top-k merged with `torch.topk`, nothing re-read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cvinterp.instrument import Instrument, gradients_on, model_device


@dataclass
class TopK:
    """Per unit (C) the top k: activation value, dataset index and flat location, (k, C)."""

    values: torch.Tensor
    index: torch.Tensor
    location: torch.Tensor
    shape: tuple[int, int]  # the feature map's (H, W)


class StreamingTopK:
    """Running top-k over images of the per-unit spatial maximum."""

    def __init__(self, k: int):
        self.k = k
        self.values = self.index = self.location = None
        self.shape: tuple[int, int] | None = None

    def update(self, act: torch.Tensor, offset: int) -> None:
        """act: (N, C, H, W) or (N, C) for images offset .. offset + N - 1."""
        if act.dim() == 2:
            act = act[:, :, None, None]
        n, c, h, w = act.shape
        self.shape = (h, w)
        best, where = act.reshape(n, c, h * w).max(2)  # (N, C)
        idx = torch.arange(offset, offset + n, device=act.device).view(-1, 1).expand(n, c)
        if self.values is not None:
            best = torch.cat([self.values, best])
            where = torch.cat([self.location, where])
            idx = torch.cat([self.index, idx])
        # a stable sort keeps dataset order among equal values: ties go to the earlier image
        order = best.sort(dim=0, descending=True, stable=True).indices[: self.k]
        self.values = best.gather(0, order)
        self.index = idx.gather(0, order)
        self.location = where.gather(0, order)

    def result(self) -> TopK:
        return TopK(self.values.cpu(), self.index.cpu(), self.location.cpu(), self.shape)


def _batches(images, batch_size: int, device) -> Iterator[torch.Tensor]:
    """A tensor (N, C, H, W) in batches, or the inputs of an iterable of batches (tensors, or
    (x, y, ...) tuples as a DataLoader yields them), on `device`."""
    if isinstance(images, torch.Tensor):
        batches = images.split(batch_size)
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in images)
    for x in batches:
        yield x if device is None else x.to(device)


@torch.no_grad()
def top_activations(
    model: nn.Module,
    images: torch.Tensor | Iterable,
    layer: str | list[str],
    *,
    k: int = 9,
    batch_size: int = 64,
    progress=None,
    observe: Callable[[str, torch.Tensor], None] | None = None,
) -> TopK | dict[str, TopK]:
    """The k images (dataset indices, in the order the images come) that excite each unit of
    `layer` most, in one pass.

    images: preprocessed images (N, C, H, W), run `batch_size` at a time, or an iterable of
    batches (tensors, or (x, y) tuples as a DataLoader yields them), moved to the model's
    device. layer: a module path (returns its `TopK`) or a list of them (returns {path: TopK},
    all from the same pass). `observe(path, activations)`, when given, sees every batch's
    activations too (other statistics from the same pass); `progress` (a tqdm bar) advances by
    each batch's images. Puts the model in eval mode.
    """
    model.eval()
    layers = [layer] if isinstance(layer, str) else list(layer)
    tops = {path: StreamingTopK(k) for path in layers}
    offset = 0
    with Instrument(model, layers, detach=True, stop_early=True) as ins:
        for x in _batches(images, batch_size, model_device(model)):
            ins.forward(x)
            for path in layers:
                tops[path].update(ins[path], offset)
                if observe is not None:
                    observe(path, ins[path])
            offset += len(x)
            if progress is not None:
                progress.update(len(x))
    if offset == 0:
        raise ValueError("top_activations: no images")
    result = {path: t.result() for path, t in tops.items()}
    return result[layer] if isinstance(layer, str) else result


@dataclass
class Field:
    """Receptive field geometry of one layer: size, stride and offset per axis (pixels).
    `size` 0 means the whole image (a fully connected layer)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def boxes(self, map_shape: tuple[int, int], image_shape: tuple[int, int]) -> np.ndarray:
        """(H*W, 4) boxes (y0, y1, x0, x1), half-open, clipped to the image, in flat order."""
        h, w = map_shape
        gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        out = []
        for g, size, stride, offset, n in zip(
            (gy.ravel(), gx.ravel()),
            self.size,
            self.stride,
            self.offset,
            image_shape,
            strict=True,
        ):
            lo = offset + g * stride if size else np.zeros_like(g)
            hi = lo + size if size else np.full_like(g, n)
            out += [np.clip(lo, 0, n), np.clip(hi, 0, n)]
        return np.stack(out, 1)


def receptive_field(model: nn.Module, layer: str, in_channels: int, probe: int = 96) -> Field:
    """The input box each position of `layer`'s feature map sees.

    Measured, not derived from the architecture: the signal of one position is sent back with
    ReLUs passed through and max-pools spread evenly (the instrument's "linear" and "uniform"
    rules), so its support is the receptive field whatever the wiring (branches, skips). It is
    measured on a `probe`-pixel input of ones (large enough that the centre's field is not
    clipped), and the forward pass stops at the layer, so nets with fixed-size heads work.
    """
    model.eval()
    with gradients_on():
        x = torch.ones(1, in_channels, probe, probe, device=model_device(model), requires_grad=True)
        with Instrument(model, [layer], relu="linear", maxpool="uniform", stop_early=True) as ins:
            ins.forward(x)
        act = ins[layer]
        if act.dim() == 2:  # a fully connected layer sees the whole image
            return Field((0, 0), (0, 0), (0, 0))
        _, _, h, w = act.shape
        if h < 3 or w < 3:
            raise ValueError(f"receptive_field: {layer} is {h}x{w} at {probe} px; raise `probe`")
        cy, cx = h // 2, w // 2
        boxes = []
        for py, px in ((cy, cx), (cy + 1, cx), (cy, cx + 1)):
            (g,) = torch.autograd.grad(act[0, :, py, px].sum(), x, retain_graph=True)
            support = g[0].abs().sum(0) > 0
            ys, xs = support.any(1).nonzero(), support.any(0).nonzero()
            boxes.append((int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1))
    (y0, y1, x0, x1), below, right = boxes
    if y0 == 0 or x0 == 0 or y1 == probe or x1 == probe:
        raise ValueError(f"receptive_field: {layer}'s field reaches the probe's border; raise it")
    sy, sx = below[0] - y0, right[2] - x0
    return Field((y1 - y0, x1 - x0), (sy, sx), (y0 - cy * sy, x0 - cx * sx))
