"""Activation maximisation: Erhan et al. 2009, with Yosinski et al. 2015's regularisers.

Gradient ascent on the input for many units at once: image i of the batch maximises unit
`units[i]` of one layer, so all units of a layer (or all random starts of one unit) are one
batch. The images are optimised in *pixel units*: the network's input with its mean removed,
on the 0-255 scale (Caffe's input space, where Yosinski et al.'s learning rates and decay are
stated); `to_input` maps them into the network's normalised input.

- `yosinski`: gradient ascent with L2 decay, a Gaussian blur every few steps, and clipping of
  pixels with a small norm or a small contribution (Yosinski et al. 2015, Table 1), run as the
  authors' `optimize/gradient_optimizer.py` runs it: pixels clipped to 0-255 before each
  forward pass, their "progress" learning rate for settings 1 and 4, the blur at steps 0, 4,
  8, ... (scipy's `gaussian_filter`: a 4-sigma kernel, edges reflected), no update after the
  last forward pass, and the best-scoring image seen returned (not the last);
- `erhan`: gradient ascent on the sphere ||x|| = rho (Erhan et al. 2009's norm constraint).

`actmax(model, target, ...)` is the face for notebooks: either method for classes or units of
any model, from a seeded start, returning displayable RGB images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cvinterp.instrument import Instrument, gradients_on, normal_tensor
from cvinterp.models import IMAGENET_RGB, Preprocessing


@dataclass(frozen=True)
class Regulariser:
    """One column of Yosinski et al. 2015, Table 1 (0 turns a regulariser off), with the
    learning-rate policy of the authors' `doc/running-optimize-image.md` for it."""

    decay: float = 0.0  # L2 decay: x <- (1 - decay) x every step
    blur_every: int = 0  # blur at steps 0, blur_every, 2 blur_every, ...
    blur_radius: float = 0.0  # Gaussian sigma, pixels
    norm_pct: float = 0.0  # zero pixels whose norm (over channels) is below this percentile
    contrib_pct: float = 0.0  # zero pixels whose |x * grad| (summed over channels) is below it
    iterations: int = 1000  # forward passes (the last one is not followed by an update)
    lr: float = 100.0  # the learning rate ("constant"), or its cap ("progress")
    lr_policy: str = "constant"  # or "progress": lr = min(lr, desired_prog / ||grad||^2)
    desired_prog: float = 2.0  # "progress": the objective's predicted gain per step


# Table 1 of Yosinski et al. 2015 with the authors' command lines for it
# (doc/running-optimize-image.md): settings 2 and 3 a constant lr of 100; settings 1 and 4 the
# "progress" policy, desired progress 2, capped at 100 and 1e8.
YOSINSKI_SETTINGS = {
    1: Regulariser(
        decay=0.0, blur_every=4, blur_radius=0.5, norm_pct=50, iterations=500,
        lr=100.0, lr_policy="progress",
    ),
    2: Regulariser(decay=0.3, norm_pct=20, iterations=750),
    3: Regulariser(decay=1e-4, blur_every=4, blur_radius=1.0, iterations=1000),
    4: Regulariser(
        decay=0.0, blur_every=4, blur_radius=0.5, contrib_pct=90, iterations=1000,
        lr=1e8, lr_policy="progress",
    ),
}  # fmt: skip


@dataclass
class Result:
    images: torch.Tensor  # (N, C, H, W) in pixel units (yosinski: the best image seen)
    start: torch.Tensor  # (N,) the objective at the start
    final: torch.Tensor  # (N,) the objective of `images`
    settings: dict
    last: torch.Tensor | None = None  # yosinski: (N,) the objective at the last step
    best_iteration: torch.Tensor | None = None  # yosinski: (N,) the step `images` is from


