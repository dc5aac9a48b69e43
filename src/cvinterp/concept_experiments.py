"""What units detect: the workflow step of Network Dissection (Bau et al. 2017).

`dissection_experiment` dissects the chosen layers of each model, and a randomly initialised copy
of it, on a probe set in the Broden layout (the offline stand-in or the real Broden), and writes
the detector counts by category (both counting rules), the top units with their masks, one
per-unit table per model in the layout of the authors' released results, and the claims for
compare.tsv (the paper profile also against those released results).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import yaml

from cvinterp import figures
from cvinterp.data.broden import BrodenDataset
from cvinterp.methods import dissection as nd
from cvinterp.models import build, layer_path, load_checkpoint
from cvinterp.pipeline import write_json
from cvinterp.runtime import pick_device, seed_everything

HIGH_LEVEL = ("object", "part", "scene", "material")
WEIGHTS = ("trained", "random")


def _random_copy(ckpt: dict, seed: int, device) -> torch.nn.Module:
    """The same architecture with the seeded initialisation (the paper's random-init net)."""
    torch.manual_seed(seed)
    model = build(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], **ckpt["arch_args"])
    return model.to(device).eval()


def _unit_rows(layer: str, weights: str, res: nd.LayerDissection, concepts: nd.Concepts):
    """Per-unit rows in the layout of the authors' released files (unit numbers from 1)."""
    lab = res.labels
    for u in range(len(lab.best)):
        c = lab.best[u]
        row = {
            "layer": layer,
            "weights": weights,
            "unit": u + 1,
            "category": concepts.categories[concepts.category[c]],
            "label": concepts.names[c],
            "score": f"{lab.best_iou[u]:.5f}",
            "threshold": f"{res.thresholds[u]:.6g}",
        }
        for j, cat in enumerate(concepts.categories):
            pc = lab.per_category[u, j]
            scored = pc >= 0 and lab.per_category_iou[u, j] > 0
            row[f"{cat}-label"] = concepts.names[pc] if scored else ""
            row[f"{cat}-iou"] = f"{lab.per_category_iou[u, j]:.5f}"
        yield row


