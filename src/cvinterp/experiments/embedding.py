"""embedding: t-SNE (van der Maaten & Hinton 2008) and PCA maps of a layer's features over the
probe images, how well each keeps the classes apart and the neighbourhoods intact, a map with
thumbnails, and the top images of every unit of the layer."""

from __future__ import annotations

import numpy as np

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import Computed, Declaration, Model, Probe, layer_tops, load
from cvinterp.methods import embedding as emb


def _figures(settings: dict) -> list[str]:
    return [f"{m}{part}" for m in settings["models"] for part in ("", "_thumbnails", "_units")]


DECLARATION = Declaration(figures=_figures, short=True)


def _thumbnail_cells(pts: np.ndarray, n: int) -> tuple[int, list[int]]:
    """At most n points to show as thumbnails: one per cell of a square grid over the map, the
    point nearest the cell's centre, so thumbnails do not overlap; (grid side, points)."""
    side = max(1, int(np.sqrt(n)))
    lo, hi = pts.min(0), pts.max(0)
    cell = (pts - lo) / np.maximum(hi - lo, 1e-12) * (side - 1e-9)
    ij = np.floor(cell).astype(int)
    centre_dist = np.linalg.norm(cell - ij - 0.5, axis=1)
    chosen: dict[tuple, int] = {}
    for i in np.argsort(centre_dist, kind="stable"):
        chosen.setdefault(tuple(ij[i]), int(i))
    return side, list(chosen.values())