def pixel_space(pre):
    """(to_input, mean, bounds) of the pixel-unit space of a `Preprocessing`: input pixels on
    0-255 with the mean removed, in the network's channel order. to_input(u) is the network's
    input; u + mean are the pixels; bounds (low, high) keep them in 0-255."""
    scale = 255.0 / pre.value_range
    with torch.inference_mode(False):  # normal tensors: autograd saves std for backward
        mean = torch.tensor(pre.mean).view(1, -1, 1, 1) * scale
        std = torch.tensor(pre.std).view(1, -1, 1, 1) * scale
    return (lambda u: u / std.to(u.device, u.dtype)), mean, (-mean, 255 - mean)


def unit_objective(
    model: nn.Module, layer: str | None, units: torch.Tensor, where: str = "centre"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (N, C, H, W) -> (N,) activation of unit units[i] in image i.

    `layer` is a module path (None: the model's output). For a conv layer, `where` picks the
    unit's activation at the map's centre (Yosinski et al.) or its spatial mean. `units` may be
    made under `torch.inference_mode()`: the objective still back-propagates.
    """
    if where not in ("centre", "mean"):
        raise ValueError(f"where must be 'centre' or 'mean', not {where!r}")

    def value(x: torch.Tensor) -> torch.Tensor:
        if layer is None:
            a = model(x)
        else:
            with Instrument(model, [layer], stop_early=True) as ins:
                ins.forward(x)
                a = ins[layer]
        a = a[torch.arange(len(x), device=x.device), normal_tensor(units.to(x.device))]
        if a.ndim == 3:  # (N, H, W)
            h, w = a.shape[1:]
            a = a[:, h // 2, w // 2] if where == "centre" else a.mean((1, 2))
        return a

    return value


def _symmetric_index(n: int, r: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by r on each side, edges reflected with the edge
    sample repeated (scipy.ndimage's mode "reflect": d c b a | a b c d | d c b a)."""
    i = torch.arange(-r, n + r, device=device)
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - 1 - i)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Depthwise Gaussian blur of every image and channel, as scipy.ndimage.gaussian_filter
    with its defaults (the authors' blur): a kernel of radius int(truncate * sigma + 0.5),
    edges reflected (mode "reflect")."""
    if sigma <= 0:
        return x
    r = int(truncate * sigma + 0.5)
    if r == 0:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c, h, w = x.shape[1:]
    x = x.index_select(2, _symmetric_index(h, r, x.device))
    x = x.index_select(3, _symmetric_index(w, r, x.device))
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _below_percentile(score: torch.Tensor, pct: float) -> torch.Tensor:
    """Mask (N, 1, H, W) of pixels whose score (N, H, W) is below the image's percentile."""
    q = torch.quantile(score.flatten(1), pct / 100, dim=1).view(-1, 1, 1)
    return (score < q)[:, None]


def step_sizes(setting: Regulariser, grad: torch.Tensor) -> torch.Tensor:
    """(N,) the learning rate of each image of the batch: the setting's constant, or the
    authors' "progress" rule min(lr, desired_prog / ||grad||^2), the step that would raise a
    linear objective by desired_prog."""
    n = len(grad)
    if setting.lr_policy == "constant":
        return torch.full((n,), setting.lr, dtype=grad.dtype, device=grad.device)
    if setting.lr_policy == "progress":
        sq = grad.flatten(1).pow(2).sum(1)
        return (setting.desired_prog / sq).clamp(max=setting.lr)  # ||g|| = 0: the cap
    raise ValueError(f"unknown lr_policy {setting.lr_policy!r}: 'constant' or 'progress'")


@gradients_on()
def yosinski(
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    setting: Regulariser,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    iterations: int | None = None,
    progress=None,
) -> Result:
    """Regularised gradient ascent (Yosinski et al. 2015) of a batch of images in pixel units,
    step by step as the authors' `GradientOptimizer._optimize`: clip the pixels to `bounds`
    (low, high; broadcastable), score, keep the best image so far, then (except after the last
    pass) step by the setting's learning rate, decay, blur at steps 0, blur_every, ..., zero
    the pixels of small norm and of small |contribution|. Returns the best-scoring image seen
    (`final` its objective, `last` the last step's, `best_iteration` when it was seen).

    `iterations` overrides the setting's number of passes (the default profile runs fewer).
    Works under `torch.no_grad()` and `torch.inference_mode()`.
    """
    x = start.detach().clone()
    steps = setting.iterations if iterations is None else iterations
    if steps < 1:
        raise ValueError(f"yosinski: iterations must be at least 1, not {steps}")
    best = torch.full((len(x),), -math.inf, dtype=x.dtype, device=x.device)
    best_x, best_at = x.clone(), torch.zeros(len(x), dtype=torch.long, device=x.device)
    first = value = None
    for t in range(steps):
        if bounds is not None:
            x = torch.maximum(torch.minimum(x, bounds[1]), bounds[0])
        x.requires_grad_(True)
        out = objective(to_input(x))
        (grad,) = torch.autograd.grad(out.sum(), x)
        with torch.no_grad():
            x, value = x.detach(), out.detach()
            first = value.clone() if first is None else first
            better = value > best
            best = torch.where(better, value, best)
            best_x[better] = x[better]
            best_at[better] = t
            if t < steps - 1:  # no update after the last pass
                x = x + step_sizes(setting, grad).view(-1, *[1] * (x.ndim - 1)) * grad
                if setting.decay:
                    x = x * (1 - setting.decay)
                if setting.blur_every and setting.blur_radius and t % setting.blur_every == 0:
                    x = gaussian_blur(x, setting.blur_radius)
                if setting.norm_pct:
                    x = x.masked_fill(_below_percentile(x.norm(dim=1), setting.norm_pct), 0)
                if setting.contrib_pct:
                    contribution = (x * grad).sum(1).abs()
                    x = x.masked_fill(_below_percentile(contribution, setting.contrib_pct), 0)
        if progress is not None:
            progress.update(1)
    return Result(best_x, first, best, {**asdict(setting), "iterations": steps}, value, best_at)


@gradients_on()
def erhan(
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    rho: float,
    iterations: int = 1000,
    step: float = 0.05,
    progress=None,
) -> Result:
    """Gradient ascent on the sphere ||x|| = rho (Erhan et al. 2009): a step along the
    normalised gradient (a fraction `step` of rho), then a projection back onto the sphere.
    The objective takes the images as they are (already in the network's input space). Works
    under `torch.no_grad()` and `torch.inference_mode()`."""

    def project(v: torch.Tensor) -> torch.Tensor:
        return v * (rho / v.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *[1] * (v.ndim - 1))

    x = project(start.detach().clone())
    with torch.no_grad():
        first = objective(x)
    for _ in range(iterations):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x).sum(), x)
        with torch.no_grad():
            g = grad.flatten(1)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            x = project(x + step * rho * g.view_as(x))
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        final = objective(x)
    return Result(x.detach(), first, final, {"rho": rho, "iterations": iterations, "step": step})


