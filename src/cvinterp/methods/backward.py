"""Projecting one unit back to pixels: one function, three backward rules.

- gradient: d unit / d input (Simonyan et al. 2014's saliency, "backprop" in Springenberg Fig. 1)
- deconvnet: Zeiler & Fergus 2014 — unpooling by the recorded max switches, rectified backward
  signal, transposed filters. The gradient already unpools by switches and applies transposed
  filters, so deconvnet = the gradient with the ReLU rule "rectify the signal".
- guided backprop: Springenberg et al. 2015 — gate by the forward ReLU and rectify the signal.

The rule is the instrument's (`cvinterp.instrument`), so reused, in-place and functional ReLUs
all get it. As in Zeiler & Fergus, every other activation of the layer is set to zero: the seed is
1 at the unit's strongest location in that image (or at the given location) and 0 elsewhere.

`saliency`, `deconvnet` and `guided_backprop` are the face for notebooks: a class of the model's
output or a unit of a layer, for a batch of images, as Captum's methods of the same names.
"""

from __future__ import annotations

import torch
from torch import nn

from cvinterp.instrument import Instrument, gradients_on, normal_tensor

RULES = {"backprop": "gradient", "deconvnet": "deconvnet", "guided_backprop": "guided"}


def project(
    model: nn.Module,
    x: torch.Tensor,
    layer: str | None,
    units: torch.Tensor,
    rule: str,
    *,
    maxpool: str = "switches",
    locations: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-project unit `units[i]` of `layer` for image `x[i]`, all images in one pass.

    layer: a module path, or None for the model's output (units are then class indices).
    rule: "backprop", "deconvnet" or "guided_backprop" (or an instrument ReLU rule).
    locations: flat spatial index per image; default: the unit's maximum in that image.
    Returns (maps of x's shape, the seeded activation values). Puts the model in eval mode;
    works under `torch.no_grad()` and `torch.inference_mode()`.
    """
    model.eval()
    relu = RULES.get(rule, rule)
    with gradients_on():
        x = x.detach().clone().requires_grad_(True)
        units = normal_tensor(torch.as_tensor(units, device=x.device)).long()
        record = [layer] if layer else []
        with Instrument(model, record, relu=relu, maxpool=maxpool) as ins:
            out = model(x)
            act = ins[layer] if layer else out
            rows = torch.arange(len(x), device=x.device)
            chosen = act[rows, units].reshape(len(x), -1)  # (N, positions) or (N, 1)
            if locations is None:
                locations = chosen.argmax(1)
            locations = normal_tensor(torch.as_tensor(locations, device=x.device)).long()
            value = chosen[rows, locations]
        (grad,) = torch.autograd.grad(value.sum(), x)
    return grad.detach(), value.detach()


def _per_image(values, n: int, device, what: str) -> torch.Tensor:
    """An int, a list or a tensor (one per image) -> a long tensor (n,) on `device`."""
    t = torch.as_tensor(values, device=device)
    if t.dim() == 0:
        return t.long().expand(n)
    t = t.long().flatten()
    if len(t) != n:
        raise ValueError(f"{what}: {len(t)} values for {n} images; give one per image or one int")
    return t


def _backward_map(model, x, target, layer, location, rule, maxpool="switches") -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"x must be a batch (N, C, H, W), not of shape {tuple(x.shape)}")
    units = _per_image(target, len(x), x.device, "target")
    locations = None if location is None else _per_image(location, len(x), x.device, "location")
    return project(model, x, layer, units, rule, maxpool=maxpool, locations=locations)[0]


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    layer: str | None = None,
    location=None,
    abs: bool = True,
) -> torch.Tensor:
    """Simonyan et al. 2014's saliency: the gradient of the target with respect to each image.

    x: a batch (N, C, H, W) of preprocessed images. target: an int, a list or a tensor (one per
    image): a class of the model's output, or with `layer` (a module path such as
    "features.10") a unit of that layer, seeded at its strongest location in each image (or at
    `location`, a flat spatial index per image). abs: the absolute gradient (as Captum's
    `Saliency`). Returns maps (N, C, H, W). Puts the model in eval mode.
    """
    maps = _backward_map(model, x, target, layer, location, "backprop")
    return maps.abs() if abs else maps


def deconvnet(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    layer: str | None = None,
    location=None,
    switches: bool = True,
) -> torch.Tensor:
    """Zeiler & Fergus 2014's deconvnet projection of a class or unit (see `saliency` for the
    arguments). switches: unpool to the recorded max locations (False: spread the signal over
    each pooling window, their "without switches"). Returns maps (N, C, H, W)."""
    maxpool = "switches" if switches else "uniform"
    return _backward_map(model, x, target, layer, location, "deconvnet", maxpool)


def guided_backprop(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    layer: str | None = None,
    location=None,
) -> torch.Tensor:
    """Springenberg et al. 2015's guided backpropagation of a class or unit (see `saliency` for
    the arguments). Returns maps (N, C, H, W)."""
    return _backward_map(model, x, target, layer, location, "guided_backprop")


def magnitude(maps: torch.Tensor) -> torch.Tensor:
    """Per-pixel strength of a map (N, C, H, W) -> (N, H, W): the absolute value, summed over
    channels."""
    return maps.abs().sum(1)


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of each map's pixel magnitudes (N, H, W) -> (N,): 0 = spread evenly over
    all pixels, 1 = concentrated in one pixel. Our sharpness proxy (Hurley & Rickard 2009)."""
    v = maps.flatten(1).double().sort(1).values
    n = v.shape[1]
    total = v.sum(1).clamp_min(1e-300)
    rank = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    return (1 + 1 / n - 2 * ((n + 1 - rank) * v).sum(1) / (n * total)).float()


def to_image(maps: torch.Tensor, bgr: bool = False) -> torch.Tensor:
    """Display a projection (N, C, H, W) as (N, H, W, C) in [0, 1]: each map centred at 0.5
    (grey = 0) and scaled by the 99.5th percentile of its non-zero magnitudes (the few larger
    values saturate; zeros outside the receptive field do not count)."""
    m = maps.flip(1) if bgr else maps
    scale = torch.stack(
        [
            row[row > 0].quantile(0.995) if (row > 0).any() else row.new_ones(())
            for row in m.abs().flatten(1).float()
        ]
    )
    scale = scale.view(-1, 1, 1, 1)
    return (0.5 + 0.5 * m / scale).clamp(0, 1).permute(0, 2, 3, 1)
