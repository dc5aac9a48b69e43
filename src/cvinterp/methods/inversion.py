"""Feature inversion: which image has these features?

- `dip_invert`: the deep image prior (Ulyanov et al. 2018). A randomly initialised
  encoder-decoder with skips maps fixed noise to an image; its weights are fitted so that the
  image's features match the target's. Every inversion has its own generator (that is the
  prior), but all of their images go through the network as one batch, and one optimiser
  steps all generators.
- `tv_invert`: the hand-made prior baseline (Mahendran & Vedaldi 2015): the pixels themselves are
  fitted, with a total-variation penalty.
- `Decoder` / `train_inverters`: learned inverters (Dosovitskiy & Brox 2016), one per layer,
  trained with a pixel loss only or with pixel + feature (+ adversarial) losses;
  `score_inverters`: their held-out errors, a batch at a time.

Images are float (N, C, H, W) in [0, 1], RGB (or grey); `to_input` maps them into the network's
normalised input (`Preprocessing.from_unit`). A layer is a module path, or None for the input
itself (the identity: inversion must give the image back). `dip_invert`, `tv_invert` and
`train_inverters` work under `torch.no_grad()` and `torch.inference_mode()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cvinterp.instrument import Instrument, gradients_on, normal_tensor


def features(model: nn.Module, x: torch.Tensor, layers: Sequence[str | None]) -> list:
    """The outputs of `layers` (None: the input) for a batch, in one forward pass."""
    paths = sorted({p for p in layers if p is not None})
    if not paths:
        return [x for _ in layers]
    with Instrument(model, paths, stop_early=True) as ins:
        ins.forward(x)
        return [x if p is None else ins[p] for p in layers]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ||a - b||^2 / ||b||^2."""
    d = (a - b).flatten(1).pow(2).sum(1)
    return d / b.flatten(1).pow(2).sum(1).clamp_min(1e-12)


def _per_image_feature_loss(model, x_in, layers, targets) -> torch.Tensor:
    """Image i's relative feature error at layers[i] (one forward pass for all)."""
    feats = features(model, x_in, layers)
    return torch.stack(
        [
            relative_error(f[i : i + 1], t)[0]
            for i, (f, t) in enumerate(zip(feats, targets, strict=True))
        ]
    )


# --- deep image prior (Ulyanov et al. 2018) -----------------------------------------------


def _pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Reflection padding (the authors'); replicate where a map is too small to reflect."""
    if p == 0:
        return x
    return F.pad(x, (p, p, p, p), mode="reflect" if min(x.shape[-2:]) > p else "replicate")


class _Conv(nn.Module):
    """Padded conv, batch norm, LeakyReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, act: bool = True):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(cin, cout, k, stride)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(_pad(x, (self.k - 1) // 2)))
        return F.leaky_relu(x, 0.2) if self.act else x


class SkipNet(nn.Module):
    """The authors' encoder-decoder with skip connections.

    Level i: down = conv k_i stride 2, conv k_i; skip = 1x1 conv to `skip` channels; up =
    batch norm of [skip, nearest-upsampled deeper], conv k_i, 1x1 conv. Output: 1x1 conv and a
    sigmoid. Input: (N, in_channels, H, W) noise; output (N, out_channels, H, W) in [0, 1].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        kernels: Sequence[int],
        skip: int,
    ):
        super().__init__()
        if len(channels) != len(kernels):
            raise ValueError("the generator needs one kernel size per level")
        self.down, self.skip, self.up_bn, self.up = (nn.ModuleList() for _ in range(4))
        c_in = in_channels
        for i, (c, k) in enumerate(zip(channels, kernels, strict=True)):
            self.down.append(nn.Sequential(_Conv(c_in, c, k, 2), _Conv(c, c, k)))
            self.skip.append(_Conv(c_in, skip, 1))
            c_deep = channels[i + 1] if i + 1 < len(channels) else c
            self.up_bn.append(nn.BatchNorm2d(skip + c_deep))
            self.up.append(nn.Sequential(_Conv(skip + c_deep, c, k), _Conv(c, c, 1)))
            c_in = c
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def _level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        deep = self.down[i](x)
        if i + 1 < len(self.down):
            deep = self._level(i + 1, deep)
        deep = F.interpolate(deep, size=x.shape[-2:], mode="nearest")
        return self.up[i](self.up_bn[i](torch.cat([self.skip[i](x), deep], 1)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self._level(0, z)))


