"""What all units do: the workflow steps of the layer-level figures.

actmax (Erhan et al. 2009; Yosinski et al. 2015), embedding (van der Maaten & Hinton 2008, and
the top images of every unit of the layer), inversion_dip (Ulyanov et al. 2018, with Mahendran &
Vedaldi's total-variation prior as the baseline) and inversion_learned (Dosovitskiy & Brox 2016).
Each step takes plain arguments from the validated config, reads model checkpoints and writes
its figures and one metrics file whose `claims` feed compare.tsv.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from cvinterp import figures
from cvinterp.data import load_images
from cvinterp.data.probe import FolderProbe, InMemoryProbe, photo_crops
from cvinterp.methods import actmax as am
from cvinterp.methods import embedding as emb
from cvinterp.methods import inversion as inv
from cvinterp.models import layer_path
from cvinterp.pipeline import dataset_kwargs, write_json
from cvinterp.unit_experiments import (
    Loaded,
    Probe,
    _device_and_seed,
    _layer_tops,
    _limit,
    _probe_images,
    _spread,
    load,
)


def _frozen(m: Loaded) -> Loaded:
    m.model.requires_grad_(False)  # gradients flow to the input only
    return m


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255


def _from_unit(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C)."""
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _path(m: Loaded, layer: str) -> str | None:
    """A paper-named layer's module path; 'input' is the identity (the network's input)."""
    return None if layer == "input" else layer_path(m.arch, layer)


def _depth_trend(errors: list[float]) -> float:
    """Spearman correlation of an error with layer depth (1: it grows with every layer)."""
    if len(errors) < 3:
        return float(np.sign(errors[-1] - errors[0])) if len(errors) == 2 else float("nan")
    return float(spearmanr(np.arange(len(errors)), errors).statistic)


def _trend_claim(per_model: dict[str, dict[str, float]], what: str):
    """The weakest model's depth trend of an error given per layer, shallow to deep."""
    per_model = {n: e for n, e in per_model.items() if len(e) >= 2}
    if not per_model:
        return {"na": "no model with two or more layers"}
    trend = {n: _depth_trend(list(e.values())) for n, e in per_model.items()}
    ours = "; ".join(
        f"{n}: Spearman {trend[n]:+.2f} over "
        + ", ".join(f"{layer} {v:.3f}" for layer, v in e.items())
        for n, e in per_model.items()
    )
    return {"value": min(trend.values()), "ours": f"{what} — {ours}"}


# --- activation maximisation (Erhan et al. 2009; Yosinski et al. 2015) ----------------------


