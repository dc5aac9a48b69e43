"""inversion_learned: a decoder per layer trained to invert its features (Dosovitskiy & Brox
2016), with a pixel loss only and with other losses (pixel + feature + adversarial); how far the
held-out reconstructions are from the images, and from their features."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp.data.probe import FolderProbe, InMemoryProbe, photo_crops
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Loaded,
    Model,
    Probe,
    from_unit,
    limit,
    load,
    module_path,
    split_of,
    to_unit,
    trend_claim,
)
from cvinterp.methods import inversion as inv


def _check(settings: dict) -> None:
    losses = settings["losses"]
    if "pixel" not in losses or len(losses) < 2:
        raise ValueError(
            "config key 'experiments.inversion_learned.losses' needs 'pixel' and at least one "
            "more loss (e.g. 'perceptual') to compare"
        )


DECLARATION = Declaration(input_layer=True, check=_check)


class _Head:
    """The first n images of a probe."""

    def __init__(self, images, n: int):
        self.images, self.n = images, n

    def __len__(self) -> int:
        return self.n

    def batches(self, pre, batch_size, device):
        return limit(self.images.batches(pre, batch_size, device), self.n)


def _training_images(m: Loaded, probe: Probe, n: int, n_test: int):
    """(training images, test images uint8) for the inverters: the model's training split and
    its probe (test) images; for an ImageNet net, the first n images of the validation folder for
    training and the next n_test for testing (offline: photo crops)."""
    if not m.imagenet:
        train = InMemoryProbe(split_of(m.spec, "train", probe).head(n), "train")
        test = np.stack([m.images.image(i) for i in range(min(n_test, len(m.images)))])
        return train, test
    folder = probe.datasets.get("imagenet_val", {}).get("dir")
    if folder:
        both = FolderProbe(folder, m.size, n + n_test, probe.threads)
    else:  # the offline stand-in, no bigger than the probe set of the unit experiments
        total = min(n + n_test, probe.imagenet_probe)
        both = InMemoryProbe(photo_crops(m.size, total, probe.seed), "photo crops")
    n = min(n, len(both) - 1)
    test = np.stack([both.image(i) for i in range(n, len(both))])
    return _Head(both, n), test


def compute(
    models: dict[str, Model],
    *,
    train_images: int,
    test_images: int,
    epochs: int,
    batch_size: int,
    lr: float,
    width: int,
    losses: dict[str, dict],
    shown: int,
    probe: Probe,
    device,
) -> Computed:
    """Decoders of every listed layer under every loss, trained together on the same batches;
    per layer and loss the held-out pixel RMSE (on [0, 1]) and relative feature error."""
    weights = {k: inv.LossWeights(**v) for k, v in losses.items()}
    metrics: dict = {"models": {}, "losses": losses}
    figure_data = {}
    for name, model in models.items():
        m = load(model, probe, device, frozen=True)
        names = model.settings["layers"]
        paths = {layer: module_path(m, layer) for layer in names}
        train, test = _training_images(m, probe, train_images, test_images)
        steps = epochs * -(-len(train) // batch_size)
        bar = tqdm(total=steps, desc=f"{name}: inverters", mininterval=5)
        decoders = inv.train_inverters(
            m.model,
            m.pre.from_unit,
            lambda t=train: t.batches(to_unit, batch_size, device),
            paths,
            weights,
            m.size,
            m.channels,
            epochs=epochs,
            lr=lr,
            width=width,
            seed=probe.seed,
            device=device,
            progress=bar,
        )
        bar.close()
        x = to_unit(test).to(device)
        info = {"train_images": len(train), "test_images": len(x), "layers": {}}
        recon = {}
        with torch.no_grad():
            feats = inv.features(m.model, m.pre.from_unit(x), list(paths.values()))
            target = dict(zip(names, feats, strict=True))
            for (layer, loss), d in decoders.items():
                r = recon[layer, loss] = d(target[layer])
                f = inv.features(m.model, m.pre.from_unit(r), [paths[layer]])[0]
                row = info["layers"].setdefault(layer, {})
                row[f"{loss}_pixel_rmse"] = float((r - x).flatten(1).pow(2).mean(1).sqrt().mean())
                row[f"{loss}_feature_error"] = float(inv.relative_error(f, target[layer]).mean())
        metrics["models"][name] = info
        k = min(shown, len(x))
        figure_data[name] = {
            "images": x[:k].cpu(),
            "layers": names,
            "reconstructions": {key: r[:k].cpu() for key, r in recon.items()},
        }
    return Computed(metrics, {"shown": figure_data, "losses": list(weights)})


def figures(result: Computed, figure_dir) -> None:
    """Per loss: the held-out originals, then their reconstruction from each layer."""
    losses = result.data["losses"]
    for name, s in result.data["shown"].items():
        rows, labels = [], []
        for loss in losses:
            rows.append([fig.as_rgb(im) for im in from_unit(s["images"])])
            labels.append("original")
            for layer in s["layers"]:
                rows.append([fig.as_rgb(im) for im in from_unit(s["reconstructions"][layer, loss])])
                labels.append(f"{layer}\n{loss} loss")
        fig.image_rows(
            rows,
            labels,
            f"{name}: learned inverters (Dosovitskiy & Brox 2016) on held-out images, "
            f"{' vs '.join(losses)} loss",
            figure_dir / f"{name}.png",
            cell=1.2,
        )


def claims(result: Computed) -> dict:
    other = next(k for k in result.data["losses"] if k != "pixel")
    per = {n: info["layers"] for n, info in result.metrics["models"].items()}
    by_depth = {
        n: {layer: per[n][layer]["pixel_pixel_rmse"] for layer in s["layers"]}
        for n, s in result.data["shown"].items()
    }

    def mean_gap(minuend: str, subtrahend: str) -> dict[str, float]:
        """Per model, the mean over layers of one error minus another."""
        return {
            n: float(np.mean([v[minuend] - v[subtrahend] for v in lay.values()]))
            for n, lay in per.items()
        }

    def text(metric: str) -> str:
        return "; ".join(
            f"{n}: "
            + ", ".join(
                f"{layer} {v[f'{other}_{metric}']:.3f} vs {v[f'pixel_{metric}']:.3f}"
                for layer, v in lay.items()
            )
            for n, lay in per.items()
        )

    pixel_gap = mean_gap(f"{other}_pixel_rmse", "pixel_pixel_rmse")
    feature_gap = mean_gap("pixel_feature_error", f"{other}_feature_error")
    return {
        "learned_error_grows_with_depth": trend_claim(
            by_depth, "pixel-loss inverter's pixel RMSE by layer"
        ),
        "perceptual_higher_pixel_error": {
            "value": min(pixel_gap.values()),
            "ours": f"pixel RMSE, {other} vs pixel loss — {text('pixel_rmse')}",
        },
        "perceptual_lower_feature_error": {
            "value": min(feature_gap.values()),
            "ours": f"relative feature error, {other} vs pixel loss — {text('feature_error')}",
        },
    }