def usable_levels(size: int, channels: Sequence[int]) -> int:
    """Levels whose stride-2 output is at least 2x2 (batch norm needs more than one value);
    at least one level."""
    n, s = 0, size
    while n < len(channels) and (s + 1) // 2 >= 2:
        s = (s + 1) // 2
        n += 1
    return max(n, 1)


@dataclass
class Inversion:
    images: torch.Tensor  # (G, C, H, W) in [0, 1]
    feature_error: torch.Tensor  # (G,) relative feature error at the end
    history: list  # mean loss every `log_every` steps


@gradients_on()
def dip_invert(
    model: nn.Module,
    to_input: Callable,
    targets: Sequence[torch.Tensor],
    layers: Sequence[str | None],
    size: int,
    channels: int,
    *,
    generator: dict,
    iterations: int,
    lr: float = 1e-3,
    input_depth: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    log_every: int = 50,
    progress=None,
) -> Inversion:
    """Deep-image-prior inversions of target features, one per (target, layer), all fitted at
    once: a SkipNet per inversion (the authors' channels, kernels and skip width in
    `generator`; levels that would shrink the map below 2x2 are dropped), relative feature
    error, Adam. The generators stay in training mode (batch statistics), as in the authors'
    code."""
    dev = targets[0].device
    n_levels = usable_levels(size, generator["channels"])
    nets, z = nn.ModuleList(), []
    with torch.random.fork_rng(devices=[]):
        for i in range(len(targets)):  # inversion i: its own generator and noise, seed + i
            torch.manual_seed(seed + i)
            nets.append(
                SkipNet(
                    input_depth,
                    channels,
                    generator["channels"][:n_levels],
                    generator["kernels"][:n_levels],
                    generator["skip"],
                )
            )
            z.append(torch.rand(1, input_depth, size, size) * 0.1)
    nets = nets.to(dev, dtype).train()
    z = torch.stack(z).to(dev, dtype)

    def generate() -> torch.Tensor:
        return torch.cat([net(zi) for net, zi in zip(nets, z, strict=True)])

    return _fit(
        model,
        to_input,
        generate,
        nets.parameters(),
        layers,
        targets,
        iterations=iterations,
        lr=lr,
        dtype=dtype,
        log_every=log_every,
        progress=progress,
    )


def _fit(
    model,
    to_input,
    images: Callable[[], torch.Tensor],
    params,
    layers,
    targets,
    *,
    iterations: int,
    lr: float,
    dtype,
    log_every: int,
    progress,
    penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Inversion:
    """Adam on `params` until the features of `images()` match the targets (relative error,
    plus a per-image `penalty` of the images); the images and their final feature errors."""
    opt = torch.optim.Adam(params, lr=lr)
    targets = [normal_tensor(t.detach().to(dtype)) for t in targets]
    history = []
    for step in range(iterations):
        opt.zero_grad(set_to_none=True)
        x = images()
        loss = _per_image_feature_loss(model, to_input(x), layers, targets)
        if penalty is not None:
            loss = loss + penalty(x)
        loss.sum().backward()
        opt.step()
        if step % log_every == 0 or step == iterations - 1:
            history.append(float(loss.detach().mean()))
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        out = images()
        err = _per_image_feature_loss(model, to_input(out), layers, targets)
    return Inversion(out.detach(), err.detach(), history)


# --- total-variation prior (Mahendran & Vedaldi 2015) ------------------------------------------


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-image mean of (dx^2 + dy^2)^(beta / 2)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).add(1e-8).pow(beta / 2).flatten(1).mean(1)