def _write_units(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _summary(res: nd.LayerDissection, concepts: nd.Concepts, threshold: float) -> dict:
    counts = nd.count_detectors(res.labels, concepts, threshold)
    order = np.argsort(-res.labels.best_iou, kind="stable")[:5]
    return {
        "units": len(res.labels.best),
        **counts,
        "best_units": [
            {"unit": int(u) + 1, "label": concepts.names[res.labels.best[u]],
             "iou": round(float(res.labels.best_iou[u]), 4)}
            for u in order
        ],
    }  # fmt: skip


def _released_labels(folder: Path, entry: dict) -> dict[int, tuple[str, float]] | None:
    if not entry.get("per_unit"):
        return None
    with open(folder / entry["per_unit"], newline="") as fh:
        return {int(r["unit"]): (r["label"], float(r["score"])) for r in csv.DictReader(fh)}


def _against_released(
    ours: dict, res: nd.LayerDissection, concepts: nd.Concepts, ref: dict, released: dict,
    folder: Path, threshold: float,
) -> dict:  # fmt: skip
    """Counts against the released ones; per-unit labels unit by unit where the same weights
    were dissected, else the overlap of the sets of detected concepts."""
    entry = released[ref["trained"]]
    out = {"reference": ref["trained"], "network": entry["network"]}
    for rule, key in (("per_category", "unique_per_category"), ("top_label", "unique_top_label")):
        if key in entry:
            out[f"{rule}_unique"] = {
                "ours": ours["trained"][rule]["unique"],
                "released": entry[key],
            }
    if ref.get("random") and "random" in ours:
        rand = released[ref["random"]]
        out["random_per_category_unique"] = {
            "ours": ours["random"]["per_category"]["unique"],
            "released": rand["unique_per_category"],
        }
    labels = _released_labels(folder, entry)
    if labels is not None:
        detected = {concepts.names[c] for c, s in zip(res.labels.best, res.labels.best_iou,
                                                     strict=True) if s > threshold}  # fmt: skip
        theirs = {name for name, s in labels.values() if s > threshold}
        union = detected | theirs
        out["detected_label_jaccard"] = len(detected & theirs) / len(union) if union else 0.0
        if ref.get("same_weights"):
            same = [
                concepts.names[res.labels.best[u - 1]] == name
                for u, (name, s) in labels.items()
                if s > threshold and u - 1 < len(res.labels.best)
            ]
            out["unit_label_agreement"] = float(np.mean(same)) if same else 0.0
    return out


def dissection_experiment(
    models: dict[str, str], *, layers: dict[str, list[str]], probe_dirs: dict[str, str],
    probe_kind: str, sizes: dict[str, int], random_copies: bool, quantile: float,
    iou_threshold: float, batch_size: int, cache_mb: float, top_units: int, top_images: int,
    references: dict, released: str | None, seed: int, device: str, threads: int, workers: int,
    figure_dir: str, tables_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Network Dissection of every (model, layer), trained and (optionally) random-init;
    `models` maps a model name to its checkpoint."""
    seed_everything(seed, threads)
    dev = pick_device(device)
    figure_dir, tables_dir = Path(figure_dir), Path(tables_dir)
    released_doc = yaml.safe_load(Path(released).read_text()) if released else {}
    result: dict = {
        "probe": probe_kind,
        "rules": {
            "top_label": "units whose best concept passes the IoU threshold; unique = distinct "
            "best concepts (the authors' per-unit files)",
            "per_category": "per category, units whose best concept in it passes; unique = "
            "distinct such concepts summed over categories (the paper's figures)",
        },
        "quantile": quantile,
        "iou_threshold": iou_threshold,
        "models": {},
        "claims": {},
    }
    bars: dict = {}
    categories: list[str] = []
    for name, checkpoint in models.items():
        ds = BrodenDataset(probe_dirs[name])
        concepts = nd.Concepts.of(ds)
        categories += [c for c in concepts.categories if c not in categories]
        trained, pre, ckpt = load_checkpoint(checkpoint, dev)
        size = sizes.get(name) or pre.input_size
        if not size:
            raise ValueError(
                f"dissection: model {name} has no fixed input size; set "
                f"experiments.dissection.sizes.{name}"
            )
        paths = {layer: layer_path(ckpt["arch"], layer) for layer in layers[name]}
        nets = {"trained": trained}
        if random_copies:
            nets["random"] = _random_copy(ckpt, seed, dev)
        model_out: dict = {
            "probe": f"{probe_kind}: {ds.root} ({len(ds)} images, {len(concepts)} concepts)",
            "input_size": size,
            "layers": {},
            "seconds": {},
        }
        rows, kept = [], {}
        for weights, net in nets.items():
            res, seconds = nd.dissect(
                net, pre, list(paths.values()), ds, size=size, device=dev,
                quantile=quantile, batch_size=batch_size, workers=workers,
                top_k=top_images, cache_mb=cache_mb, progress=f"{name} ({weights})",
            )  # fmt: skip
            model_out["seconds"][weights] = {k: round(v, 2) for k, v in seconds.items()}
            for layer, path in paths.items():
                summary = _summary(res[path], concepts, iou_threshold)
                model_out["layers"].setdefault(layer, {})[weights] = summary
                rows += list(_unit_rows(layer, weights, res[path], concepts))
                kept[weights, layer] = res[path]
        for layer, ref in (references.get(name) or {}).items():
            model_out["layers"][layer]["released"] = _against_released(
                model_out["layers"][layer], kept["trained", layer], concepts, ref,
                released_doc, Path(released).parent, iou_threshold,
            )  # fmt: skip
        _write_units(tables_dir / f"{name}.csv", rows)
        deepest = layers[name][-1]
        _top_units_figure(
            trained, pre, paths[deepest], kept["trained", deepest], ds, concepts, size,
            top_units, dev, f"{name} {deepest}", figure_dir / f"{name}.png",
        )  # fmt: skip
        bars[name] = {
            layer: {w: model_out["layers"][layer][w] for w in nets} for layer in layers[name]
        }
        result["models"][name] = model_out
        del trained, nets
    _detectors_figure(bars, categories, figure_dir / "detectors.png", probe_kind)
    result["claims"] = _claims(result["models"], layers, probe_kind)
    write_json(metrics, result)


def _weakest(values: dict[str, float], parts: list[str], what: str, missing: str) -> dict:
    """A claim over several models: the weakest model decides."""
    if not values:
        return {"na": missing}
    return {"value": min(values.values()), "ours": "; ".join(parts) + f" ({what})"}


def _claims(per_model: dict, layers: dict[str, list[str]], probe_kind: str) -> dict:
    trained_vs_random, rising, counts, agreement = {}, {}, {}, {}
    for name, out in per_model.items():
        deepest = out["layers"][layers[name][-1]]
        if "random" in deepest:
            trained_vs_random[name] = (
                deepest["trained"]["per_category"]["unique"],
                deepest["random"]["per_category"]["unique"],
            )
        if len(layers[name]) > 1:
            share = []
            for layer in (layers[name][0], layers[name][-1]):
                by_cat = out["layers"][layer]["trained"]["per_category"]["by_category"]
                total = sum(by_cat.values())
                high = sum(v for c, v in by_cat.items() if c in HIGH_LEVEL)
                share.append(high / total if total else None)
            if None not in share:  # a layer without detectors has no share
                rising[name] = (share[0], share[1])
        for layer, entry in out["layers"].items():
            rel = entry.get("released")
            if rel and "per_category_unique" in rel:
                pc = rel["per_category_unique"]
                counts[f"{name} {layer} vs {rel['network']}"] = (pc["ours"], pc["released"])
            if rel and "unit_label_agreement" in rel:
                agreement[f"{name} {layer}"] = rel["unit_label_agreement"]
    claims = {
        "trained_more_detectors": _weakest(
            {n: t - r for n, (t, r) in trained_vs_random.items()},
            [f"{n} {layers[n][-1]}: {t} trained vs {r} random"
             for n, (t, r) in trained_vs_random.items()],
            "unique detectors, per-category rule", "random_copies is off",
        ),
        "high_level_rises_with_depth": _weakest(
            {n: b - a for n, (a, b) in rising.items()},
            [f"{n} {layers[n][0]} {a:.2f} -> {layers[n][-1]} {b:.2f}"
             for n, (a, b) in rising.items()],
            "share of object/part/scene/material among unique detectors",
            "no model with two or more layers that both have detectors",
        ),
    }  # fmt: skip
    if counts:
        ratios = {k: o / r for k, (o, r) in counts.items()}
        worst = max(ratios, key=lambda k: abs(np.log(max(ratios[k], 1e-9))))
        claims["released_unique_detectors"] = {
            "value": ratios[worst],
            "ours": "; ".join(f"{k}: {o} vs {r} released" for k, (o, r) in counts.items())
            + " (per-category rule; the ratio furthest from 1 decides)",
        }
    else:
        claims["released_unique_detectors"] = {
            "na": "the stand-in probe is not Broden: no released result applies"
            if probe_kind == "standin"
            else "no dissected layer names a released result (experiments.dissection.references)"
        }
    if agreement:
        claims["released_unit_labels"] = {
            "value": min(agreement.values()),
            "ours": "; ".join(f"{k}: {v:.2f}" for k, v in agreement.items()),
        }
    else:
        claims["released_unit_labels"] = {
            "na": "no dissected net has the released net's weights (same_weights)"
        }
    return claims


CATEGORY_COLOURS = {
    "color": "#d62728", "texture": "#2ca02c", "material": "#8c564b", "part": "#e377c2",
    "object": "#1f77b4", "scene": "#9467bd",
}  # fmt: skip


def _detectors_figure(bars: dict, categories: list[str], path: Path, probe_kind: str) -> None:
    """Unique detectors per layer by category (the paper's Fig. 5), trained next to random,
    one panel per counting rule."""
    import matplotlib.pyplot as plt

    columns = [(n, layer, w) for n, per in bars.items() for layer, ws in per.items() for w in ws]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.42 * len(columns) + 2), 7), sharex=True)
    x = np.arange(len(columns))
    for ax, rule in zip(axes, ("per_category", "top_label"), strict=True):
        bottom = np.zeros(len(columns))
        for cat in categories:
            h = np.array([bars[n][la][w][rule]["by_category"].get(cat, 0) for n, la, w in columns])
            ax.bar(x, h, bottom=bottom, color=CATEGORY_COLOURS.get(cat), label=cat,
                   hatch=None, edgecolor="white", linewidth=0.3)  # fmt: skip
            bottom += h
        for i, (n, la, w) in enumerate(columns):
            ax.text(i, bottom[i], str(bars[n][la][w][rule]["units"]), ha="center",
                    va="bottom", fontsize=6, color="0.3")  # fmt: skip
        rule_text = {
            "per_category": "unique detectors, per-category rule (the paper's figures)",
            "top_label": "unique detectors, top-label rule (the released per-unit files)",
        }[rule]
        ax.set_ylabel("unique detectors", fontsize=8)
        ax.set_title(rule_text + "; number above a bar: detector units", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set_xticks(x, [f"{n} {la} ({w})" for n, la, w in columns], fontsize=6,
                       rotation=60, ha="right")  # fmt: skip
    fig.suptitle(f"Network Dissection on the {probe_kind} probe (IoU > threshold)", fontsize=9)
    fig.tight_layout()
    figures.save(fig, path)


def _concept_mask(ds: BrodenDataset, concepts: nd.Concepts, index: int, concept: int):
    planes, _ = concepts.planes(ds.item(index, image=False))
    return (planes == concept + 1).any(0) if len(planes) else None


def _top_units_figure(
    model, pre, path: str, res: nd.LayerDissection, ds: BrodenDataset, concepts: nd.Concepts,
    size: int, n_units: int, dev, title: str, out: Path,
) -> None:  # fmt: skip
    """The best units (one per concept) on their top images: the unit's thresholded map lit,
    the rest dimmed, the concept's mask outlined."""
    import matplotlib.pyplot as plt

    items = nd.ProbeItems(ds, concepts, size, masks=False)
    lab = res.labels
    chosen, seen = [], set()
    for u in np.argsort(-lab.best_iou, kind="stable"):
        if lab.best[u] not in seen:
            chosen.append(int(u))
            seen.add(lab.best[u])
        if len(chosen) == n_units:
            break
    k = res.top_images.shape[0]
    fig, axes = plt.subplots(len(chosen), k, figsize=(1.3 * k + 0.2, 1.45 * len(chosen)),
                             squeeze=False)  # fmt: skip
    for r, u in enumerate(chosen):
        idx = [int(i) for i in res.top_images[:, u]]
        images = np.stack([items.image(i) for i in idx])
        maps = nd.unit_maps(model, pre, path, images, [u], (size, size), dev)[:, 0].numpy()
        for c, (i, img, m) in enumerate(zip(idx, images, maps, strict=True)):
            ax = axes[r, c]
            lit = m > res.thresholds[u]
            ax.imshow(figures.as_rgb(img) * np.where(lit[..., None], 1.0, 0.3))
            if lit.any():
                ax.contour(lit.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            mask = _concept_mask(ds, concepts, i, int(lab.best[u]))
            if mask is not None and mask.any():
                ys = np.linspace(0, size - 1, mask.shape[0])
                xs = np.linspace(0, size - 1, mask.shape[1])
                ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors="yellow",
                           linewidths=0.8)  # fmt: skip
            ax.axis("off")
        cat = concepts.categories[concepts.category[lab.best[u]]]
        axes[r, 0].set_title(
            f"unit {u + 1}: {concepts.names[lab.best[u]]} ({cat}), IoU {lab.best_iou[u]:.3f}",
            fontsize=7, loc="left",
        )  # fmt: skip
    fig.suptitle(f"{title}: top units (lit, red outline: unit above its threshold; yellow: "
                 "concept mask)",
                 fontsize=8)  # fmt: skip
    figures.save(fig, out)
