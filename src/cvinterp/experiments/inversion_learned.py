"""inversion_learned: a decoder per layer trained to invert its features (Dosovitskiy & Brox
2016), with a pixel loss only and with other losses (pixel + feature + adversarial); how far the
held-out reconstructions are from the images, and from their features."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.data.probe import InMemoryProbe, photo_crops
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Loaded,
    Model,
    Probe,
    depth_trend,
    from_unit,
    imagenet_folder,
    imagenet_nets,
    load,
    module_path,
    split_of,
    to_unit,
)
from cvinterp.methods import inversion as inv


def _check(settings: dict) -> None:
    losses = settings["losses"]
    if "pixel" not in losses or len(losses) < 2:
        raise ValueError(
            "config key 'experiments.inversion_learned.losses' needs 'pixel' and at least one "
            "more loss (e.g. 'perceptual') to compare"
        )


# An ImageNet net's inverters need ImageNet images: the offline photo crops are crops of 12
# photos, so the held-out crops show the same photos as the training ones (memorised, not
# inverted), and at the paper's 45,000 training images they would be capped at the probe size.
DECLARATION = Declaration(input_layer=True, check=_check, needs_imagenet=imagenet_nets)


def _training_images(m: Loaded, probe: Probe, n: int, n_test: int):
    """(training images, held-out test images), each answering `len()` and `batches()`: the
    model's training split (its first n) and its probe (test) images (the first n_test); for an
    ImageNet net, two disjoint seeded class-stratified samples of the validation folder (the
    first n images of its stratified order for training, the next n_test for testing; both
    cover every class once each has that many images), offline photo crops."""
    if not m.imagenet:
        train = InMemoryProbe(split_of(m.spec, "train", probe).head(n), "train")
        return train, InMemoryProbe(m.images.data.head(n_test), m.images.description)
    folder = probe.datasets.get("imagenet_val", {}).get("dir")
    if folder:
        order = imagenet_folder(folder, m.size, None, m.pre, m.arch, probe)
        n = min(n, len(order) - 1)  # at least one held-out image
        return order.part(0, n), order.part(n, n_test)
    # the offline stand-in, no bigger than the probe set of the unit experiments
    total = min(n + n_test, probe.imagenet_probe)
    crops = photo_crops(m.size, total, probe.seed)
    n = min(n, len(crops) - 1)
    return InMemoryProbe(crops[:n], "photo crops"), InMemoryProbe(crops[n:], "photo crops")


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
    metrics: dict = {"models": {}, "losses": losses, "epochs": epochs, "seed": probe.seed}
    figure_data, per_image = {}, {}
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
        # scored a batch at a time: at the paper's scale one batch of all held-out images
        # through a deep layer's decoder would not fit any device
        scores = inv.score_inverters(
            m.model,
            m.pre.from_unit,
            decoders,
            paths,
            test.batches(to_unit, batch_size, device),
            keep=shown,
        )
        n_test = len(next(iter(scores.pixel_rmse.values())))
        info = {"train_images": len(train), "test_images": n_test, "layers": {}}
        errors = per_image.setdefault(name, {})
        for layer, loss in decoders:
            rmse = scores.pixel_rmse[layer, loss]
            feature_error = scores.feature_error[layer, loss]
            row = info["layers"].setdefault(layer, {})
            row[f"{loss}_pixel_rmse"] = float(rmse.mean())
            row[f"{loss}_feature_error"] = float(feature_error.mean())
            # per held-out image, for the claims' intervals
            errors.setdefault(layer, {})[f"{loss}_pixel_rmse"] = rmse.double().numpy()
            errors[layer][f"{loss}_feature_error"] = feature_error.double().numpy()
        metrics["models"][name] = info
        figure_data[name] = {
            "images": scores.images,
            "layers": names,
            "reconstructions": scores.reconstructions,
        }
    return Computed(
        metrics, {"shown": figure_data, "losses": list(weights), "per_image": per_image}
    )


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
    """Per model, on the held-out images: learned_error_grows_with_depth, the depth trend of
    the pixel-loss inverter's pixel RMSE (a bootstrap over images); the two loss comparisons,
    each image's gap averaged over layers, mean over images with a paired bootstrap interval
    over the images. The weakest model decides."""
    other = next(k for k in result.data["losses"] if k != "pixel")
    seed = int(result.metrics.get("seed", 0))
    per = result.data["per_image"]
    trend, pixel_gap, feature_gap, left_out = {}, {}, {}, {}
    texts: dict[str, list[str]] = {"trend": [], "pixel": [], "feature": []}

    def gap(lay: dict, minuend: str, subtrahend: str) -> tuple[dict, str]:
        diff = np.mean([v[minuend] - v[subtrahend] for v in lay.values()], axis=0)
        ci = stats.bootstrap(diff, np.mean, seed=seed)
        return stats.estimate(
            float(diff.mean()), ci
        ), f"{diff.mean():+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"

    def layers_text(lay: dict, metric: str) -> str:
        return ", ".join(
            f"{layer} {np.mean(v[f'{other}_{metric}']):.3f} vs {np.mean(v[f'pixel_{metric}']):.3f}"
            for layer, v in lay.items()
        )

    for name, lay in per.items():
        layers = result.data["shown"][name]["layers"]  # shallow to deep
        if len(layers) >= 2:
            est = trend[name] = depth_trend([lay[k]["pixel_pixel_rmse"] for k in layers], seed)
            texts["trend"].append(
                f"{name}: Spearman {est['value']:+.2f}"
                + f" {stats.interval_text(est, '+.2f')}"
                + " over "
                + ", ".join(f"{k} {np.mean(lay[k]['pixel_pixel_rmse']):.3f}" for k in layers)
            )
        else:
            left_out[name] = "one layer: no trend"
        pixel_gap[name], t = gap(lay, f"{other}_pixel_rmse", "pixel_pixel_rmse")
        texts["pixel"].append(f"{name}: {t} ({layers_text(lay, 'pixel_rmse')})")
        feature_gap[name], t = gap(lay, "pixel_feature_error", f"{other}_feature_error")
        texts["feature"].append(f"{name}: {t} ({layers_text(lay, 'feature_error')})")
    info = result.metrics["models"]
    conditions = (
        "; ".join(
            f"{n}: {v['train_images']} training, {v['test_images']} held-out images"
            for n, v in info.items()
        )
        + f"; {result.metrics.get('epochs', '?')} epoch(s) (the paper: AlexNet, ImageNet, "
        "far longer training)"
    )
    return {
        "learned_error_grows_with_depth": stats.claim(
            trend,
            "pixel-loss inverter's held-out pixel RMSE by layer — " + "; ".join(texts["trend"]),
            conditions,
            left_out=left_out,
        ),
        "perceptual_higher_pixel_error": stats.claim(
            pixel_gap,
            f"pixel RMSE, {other} minus pixel loss, mean over layers and held-out images — "
            + "; ".join(texts["pixel"]),
            conditions,
        ),
        "perceptual_lower_feature_error": stats.claim(
            feature_gap,
            f"relative feature error, pixel minus {other} loss, mean over layers and held-out "
            "images — " + "; ".join(texts["feature"]),
            conditions,
        ),
    }