@gradients_on()
def tv_invert(
    model: nn.Module,
    to_input: Callable,
    targets: Sequence[torch.Tensor],
    layers: Sequence[str | None],
    size: int,
    channels: int,
    *,
    iterations: int,
    tv_weight: float,
    beta: float = 2.0,
    lr: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    log_every: int = 50,
    progress=None,
) -> Inversion:
    """Fit the pixels (through a sigmoid, so they stay in [0, 1]) to the target features with
    a total-variation penalty; all inversions in one batch, Adam."""
    dev = targets[0].device
    logits = (
        torch.stack(
            [  # inversion i starts from seed + i
                torch.randn(channels, size, size, generator=torch.Generator().manual_seed(seed + i))
                for i in range(len(targets))
            ]
        )
        * 0.1
    )
    logits = logits.to(dev, dtype)
    logits.requires_grad_(True)
    return _fit(
        model,
        to_input,
        lambda: torch.sigmoid(logits),
        [logits],
        layers,
        targets,
        iterations=iterations,
        lr=lr,
        dtype=dtype,
        log_every=log_every,
        progress=progress,
        penalty=lambda x: tv_weight * total_variation(x, beta),
    )


# --- learned inverters (Dosovitskiy & Brox 2016) --------------------------------------------


class Decoder(nn.Module):
    """Features of one layer -> an image. A fully connected input is first mapped to a 4x4 map;
    then a 3x3 conv and up-convolutions (4x4, stride 2, LeakyReLU) until the image size, a
    3x3 conv to the image channels and a sigmoid."""

    def __init__(self, feature_shape: Sequence[int], size: int, channels: int, width: int = 64):
        super().__init__()
        self.size = size
        if len(feature_shape) == 1:
            self.fc = nn.Sequential(nn.Linear(feature_shape[0], width * 2 * 16), nn.LeakyReLU(0.2))
            c, s = width * 2, 4
        else:
            self.fc = None
            c, s = feature_shape[0], feature_shape[-1]
        layers: list[nn.Module] = [nn.Conv2d(c, width * 2, 3, padding=1), nn.LeakyReLU(0.2)]
        c = width * 2
        while s < size:
            nxt = max(width // 2, c // 2)
            layers += [nn.ConvTranspose2d(c, nxt, 4, 2, 1), nn.LeakyReLU(0.2)]
            c, s = nxt, s * 2
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, channels, 3, padding=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.fc is not None:
            f = self.fc(f.flatten(1)).view(len(f), -1, 4, 4)
        y = self.body(f)
        y = F.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(y))