def pairwise_correlation(images: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Mean Pearson correlation between images of the same group (e.g. the random starts of
    one unit) and between images of different groups."""
    v = images.flatten(1).double()
    v = v - v.mean(1, keepdim=True)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = v @ v.T
    same = groups[:, None] == groups[None, :]
    off = ~torch.eye(len(v), dtype=torch.bool)
    within = r[same & off]
    between = r[~same]
    return float(within.mean()), float(between.mean()) if len(between) else float("nan")


@dataclass
class Visualisation:
    """The images `actmax` synthesised, one per target."""

    images: torch.Tensor  # (N, C, H, W) RGB in [0, 1], for display
    target: torch.Tensor  # (N,) the class or unit each image maximises
    start: torch.Tensor  # (N,) the objective at the start
    final: torch.Tensor  # (N,) the objective of `images` (yosinski: the best image seen)
    inputs: torch.Tensor  # (N, C, H, W) the optimised images as the network takes them
    settings: dict  # the method and its settings


def actmax(
    model: nn.Module,
    target,
    *,
    layer: str | None = None,
    method: str = "yosinski",
    setting: int = 1,
    iterations: int | None = None,
    size: int | None = None,
    channels: int = 3,
    preprocessing: Preprocessing = IMAGENET_RGB,
    where: str = "centre",
    rho: float | None = None,
    step: float = 0.05,
    seed: int = 0,
    progress=None,
) -> Visualisation:
    """Synthesise an image that excites each target most: a class of the model's output, or
    with `layer` (a module path) a unit of that layer (its activation at the map's centre, or
    its spatial mean with `where="mean"`).

    target: an int, a list or a tensor of classes / units; one image each, all in one batch.
    method="yosinski": regularised gradient ascent in pixel units from the mean image plus
    noise, with setting `setting` (1-4) of Yosinski et al. 2015's Table 1 (`YOSINSKI_SETTINGS`;
    `iterations` overrides its count); the pixels stay valid, so `images` are the pixels.
    method="erhan": gradient ascent on the sphere ||x|| = rho in the network's input space
    (Erhan et al. 2009) from uniform noise, `iterations` steps (default 1000) of `step` * rho;
    rho defaults to the norm of that noise after preprocessing (pass the mean norm of your
    preprocessed images); `images` are stretched to [0, 1] per image.
    size, channels: the input's side and channels (size defaults to the preprocessing's input
    size); preprocessing: how pixels become the network's input (torchvision's ImageNet
    normalisation by default). Seeded by `seed`; on the model's device; works under
    `torch.no_grad()` and `torch.inference_mode()`. Puts the model in eval mode.
    """
    if method not in ("yosinski", "erhan"):
        raise ValueError(f"method must be 'yosinski' or 'erhan', not {method!r}")
    if method == "yosinski" and setting not in YOSINSKI_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(YOSINSKI_SETTINGS)}, not {setting!r}")
    size = size or preprocessing.input_size
    if not size:
        raise ValueError("actmax: give the input size (size=...): the preprocessing has none")
    model.eval()
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    with gradients_on():
        units = torch.as_tensor(target).long().flatten().to(device)
        objective = unit_objective(model, layer, units, where)
        gen = torch.Generator().manual_seed(seed)
        shape = (len(units), channels, size, size)
        if method == "yosinski":
            to_input, mean, bounds = pixel_space(preprocessing)
            mean, bounds = mean.to(device, dtype), tuple(b.to(device, dtype) for b in bounds)
            start = (torch.randn(shape, generator=gen) * 10).to(device, dtype)  # mean + noise
            res = yosinski(
                objective, start, to_input, YOSINSKI_SETTINGS[setting], bounds, iterations, progress
            )
            inputs = to_input(res.images)
            rgb = ((res.images + mean) / 255).clamp(0, 1)
            settings = {"method": method, "setting": setting, **res.settings}
        else:
            noise = torch.rand(shape, generator=gen).to(device, dtype)
            start = preprocessing.from_unit(noise)
            if rho is None:
                rho = float(start.flatten(1).norm(dim=1).mean())
            res = erhan(
                objective, start, rho, 1000 if iterations is None else iterations, step, progress
            )
            inputs = res.images
            rgb = _stretch(_unnormalise(inputs, preprocessing))
            settings = {"method": method, **res.settings}
        if preprocessing.bgr:
            rgb = rgb.flip(1)
    return Visualisation(rgb.detach(), units, res.start, res.final, inputs.detach(), settings)


def _unnormalise(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """The network's input -> pixels on [0, 1] (in the network's channel order)."""
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean) / pre.value_range


def _stretch(x: torch.Tensor) -> torch.Tensor:
    """Each image min-max stretched to [0, 1]."""
    low = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (x - low) / (high - low).clamp_min(1e-12)