def knn_correct(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per point, whether the majority label of its k nearest other points in the map is its
    own (leave-one-out; as `cvinterp.methods.embedding.quality`, whose accuracy is the mean)."""
    from sklearn.neighbors import KNeighborsClassifier

    near = KNeighborsClassifier(k + 1).fit(points, labels).kneighbors(points, return_distance=False)
    own = near == np.arange(len(points))[:, None]
    own[~own.any(1), -1] = True  # itself not among the k + 1: drop the farthest instead
    votes = labels[near[~own].reshape(len(points), k)]
    pred = np.array([np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes])
    return pred == labels


def trust_per_point(features: np.ndarray, maps: dict, k: int = 12) -> dict[str, np.ndarray]:
    """Per point, its share of each map's trustworthiness (Venna & Kaski 2006, computed as
    scikit-learn's `trustworthiness`, whose value is the mean of these shares): 1 minus the
    penalty of its k map neighbours that are not among its k input neighbours, by their input
    rank. The input-space ranks are computed once for every map."""
    from sklearn.metrics import pairwise_distances
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    dist = pairwise_distances(features)
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1)
    del dist
    rank = np.zeros((n, n), dtype=np.int64)
    rows = np.arange(n)[:, None]
    rank[rows, order] = np.arange(1, n + 1)
    del order
    scale = 2.0 / (k * (2.0 * n - 3.0 * k - 1.0))
    out = {}
    for key, pts in maps.items():
        near = NearestNeighbors(n_neighbors=k).fit(pts).kneighbors(return_distance=False)
        excess = rank[rows, near] - k
        out[key] = 1.0 - scale * np.where(excess > 0, excess, 0).sum(1)
    return out


def compute(
    models: dict[str, Model],
    *,
    images: int,
    tsne: dict,
    knn: int,
    thumbnails: int,
    k: int,
    probe: Probe,
    device,
) -> Computed:
    """Each model's `layer` (conv maps averaged over space) over the first `images` probe images,
    from the same streaming pass that finds the top-k images of its every unit; the t-SNE and
    PCA maps, with their kNN accuracy and trustworthiness."""
    settings = emb.TSNESettings(**tsne)
    metrics: dict = {"models": {}, "tsne": vars(settings), "knn": knn, "seed": probe.seed}
    shown, per_image = {}, {}
    for name, model in models.items():
        layer = model.settings["layer"]
        pooled = []

        def keep(path, a, pooled=pooled):
            pooled.append((a.mean((2, 3)) if a.ndim == 4 else a).cpu().numpy())

        m = load(model, probe, device)
        n, (lt,) = layer_tops(m, [layer], k, images, observe=keep)
        feats = np.concatenate(pooled).astype(np.float64)
        labels = np.asarray(m.images.labels[:n])
        maps = {
            "t-SNE": emb.tsne(feats, settings, probe.seed, probe.threads),
            "PCA": emb.pca(feats, 2, probe.seed),
        }
        # per image, for the claims' intervals; the metrics are their means
        trust = trust_per_point(feats, maps)
        points = {
            key: {"knn_accuracy": knn_correct(pts, labels, knn), "trustworthiness": trust[key]}
            for key, pts in maps.items()
        }
        metrics["models"][name] = {
            "layer": layer,
            "images": n,
            "probe": m.images.description,
            "features": int(feats.shape[1]),
        }
        metrics["models"][name]["classes"] = len(m.images.classes)
        for key in maps:
            for metric in ("knn_accuracy", "trustworthiness"):
                metrics["models"][name][f"{key}_{metric}"] = float(points[key][metric].mean())
        per_image[name] = points
        side, cells = _thumbnail_cells(maps["t-SNE"], thumbnails)
        t = lt.tops
        shown[name] = {
            "layer": layer,
            "maps": maps,
            "labels": labels,
            "classes": [str(c) for c in m.images.classes],
            "size": m.size,
            "thumbnails": {i: m.images.image(i) for i in cells},
            "thumbnail_side": side,
            # every unit's top-k images with the receptive field of each peak
            "units": [
                [
                    (m.images.image(int(t.index[j, u])), lt.boxes[int(t.location[j, u])])
                    for j in range(min(k, t.index.shape[0]))
                ]
                for u in range(t.values.shape[1])
            ],
            "dead": (t.values[0] <= 0).tolist(),
        }
    return Computed(metrics, {"shown": shown, "k": k, "per_image": per_image})


def figures(result: Computed, figure_dir) -> None:
    for name, s in result.data["shown"].items():
        _scatter(name, s, result.metrics["models"][name], figure_dir / f"{name}.png")
        _thumbnail_map(name, s, figure_dir / f"{name}_thumbnails.png")
        _unit_grid(name, s, result.data["k"], figure_dir / f"{name}_units.png")


def _scatter(name: str, s: dict, metrics: dict, path) -> None:
    """The t-SNE and PCA maps side by side, coloured by class."""
    import matplotlib.pyplot as plt

    f, axes = plt.subplots(1, len(s["maps"]), figsize=(6.5 * len(s["maps"]), 6.2))
    for ax, (key, pts) in zip(axes, s["maps"].items(), strict=True):
        sc = ax.scatter(
            pts[:, 0],
            pts[:, 1],
            c=s["labels"],
            cmap="tab10",
            s=3,
            vmin=-0.5,
            vmax=9.5,
            linewidths=0,
        )
        ax.set_title(
            f"{key}: {metrics[f'{key}_knn_accuracy']:.3f} kNN accuracy, "
            f"{metrics[f'{key}_trustworthiness']:.3f} trustworthiness",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    if len(s["classes"]) <= 10:
        cbar = f.colorbar(sc, ax=axes, ticks=range(len(s["classes"])), fraction=0.02)
        cbar.ax.set_yticklabels([c[:16] for c in s["classes"]], fontsize=7)
    else:  # ImageNet's 1000 classes: a colour per class index, no tick per class
        for ax in axes:
            for c in ax.collections:
                c.set_cmap("turbo")
                c.set_clim(0, len(s["classes"]) - 1)
        f.colorbar(sc, ax=axes, fraction=0.02, label="class index")
    f.suptitle(
        f"{name} {s['layer']}: features of {len(s['labels'])} probe images — t-SNE (van der "
        "Maaten & Hinton 2008) and PCA",
        fontsize=10,
    )
    fig.save(f, path)


def _thumbnail_map(name: str, s: dict, path) -> None:
    """The t-SNE map with the chosen thumbnails at their points."""
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    pts, chosen = s["maps"]["t-SNE"], s["thumbnails"]
    f, ax = plt.subplots(figsize=(10, 10))
    ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c="lightgrey")
    zoom = 240 / (s["thumbnail_side"] * s["size"])
    for i, img in chosen.items():
        thumb = OffsetImage(fig.as_rgb(img), zoom=zoom, cmap="gray")
        ax.add_artist(AnnotationBbox(thumb, pts[i], frameon=False, pad=0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name} {s['layer']}: t-SNE map with {len(chosen)} thumbnails", fontsize=10)
    fig.save(f, path)


#: Above this many units, the unit grid is one mosaic image (thousands of panels, as for an
#: fc layer's 4,096 units, take matplotlib minutes and gigabytes).
PANELS_AT_MOST = 256


def _unit_grid(name: str, s: dict, k: int, path) -> None:
    """Every unit of the layer: a tile of its top-k receptive-field crops, tiles in a square
    grid (a panel per unit; one mosaic, dead units greyed, above `PANELS_AT_MOST` units)."""
    import matplotlib.pyplot as plt

    kk = int(np.ceil(np.sqrt(k)))
    crop = 32 if s["size"] <= 64 else 48
    side = kk * crop

    def tile(top) -> np.ndarray:
        out = np.full((side, side, 3), 255, np.uint8)
        for j, (img, box) in enumerate(top):
            r, q = divmod(j, kk)
            rgb = fig.crop_to(img, box, crop)
            out[r * crop : (r + 1) * crop, q * crop : (q + 1) * crop] = np.round(rgb * 255)
        return out

    n_units = len(s["units"])
    cols = int(np.ceil(np.sqrt(n_units)))
    rows = int(np.ceil(n_units / cols))
    title = f"{name} {s['layer']}: top-{k} receptive-field crops of every unit ({n_units} units)"
    if n_units > PANELS_AT_MOST:
        step = side + 2
        mosaic = np.full((rows * step, cols * step, 3), 255, np.uint8)
        for u, top in enumerate(s["units"]):
            r, q = divmod(u, cols)
            t = tile(top)
            if s["dead"][u]:
                t = (t // 2 + 64).astype(np.uint8)
            mosaic[r * step : r * step + side, q * step : q * step + side] = t
        inches = min(40.0, 0.25 * cols)
        f, ax = plt.subplots(figsize=(inches, inches * rows / cols + 0.4))
        ax.imshow(mosaic, interpolation="nearest")
        ax.axis("off")
        ax.set_title(f"units in rows of {cols}, unit 0 top left; dead units greyed", fontsize=8)
        f.suptitle(title, fontsize=10)
        fig.save(f, path)
        return
    f, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for u, (ax, top) in enumerate(zip(axes.ravel(), s["units"], strict=False)):
        ax.imshow(tile(top), interpolation="nearest")
        ax.set_title(f"{u}" + (" (dead)" if s["dead"][u] else ""), fontsize=6, pad=1)
    f.suptitle(title, fontsize=10)
    fig.save(f, path)


def claims(result: Computed) -> dict:
    """Per model, t-SNE minus PCA of each image's kNN correctness and of its trustworthiness
    share, mean over the images with a paired bootstrap interval over them (both maps are of
    the same images); the weakest model decides."""
    seed = int(result.metrics.get("seed", 0))
    out = {}
    per = result.metrics["models"]
    conditions = "; ".join(
        f"{n}: {r['images']} probe images, {r['layer']} ({r['features']} features)"
        for n, r in per.items()
    ) + (
        f"; t-SNE {result.metrics['tsne'].get('iterations', '?')} iterations; the paper: "
        "6,000 MNIST digits, 1,000 iterations, maps compared by eye (PCA is the suite's baseline)"
    )
    for metric in ("knn_accuracy", "trustworthiness"):
        parts, texts = {}, []
        for n, r in per.items():
            pts = result.data["per_image"][n]
            a = np.asarray(pts["t-SNE"][metric], dtype=np.float64)
            b = np.asarray(pts["PCA"][metric], dtype=np.float64)
            ci = stats.bootstrap((a, b), stats.mean_difference, seed=seed, paired=True)
            parts[n] = stats.estimate(float(a.mean() - b.mean()), ci)
            text = (
                f"{n}: t-SNE {a.mean():.3f} vs PCA {b.mean():.3f}, difference "
                f"{a.mean() - b.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
            )
            if metric == "knn_accuracy" and r.get("classes"):
                text += f" (chance {1 / r['classes']:.2f})"
            texts.append(text)
        out[f"tsne_beats_pca_{metric}"] = stats.claim(parts, "; ".join(texts), conditions)
    return out