class Critic(nn.Module):
    """A small convolutional discriminator for the adversarial loss."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, width * 4, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width * 4, 1),
        )

    def forward(self, x):
        return self.net(x)[:, 0]


@dataclass(frozen=True)
class LossWeights:
    pixel: float = 0.0
    feature: float = 0.0
    adversarial: float = 0.0


@gradients_on()
def train_inverters(
    model: nn.Module,
    to_input: Callable,
    batches: Callable,
    layers: dict[str, str],
    losses: dict[str, LossWeights],
    size: int,
    channels: int,
    *,
    epochs: int,
    lr: float,
    width: int,
    seed: int,
    device,
    progress=None,
) -> dict[tuple[str, str], Decoder]:
    """Train one decoder per (layer, loss) on the images `batches()` yields ([0, 1] float).

    All decoders see the same batches; the network runs once per batch on the originals and,
    per layer, once on that layer's reconstructions that need a feature loss; the layers'
    losses are backpropagated one layer at a time (the same gradients; one layer's graph held).
    """
    names = list(layers)
    paths = [layers[n] for n in names]
    with torch.no_grad():  # the layers' shapes, from a blank image (no data read for it)
        blank = torch.zeros(1, channels, size, size, device=device)
        shapes = [f.shape[1:] for f in features(model, to_input(blank), paths)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoders = {
            (n, loss): Decoder(s, size, channels, width).to(device)
            for n, s in zip(names, shapes, strict=True)
            for loss in losses
        }
        critics = {
            key: Critic(channels).to(device) for key in decoders if losses[key[1]].adversarial
        }
    opt = torch.optim.Adam(
        [p for d in decoders.values() for p in d.parameters()], lr=lr, betas=(0.9, 0.999)
    )
    opt_c = critics and torch.optim.Adam(
        [p for c in critics.values() for p in c.parameters()], lr=lr, betas=(0.5, 0.999)
    )
    for _ in range(epochs):
        for x in batches():
            x = normal_tensor(x.to(device))
            with torch.no_grad():
                feats = dict(zip(names, features(model, to_input(x), paths), strict=True))
            # one layer's decoders at a time, their gradients accumulated: only one layer's
            # graph is held (all at once, AlexNet's four layers at batch 64 took ~19 GB)
            opt.zero_grad(set_to_none=True)
            recon = {}
            for n in names:
                group = {key: d(feats[n]) for key, d in decoders.items() if key[0] == n}
                total = 0.0
                need_feat = [key for key in group if losses[key[1]].feature]
                if need_feat:
                    # one forward pass of the network for the layer's reconstructions
                    x_hat = torch.cat([group[key] for key in need_feat])
                    (f_all,) = features(model, to_input(x_hat), [layers[n]])
                    for j, key in enumerate(need_feat):
                        f = f_all[j * len(x) : (j + 1) * len(x)]
                        total = total + losses[key[1]].feature * relative_error(f, feats[n]).mean()
                for key, r in group.items():
                    w = losses[key[1]]
                    total = total + w.pixel * F.mse_loss(r, x)
                    if key in critics:
                        total = total + w.adversarial * F.softplus(-critics[key](r)).mean()
                total.backward()
                recon |= {key: r.detach() for key, r in group.items()}
            opt.step()
            if critics:
                opt_c.zero_grad(set_to_none=True)
                c_loss = sum(
                    F.softplus(-c(x)).mean() + F.softplus(c(recon[key])).mean()
                    for key, c in critics.items()
                )
                c_loss.backward()
                opt_c.step()
            if progress is not None:
                progress.update(1)
    for d in decoders.values():
        d.eval()
    return decoders


@dataclass
class Scores:
    """Held-out errors of learned inverters, per (layer, loss): each image's pixel RMSE (on
    [0, 1]) and relative feature error (float32, CPU, in the images' order); the first `keep`
    images and their reconstructions (CPU)."""

    pixel_rmse: dict = field(default_factory=dict)
    feature_error: dict = field(default_factory=dict)
    images: torch.Tensor | None = None
    reconstructions: dict = field(default_factory=dict)


@torch.no_grad()
def score_inverters(
    model: nn.Module,
    to_input: Callable,
    decoders: dict[tuple[str, str], nn.Module],
    layers: dict[str, str | None],
    batches: Iterable[torch.Tensor],
    keep: int = 0,
) -> Scores:
    """Every decoder's reconstructions of held-out images ([0, 1] float batches) and their
    errors, one batch at a time: memory is bounded by the batch (a deep layer's decoder output
    at the image size, for every decoder), not by the number of images. Per image the same
    values as scoring all of them in one batch."""
    names = list(layers)
    paths = [layers[n] for n in names]
    pixel: dict = {key: [] for key in decoders}
    feature: dict = {key: [] for key in decoders}
    kept, kept_r = [], {key: [] for key in decoders}
    seen = 0
    for x in batches:
        target = dict(zip(names, features(model, to_input(x), paths), strict=True))
        room = max(0, keep - seen)
        if room:
            kept.append(x[:room].cpu())
        for key, d in decoders.items():
            layer = key[0]
            r = d(target[layer])
            f = features(model, to_input(r), [layers[layer]])[0]
            pixel[key].append((r - x).flatten(1).pow(2).mean(1).sqrt().cpu())
            feature[key].append(relative_error(f, target[layer]).cpu())
            if room:
                kept_r[key].append(r[:room].cpu())
        seen += len(x)
    if not seen:
        raise ValueError("no held-out images to score the inverters on")
    return Scores(
        {key: torch.cat(v) for key, v in pixel.items()},
        {key: torch.cat(v) for key, v in feature.items()},
        torch.cat(kept) if kept else x[:0].cpu(),
        {key: torch.cat(v) if v else x[:0].cpu() for key, v in kept_r.items()},
    )