def actmax_experiment(
    models: dict[str, dict], *, erhan: dict | None, yosinski: dict | None, probe: Probe,
    device: str, threads: int, figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Erhan et al.'s norm-constrained activation maximisation of many units of layers 1-3 from
    several random starts (do the starts agree?), and Yosinski et al.'s regularised class
    visualisations for settings 1-4."""
    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"claims": {}}
    if erhan:
        result["erhan"], result["claims"]["random_starts_converge"] = _erhan(
            models[erhan["model"]], erhan, probe, dev, f"{figure_dir}/erhan.png"
        )
    else:
        result["claims"]["random_starts_converge"] = {"na": "experiments.actmax.erhan not set"}
    if yosinski:
        result["yosinski"] = _yosinski(models[yosinski["model"]], yosinski, probe, dev,
                                       f"{figure_dir}/yosinski.png")  # fmt: skip
    write_json(metrics, result)


def _erhan(entry: dict, s: dict, probe: Probe, dev, path: str):
    name = s["model"]
    m = _frozen(load(name, entry["checkpoint"], entry["spec"], probe, dev))
    with torch.no_grad():  # the sphere: the mean norm of the probe images (network input)
        x = next(iter(m.images.batches(m.pre, 256, dev)))
        rho = float(x.flatten(1).norm(dim=1).mean())
    gen = torch.Generator().manual_seed(probe.seed)
    info = {"model": name, "rho": rho, "starts": s["starts"], "iterations": s["iterations"],
            "layers": {}}  # fmt: skip
    rows, labels, within_all = [], [], {}
    for layer in s["layers"]:
        p = layer_path(m.arch, layer)
        with torch.no_grad():
            n_units = int(inv.features(m.model, x[:1], [p])[0].shape[1])
        units = _spread(n_units, s["units"] or n_units)
        u = torch.tensor(units).repeat_interleave(s["starts"])  # unit-major: its starts together
        start = torch.rand(len(u), *x.shape[1:], generator=gen).to(dev)
        objective = am.unit_objective(m.model, p, u, where="centre")
        bar = tqdm(total=s["iterations"], desc=f"{name} {layer}: Erhan", mininterval=5)
        res = am.erhan(objective, start, rho, s["iterations"], s["step"], progress=bar)
        bar.close()
        within, between = am.pairwise_correlation(res.images.cpu(), u)
        within_all[layer] = within
        info["layers"][layer] = {
            "units": units, "n_units": n_units,
            "within_unit_correlation": within, "between_unit_correlation": between,
            "activation_start_mean": float(res.start.mean()),
            "activation_final_mean": float(res.final.mean()),
        }  # fmt: skip
        imgs = res.images.cpu().view(len(units), s["starts"], *x.shape[1:])
        shown = _spread(len(units), 8)
        rows.append([figures.as_rgb(_stretch(imgs[i, 0], 0)) for i in shown])
        labels.append(f"{layer}: units {', '.join(str(units[i]) for i in shown)}\n(start 1)")
        rows.append([figures.as_rgb(_stretch(imgs[shown[0], j], 0)) for j in range(s["starts"])])
        labels.append(f"{layer} unit {units[shown[0]]}:\n{s['starts']} random starts")
    figures.image_rows(rows, labels, f"{name}: activation maximisation on the sphere "
                       f"||x|| = {rho:.1f} (Erhan et al. 2009)", path)  # fmt: skip
    worst = min(within_all, key=within_all.get)
    lay = info["layers"]
    claim = {
        "value": within_all[worst],
        "ours": f"{name}: mean pairwise correlation of the optima of one unit from "
        f"{s['starts']} random starts: "
        + ", ".join(f"{k} {v['within_unit_correlation']:.2f} (other units "
                    f"{v['between_unit_correlation']:.2f})" for k, v in lay.items())
        + f"; {len(lay[worst]['units'])} units per layer",
    }  # fmt: skip
    return info, claim


def _stretch(u: torch.Tensor, pct: float) -> np.ndarray:
    """An optimised image (C, H, W) for display, HWC: contrast stretched between its pct-th and
    (100 - pct)-th percentiles (0: min-max)."""
    a = u.permute(1, 2, 0).double().cpu().numpy()
    lo, hi = np.percentile(a, [pct, 100 - pct])
    return ((a - lo) / max(hi - lo, 1e-12)).clip(0, 1)


def _yosinski(entry: dict, s: dict, probe: Probe, dev, path: str) -> dict:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    name = s["model"]
    m = _frozen(load(name, entry["checkpoint"], entry["spec"], probe, dev))
    to_input, _, bounds = am.pixel_space(m.pre)
    bounds = tuple(b.to(dev) for b in bounds)
    p = None if s["layer"] is None else layer_path(m.arch, s["layer"])
    classes = torch.tensor(s["classes"])
    objective = am.unit_objective(m.model, p, classes, where="mean")
    gen = torch.Generator().manual_seed(probe.seed)
    # Yosinski et al. start from the mean image plus noise: in pixel units, noise around 0
    start = (torch.randn(len(classes), m.channels, m.size, m.size, generator=gen) * 10).to(dev)
    names = m.classes if len(m.classes) > int(classes.max()) else _IMAGENET_CATEGORIES
    info = {"model": name, "layer": s["layer"] or "output", "classes": s["classes"],
            "settings": {}}  # fmt: skip
    columns = []
    for k in s["settings"]:
        setting = am.YOSINSKI_SETTINGS[k]
        steps = setting.iterations
        if s["max_iterations"]:
            steps = min(steps, s["max_iterations"])
        bar = tqdm(total=steps, desc=f"{name}: Yosinski setting {k}", mininterval=5)
        res = am.yosinski(objective, start, to_input, setting, bounds, steps, progress=bar)
        bar.close()
        with torch.no_grad():
            prob = m.model(to_input(res.images)).softmax(1)
        p_target = prob[torch.arange(len(classes)), classes.to(dev)].cpu()
        info["settings"][k] = {
            **res.settings, "paper_iterations": setting.iterations,
            "score_start": res.start.cpu().tolist(), "score_final": res.final.cpu().tolist(),
            "p_target": p_target.tolist(),
            "pixel_std": res.images.flatten(1).std(1).cpu().tolist(),
        }  # fmt: skip
        shown = res.images.flip(1) if m.pre.bgr else res.images  # RGB, pixel units
        # the changes are often a few grey levels: stretched for display
        columns.append([_stretch(shown[i], 0.5) for i in range(len(classes))])
    rows = [[col[i] for col in columns] for i in range(len(classes))]
    labels = [f"{int(c)} {names[int(c)]}" for c in classes]
    cols = [f"setting {k} ({info['settings'][k]['iterations']} it.)" for k in s["settings"]]
    figures.image_rows(rows, labels, f"{name}: class visualisations with Yosinski et al. 2015's "
                       "regularisers (Table 1, settings 1-4), contrast stretched", path,
                       col_labels=cols,
                       cell=2.0)  # fmt: skip
    return info


# --- embedding: t-SNE and PCA of a layer's features, top images of every unit ------------------


def embedding_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], images: int, tsne: dict,
    knn: int, thumbnails: int, k: int, probe: Probe, device: str, threads: int,
    figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """For the first layer listed per model: t-SNE and PCA maps of its features over `images`
    probe images, their kNN accuracy and trustworthiness, a thumbnail map; and the top-k
    images of every unit of that layer as one grid."""
    dev = _device_and_seed(device, threads, probe.seed)
    settings = emb.TSNESettings(**tsne)
    result: dict = {"models": {}, "claims": {}, "tsne": vars(settings)}
    gains: dict[str, dict[str, float]] = {"knn_accuracy": {}, "trustworthiness": {}}
    for name, entry in models.items():
        layer = layers[name][0]
        pooled = []  # the layer's features from the top-k pass; conv maps averaged over space

        def keep(path, a, pooled=pooled):
            pooled.append((a.mean((2, 3)) if a.ndim == 4 else a).cpu().numpy())

        m, n, (lt,) = _layer_tops(name, entry, [layer], k, images, probe, dev, observe=keep)
        feats = np.concatenate(pooled).astype(np.float64)
        labels = np.asarray(m.images.labels[:n])
        maps = {"t-SNE": emb.tsne(feats, settings, probe.seed, threads),
                "PCA": emb.pca(feats, 2, probe.seed)}  # fmt: skip
        q = {key: emb.quality(feats, pts, labels, knn) for key, pts in maps.items()}
        result["models"][name] = {
            "layer": layer, "images": n, "probe": m.images.description,
            "features": int(feats.shape[1]),
            **{f"{key}_{metric}": getattr(q[key], metric) for key in maps
               for metric in ("knn_accuracy", "trustworthiness")},
        }  # fmt: skip
        for metric in gains:
            gains[metric][name] = getattr(q["t-SNE"], metric) - getattr(q["PCA"], metric)
        _scatter_figure(m, maps, labels, q, f"{figure_dir}/{name}.png", layer)
        _thumbnail_figure(m, maps["t-SNE"], thumbnails, f"{figure_dir}/{name}_thumbnails.png",
                          layer)  # fmt: skip
        _unit_grid_figure(m, lt, k, f"{figure_dir}/{name}_units.png")
    for metric, per in gains.items():
        result["claims"][f"tsne_beats_pca_{metric}"] = {
            "value": min(per.values()),
            "ours": "; ".join(
                f"{n}: t-SNE {result['models'][n][f't-SNE_{metric}']:.3f} vs PCA "
                f"{result['models'][n][f'PCA_{metric}']:.3f} ({result['models'][n]['images']} "
                f"images, {result['models'][n]['layer']})" for n in per),
        }  # fmt: skip
    write_json(metrics, result)


def _scatter_figure(m: Loaded, maps, labels, q, path, layer) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(6.5 * len(maps), 6.2))
    for ax, (key, pts) in zip(axes, maps.items(), strict=True):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5,
                        vmax=9.5, linewidths=0)  # fmt: skip
        ax.set_title(f"{key}: {q[key].knn_accuracy:.3f} kNN accuracy, "
                     f"{q[key].trustworthiness:.3f} trustworthiness", fontsize=9)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    cbar = fig.colorbar(sc, ax=axes, ticks=range(len(m.images.classes)), fraction=0.02)
    cbar.ax.set_yticklabels([str(c)[:16] for c in m.images.classes], fontsize=7)
    fig.suptitle(f"{m.name} {layer}: features of {len(labels)} probe images — t-SNE (van der "
                 "Maaten & Hinton 2008) and PCA", fontsize=10)  # fmt: skip
    figures.save(fig, path)


def _thumbnail_figure(m: Loaded, pts, n: int, path, layer) -> None:
    """The t-SNE map with image thumbnails: one per cell of a grid over the map (the image
    nearest the cell's centre), so thumbnails do not overlap."""
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    side = max(1, int(np.sqrt(n)))
    lo, hi = pts.min(0), pts.max(0)
    cell = (pts - lo) / np.maximum(hi - lo, 1e-12) * (side - 1e-9)
    ij = np.floor(cell).astype(int)
    centre_dist = np.linalg.norm(cell - ij - 0.5, axis=1)
    chosen: dict[tuple, int] = {}
    for i in np.argsort(centre_dist, kind="stable"):
        chosen.setdefault(tuple(ij[i]), int(i))
    fig, ax = plt.subplots(figsize=(10, 10))
    ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c="lightgrey")
    zoom = 240 / (side * m.size)
    for i in chosen.values():
        img = figures.as_rgb(m.images.image(i))
        box = AnnotationBbox(OffsetImage(img, zoom=zoom, cmap="gray"), pts[i], frameon=False,
                             pad=0)  # fmt: skip
        ax.add_artist(box)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{m.name} {layer}: t-SNE map with {len(chosen)} thumbnails", fontsize=10)
    figures.save(fig, path)


def _unit_grid_figure(m: Loaded, lt, k: int, path) -> None:
    """Every unit of the layer: a tile of its top-k receptive-field crops (from the streaming
    top-k), tiles in a square grid."""
    import matplotlib.pyplot as plt

    t = lt.tops
    n_units = t.values.shape[1]
    kk = int(np.ceil(np.sqrt(k)))
    crop = 32 if m.size <= 64 else 48
    tiles = []
    for u in range(n_units):
        tile = np.ones((kk * crop, kk * crop, 3))
        for j in range(min(k, t.index.shape[0])):
            img = m.images.image(int(t.index[j, u]))
            c = figures.crop_to(img, lt.boxes[int(t.location[j, u])], crop)
            r, q = divmod(j, kk)
            tile[r * crop : (r + 1) * crop, q * crop : (q + 1) * crop] = figures.as_rgb(c)
        tiles.append(tile)
    cols = int(np.ceil(np.sqrt(n_units)))
    rows = int(np.ceil(n_units / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for u, (ax, tile) in enumerate(zip(axes.ravel(), tiles, strict=False)):
        ax.imshow(tile, interpolation="nearest")
        dead = float(t.values[0, u]) <= 0
        ax.set_title(f"{u}" + (" (dead)" if dead else ""), fontsize=6, pad=1)
    fig.suptitle(f"{m.name} {lt.layer}: top-{k} receptive-field crops of every unit "
                 f"({n_units} units)", fontsize=10)  # fmt: skip
    figures.save(fig, path)


# --- feature inversion: deep image prior (Ulyanov et al. 2018) and TV prior ------------------


def _inversion_images(m: Loaded, n: int, size: int, dev) -> torch.Tensor:
    """The images to invert, [0, 1] (N, C, size, size): labelled probe images, or the bundled
    photos of known class for an ImageNet net offline."""
    x = _to_unit(_probe_images(m, n))
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)  # fmt: skip
    return x.to(dev)


def inversion_dip_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], sizes: dict[str, int],
    images: int, iterations: int, lr: float, generator: dict, tv: dict, float64: bool,
    probe: Probe, device: str, threads: int, figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Invert each listed layer's features of a few images with the deep image prior and with
    the TV prior; per layer, the relative feature error and the pixel error (RMSE on [0, 1])."""
    dev = _device_and_seed(device, threads, probe.seed)
    dtype = torch.float64 if float64 else torch.float32
    result: dict = {"models": {}, "claims": {}, "dtype": str(dtype).split(".")[-1]}
    dip_err, dip_vs_tv = {}, {}
    for name, entry in models.items():
        m = _frozen(load(name, entry["checkpoint"], entry["spec"], probe, dev))
        m.model.to(dtype)
        size = sizes.get(name) or m.size
        x = _inversion_images(m, images, size, dev).to(dtype)
        names = layers[name]
        paths = [_path(m, layer) for layer in names]
        # one inversion per (image, layer), image-major
        pairs = [(i, j) for i in range(len(x)) for j in range(len(names))]
        with torch.no_grad():
            per_layer = inv.features(m.model, m.pre.from_unit(x), paths)
        targets = [per_layer[j][i : i + 1] for i, j in pairs]
        pair_paths = [paths[j] for _, j in pairs]
        common = dict(seed=probe.seed, dtype=dtype)
        bar = tqdm(total=iterations, desc=f"{name}: deep image prior", mininterval=5)
        dip = inv.dip_invert(m.model, m.pre.from_unit, targets, pair_paths, size, m.channels,
                             generator=generator, iterations=iterations, lr=lr,
                             input_depth=generator["input_depth"], progress=bar,
                             **common)  # fmt: skip
        bar.close()
        tv_iters = tv["iterations"] or iterations
        bar = tqdm(total=tv_iters, desc=f"{name}: TV prior", mininterval=5)
        base = inv.tv_invert(m.model, m.pre.from_unit, targets, pair_paths, size, m.channels,
                             iterations=tv_iters, tv_weight=tv["weight"], beta=tv["beta"],
                             lr=tv["lr"], progress=bar, **common)  # fmt: skip
        bar.close()
        orig = torch.stack([x[i] for i, _ in pairs])
        info = {"size": size, "images": len(x), "layers": {}}
        for j, layer in enumerate(names):
            sel = [q for q, (_, jj) in enumerate(pairs) if jj == j]
            row = {}
            for key, r in (("dip", dip), ("tv", base)):
                rmse = (r.images[sel] - orig[sel]).flatten(1).pow(2).mean(1).sqrt()
                row[f"{key}_pixel_rmse"] = float(rmse.mean())
                row[f"{key}_feature_error"] = float(r.feature_error[sel].mean())
            info["layers"][layer] = row
        info["dip_loss_history"] = dip.history
        result["models"][name] = info
        dip_err[name] = {layer: v["dip_pixel_rmse"] for layer, v in info["layers"].items()
                         if layer != "input"}  # fmt: skip
        dip_vs_tv[name] = float(np.mean([v["tv_pixel_rmse"] - v["dip_pixel_rmse"]
                                         for v in info["layers"].values()]))  # fmt: skip
        _inversion_figure(x, names, {"deep image prior": dip.images, "TV prior": base.images},
                          f"{figure_dir}/{name}.png",
                          f"{name}: inverting features with a deep image prior (Ulyanov et al. "
                          "2018) and a TV prior (Mahendran & Vedaldi 2015)")  # fmt: skip
    result["claims"]["dip_error_grows_with_depth"] = _trend_claim(
        dip_err, "deep-image-prior pixel RMSE by layer"
    )
    result["claims"]["dip_closer_than_tv"] = {
        "value": min(dip_vs_tv.values()),
        "ours": "; ".join(f"{n}: TV minus DIP pixel RMSE {v:+.3f} (mean over layers)"
                          for n, v in dip_vs_tv.items()),
    }  # fmt: skip
    write_json(metrics, result)


def _inversion_figure(x, names, methods: dict, path, title) -> None:
    """A row per (image, method): the original, then its inversion from each layer (the
    inversions are image-major)."""
    rows, labels = [], []
    for i in range(len(x)):
        for key, imgs in methods.items():
            shown = torch.cat([x[i : i + 1], imgs[i * len(names) : (i + 1) * len(names)]])
            rows.append([figures.as_rgb(im) for im in _from_unit(shown.float())])
            labels.append(f"image {i + 1}\n{key}")
    cols = ["original"] + [f"{layer}" for layer in names]
    figures.image_rows(rows, labels, title, path, col_labels=cols, cell=1.6)


# --- learned inversion (Dosovitskiy & Brox 2016) ---------------------------------------------


def _training_images(m: Loaded, entry: dict, probe: Probe, n: int, n_test: int):
    """(training batches factory, test images [0, 1]) for the inverters: the model's training
    split and its probe (test) images; for an ImageNet net, the first n images of the validation
    folder for training and the next n_test for testing (offline: photo crops)."""
    spec = entry["spec"]
    if not m.imagenet:
        kw = dataset_kwargs(spec["dataset"], probe.datasets, probe.fashion_dir, probe.cifar_dir,
                            probe.seed)  # fmt: skip
        train = InMemoryProbe(load_images(spec["dataset"], "train", **kw).head(n), "train")
        test = np.stack([m.images.image(i) for i in range(min(n_test, len(m.images)))])
        return train, test
    folder = probe.datasets.get("imagenet_val", {}).get("dir")
    if folder:
        both = FolderProbe(folder, m.size, n + n_test, probe.workers)
    else:  # the offline stand-in, no bigger than the probe set of the unit experiments
        total = min(n + n_test, probe.imagenet_probe)
        both = InMemoryProbe(photo_crops(m.size, total, probe.seed), "photo crops")
    n = min(n, len(both) - 1)
    test = np.stack([both.image(i) for i in range(n, len(both))])
    return _Head(both, n), test


class _Head:
    """The first n images of a probe."""

    def __init__(self, images, n: int):
        self.images, self.n = images, n

    def __len__(self) -> int:
        return self.n

    def batches(self, pre, batch_size, device):
        return _limit(self.images.batches(pre, batch_size, device), self.n)


def inversion_learned_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], train_images: int,
    test_images: int, epochs: int, batch_size: int, lr: float, width: int,
    losses: dict[str, dict], shown: int, probe: Probe, device: str, threads: int,
    figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Train a decoder per layer and loss, then measure on held-out images the pixel error
    (RMSE on [0, 1]) and the relative feature error of its reconstructions."""
    dev = _device_and_seed(device, threads, probe.seed)
    weights = {k: inv.LossWeights(**v) for k, v in losses.items()}
    if "pixel" not in weights or len(weights) < 2:
        raise ValueError("experiments.inversion_learned.losses needs 'pixel' and at least one "
                         "more loss (e.g. 'perceptual') to compare")  # fmt: skip
    result: dict = {"models": {}, "claims": {}, "losses": losses}
    by_depth, pix_gap, feat_gap = {}, {}, {}
    other = next(k for k in weights if k != "pixel")
    for name, entry in models.items():
        m = _frozen(load(name, entry["checkpoint"], entry["spec"], probe, dev))
        names = layers[name]
        paths = {layer: _path(m, layer) for layer in names}
        train, test = _training_images(m, entry, probe, train_images, test_images)
        steps = epochs * -(-len(train) // batch_size)
        bar = tqdm(total=steps, desc=f"{name}: inverters", mininterval=5)
        decoders = inv.train_inverters(
            m.model, m.pre.from_unit, lambda t=train: t.batches(_to_unit, batch_size, dev),
            paths, weights, m.size, m.channels, epochs=epochs, lr=lr, width=width,
            seed=probe.seed, device=dev, progress=bar,
        )  # fmt: skip
        bar.close()
        x = _to_unit(test).to(dev)
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
        result["models"][name] = info
        lay = info["layers"]
        by_depth[name] = {layer: lay[layer]["pixel_pixel_rmse"] for layer in names}
        pix_gap[name] = float(np.mean([v[f"{other}_pixel_rmse"] - v["pixel_pixel_rmse"]
                                       for v in lay.values()]))  # fmt: skip
        feat_gap[name] = float(np.mean([v["pixel_feature_error"] - v[f"{other}_feature_error"]
                                        for v in lay.values()]))  # fmt: skip
        k = min(shown, len(x))
        rows, labels = [], []
        for loss in weights:
            rows.append([figures.as_rgb(im) for im in _from_unit(x[:k])])
            labels.append("original")
            for layer in names:
                rows.append([figures.as_rgb(im) for im in _from_unit(recon[layer, loss][:k])])
                labels.append(f"{layer}\n{loss} loss")
        figures.image_rows(rows, labels, f"{name}: learned inverters (Dosovitskiy & Brox 2016) "
                           f"on held-out images, {' vs '.join(weights)} loss",
                           f"{figure_dir}/{name}.png", cell=1.2)  # fmt: skip
    claims = result["claims"]
    claims["learned_error_grows_with_depth"] = _trend_claim(
        by_depth, "pixel-loss inverter's pixel RMSE by layer"
    )

    def text(metric):
        return "; ".join(
            f"{n}: " + ", ".join(
                f"{layer} {v[f'{other}_{metric}']:.3f} vs {v[f'pixel_{metric}']:.3f}"
                for layer, v in result["models"][n]["layers"].items())
            for n in result["models"]
        )  # fmt: skip

    claims["perceptual_higher_pixel_error"] = {
        "value": min(pix_gap.values()),
        "ours": f"pixel RMSE, {other} vs pixel loss — {text('pixel_rmse')}",
    }
    claims["perceptual_lower_feature_error"] = {
        "value": min(feat_gap.values()),
        "ours": f"relative feature error, {other} vs pixel loss — {text('feature_error')}",
    }
    write_json(metrics, result)
