"""dissection: Network Dissection (Bau et al. 2017) of chosen layers of each model, and of a
randomly initialised copy, on a probe set in the Broden layout (the offline stand-in or the real
Broden): detector counts by category under both counting rules, the top units with their concept
masks, one per-unit table per model in the layout of the authors' released results, and (paper
profile) the comparison with those released results."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml

from cvinterp import figures as fig
from cvinterp.data.broden import BrodenDataset
from cvinterp.experiments.common import Computed, Declaration, Model, Probe
from cvinterp.methods import dissection as nd
from cvinterp.models import build_from, layer_path, load_checkpoint, snapshot_models

HIGH_LEVEL = ("object", "part", "scene", "material")
# The headline claims' guards against noise: a ratio's denominator counts at least FLOOR unique
# detectors (a handful of detectors is what random weights reach: 6-15 at the stand-in's deepest
# layers), and a rotation is judged only on a layer with MIN_UNROTATED of them.
FLOOR = 5
MIN_UNROTATED = 10
CATEGORY_COLOURS = {
    "color": "#d62728",
    "texture": "#2ca02c",
    "material": "#8c564b",
    "part": "#e377c2",
    "object": "#1f77b4",
    "scene": "#9467bd",
}


def _check(settings: dict) -> None:
    for m, s in settings["models"].items():
        for layer in s.get("references", {}):
            if layer not in s["layers"]:
                raise ValueError(
                    f"config key 'experiments.dissection.models.{m}.references.{layer}': model "
                    f"'{m}' layer '{layer}' must also be listed in its 'layers'"
                )


DECLARATION = Declaration(
    figures=lambda settings: ["detectors", "headlines", *settings["models"]],
    tables=lambda settings: list(settings["models"]),
    broden=True,
    check=_check,
)


def _random_copy(ckpt: dict, seed: int, device) -> torch.nn.Module:
    """The same architecture with the seeded initialisation (the paper's random-init net)."""
    torch.manual_seed(seed)
    return build_from(ckpt).to(device).eval()


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


def _summary(res: nd.LayerDissection, concepts: nd.Concepts, threshold: float) -> dict:
    counts = nd.count_detectors(res.labels, concepts, threshold)
    order = np.argsort(-res.labels.best_iou, kind="stable")[:5]
    best = [
        {
            "unit": int(u) + 1,
            "label": concepts.names[res.labels.best[u]],
            "iou": round(float(res.labels.best_iou[u]), 4),
        }
        for u in order
    ]
    return {"units": len(res.labels.best), **counts, "best_units": best}


def _released_labels(folder: Path, entry: dict) -> dict[int, tuple[str, float]] | None:
    if not entry.get("per_unit"):
        return None
    with open(folder / entry["per_unit"], newline="") as fh:
        return {int(r["unit"]): (r["label"], float(r["score"])) for r in csv.DictReader(fh)}


def _against_released(
    ours: dict,
    res: nd.LayerDissection,
    concepts: nd.Concepts,
    ref: dict,
    released: dict,
    folder: Path,
    threshold: float,
) -> dict:
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
        best = zip(res.labels.best, res.labels.best_iou, strict=True)
        detected = {concepts.names[c] for c, s in best if s > threshold}
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


def _concept_mask(ds: BrodenDataset, concepts: nd.Concepts, index: int, concept: int):
    planes, _ = concepts.planes(ds.item(index, image=False))
    return (planes == concept + 1).any(0) if len(planes) else None


def _top_units(model, pre, path, res, ds, concepts, size, n_units, device) -> list[dict]:
    """The best units (one per concept) on their top images: the images, the unit's maps at
    the image's size, its threshold and the concept's mask."""
    items = nd.ProbeItems(ds, concepts, size, masks=False)
    lab = res.labels
    chosen, seen = [], set()
    for u in np.argsort(-lab.best_iou, kind="stable"):
        if lab.best[u] not in seen:
            chosen.append(int(u))
            seen.add(lab.best[u])
        if len(chosen) == n_units:
            break
    out = []
    for u in chosen:
        idx = [int(i) for i in res.top_images[:, u]]
        images = np.stack([items.image(i) for i in idx])
        maps = nd.unit_maps(
            model, pre, path, images, [u], (size, size), device, fieldmap=res.fieldmap
        )[:, 0].numpy()
        c = int(lab.best[u])
        out.append(
            {
                "unit": u + 1,
                "label": concepts.names[c],
                "category": concepts.categories[concepts.category[c]],
                "iou": float(lab.best_iou[u]),
                "threshold": float(res.thresholds[u]),
                "images": images,
                "maps": maps,
                "masks": [_concept_mask(ds, concepts, i, c) for i in idx],
            }
        )
    return out


def _units(model, pre, path: str, items: nd.ProbeItems, device) -> int:
    """The number of units (channels) of module `path`, from one probe image."""
    from cvinterp.instrument import Instrument

    with torch.no_grad(), Instrument(model, [path], detach=True, stop_early=True) as ins:
        ins.forward(pre(items.image(0)[None]).to(device))
        return int(ins[path].shape[1])


def _brief(counts: dict) -> dict:
    """Unique detectors under both rules, and detector units (top-label rule), of
    `count_detectors`' counts (or of a layer's `_summary`, which holds them)."""
    return {
        "per_category": counts["per_category"]["unique"],
        "top_label": counts["top_label"]["unique"],
        "units": counts["top_label"]["units"],
    }


def _counts(res: nd.LayerDissection, concepts: nd.Concepts, threshold: float) -> dict:
    return _brief(nd.count_detectors(res.labels, concepts, threshold))


def _run(
    net, label: str, layers: list[str], turns=None, *, pre, ds, paths, seconds, name, **options
) -> dict[str, nd.LayerDissection]:
    """One dissection of `layers` of `net` (and of the rotated bases `turns`); its stage times
    go to `seconds[label]`."""
    res, spent = nd.dissect_layers(
        net,
        pre,
        [paths[la] for la in layers],
        ds,
        rotations=turns,
        progress=f"{name} ({label})",
        **options,
    )
    seconds[label] = {k: round(v, 2) for k, v in spent.items()}
    return res


def compute(
    models: dict[str, Model],
    *,
    dataset: str,
    scoring: str,
    upsample: str | None,
    random_copies: int,
    rotations: list[float],
    snapshots: bool,
    quantile: float,
    iou_threshold: float,
    batch_size: int,
    cache_mb: float,
    top_units: int,
    top_images: int,
    probe: Probe,
    device,
) -> Computed:
    """Network Dissection of every (model, layer), trained and randomly initialised, on each
    model's probe folder (`dataset`: "broden" or the "standin"), each image resized to the
    model's `size` (default its input size), scored as `scoring` counts and `upsample`
    upsamples; and the paper's headline tests on the deepest layer: `random_copies` random
    initialisations, the rotated bases Q^alpha for alpha in `rotations`, and the training
    `snapshots` a checkpoint keeps."""
    upsample = upsample or nd.DEFAULT_UPSAMPLING[scoring]
    rotations = sorted(set(rotations))
    metrics: dict = {
        "probe": dataset,
        "scoring": scoring,
        "upsample": upsample,
        "rules": {
            "top_label": "units whose best concept passes the IoU threshold; unique = distinct "
            "best concepts (the authors' per-unit files)",
            "per_category": "per category, units whose best concept in it passes; unique = "
            "distinct such concepts summed over categories (the paper's figures)",
        },
        "quantile": quantile,
        "iou_threshold": iou_threshold,
        "models": {},
    }
    tables, shown, categories = {}, {}, []
    for name, model in models.items():
        ds = BrodenDataset(model.data["probe"])
        concepts = nd.Concepts.of(ds)
        categories += [c for c in concepts.categories if c not in categories]
        trained, pre, ckpt = load_checkpoint(model.checkpoint, device)
        size = model.settings.get("size") or pre.input_size
        if not size:
            raise ValueError(
                f"dissection: model {name} has no fixed input size; set "
                f"experiments.dissection.models.{name}.size"
            )
        layers = model.settings["layers"]
        paths = {layer: layer_path(ckpt["arch"], layer) for layer in layers}
        deepest = layers[-1]
        out: dict = {
            "probe": f"{dataset}: {ds.root} ({len(ds)} images, {len(concepts)} concepts)",
            "input_size": size,
            "layers": {},
            "seconds": {},
        }

        options = dict(
            size=size,
            device=device,
            quantile=quantile,
            scoring=scoring,
            upsample=upsample,
            batch_size=batch_size,
            workers=probe.threads,
            top_k=top_images,
            cache_mb=cache_mb,
        )
        run = partial(_run, pre=pre, ds=ds, paths=paths, seconds=out["seconds"], name=name)
        turns = {}
        if rotations:
            items = nd.ProbeItems(ds, concepts, size, masks=False)
            q = nd.random_rotation(_units(trained, pre, paths[deepest], items, device), probe.seed)
            turns = {
                f"alpha={a:g}": (paths[deepest], torch.as_tensor(power))
                for a, power in zip(rotations, nd.rotation_powers(q, rotations), strict=True)
            }
        res = run(trained, "trained", layers, turns, **options)
        kept = {("trained", la): res[paths[la]] for la in layers}
        rows = []
        for la in layers:
            out["layers"][la] = {"trained": _summary(kept["trained", la], concepts, iou_threshold)}
            fm = kept["trained", la].fieldmap
            out["layers"][la]["fieldmap"] = None if fm is None else [list(v) for v in fm]
            rows += list(_unit_rows(la, "trained", kept["trained", la], concepts))
        if rotations:
            out["rotations"] = {
                "layer": deepest,
                "seed": probe.seed,
                "alpha": {"0": _brief(out["layers"][deepest]["trained"])}
                | {
                    f"{a:g}": _counts(res[f"alpha={a:g}"], concepts, iou_threshold)
                    for a in rotations
                },
            }
        seeds = {}
        for i in range(random_copies):
            seed = probe.seed + i
            chosen = layers if i == 0 else [deepest]
            res = run(_random_copy(ckpt, seed, device), f"random seed {seed}", chosen, **options)
            if i == 0:
                for la in layers:
                    out["layers"][la]["random"] = _summary(res[paths[la]], concepts, iou_threshold)
                    rows += list(_unit_rows(la, "random", res[paths[la]], concepts))
                seeds[str(seed)] = _brief(out["layers"][deepest]["random"])
            else:
                seeds[str(seed)] = _counts(res[paths[deepest]], concepts, iou_threshold)
        if seeds:
            out["random_seeds"] = {"layer": deepest, "seed": seeds}
        if snapshots and ckpt.get("snapshots"):
            out["snapshots"] = {"layer": deepest, "step": {}}
            for step, net in snapshot_models(ckpt, device):  # one at a time
                res = run(net, f"step {step}", [deepest], **options)
                out["snapshots"]["step"][str(step)] = _counts(
                    res[paths[deepest]], concepts, iou_threshold
                )
            out["snapshots"]["end"] = _brief(out["layers"][deepest]["trained"])
            out["snapshots"]["end_step"] = ckpt["meta"].get("steps")  # the trained net's
        references = model.settings.get("references", {})
        if references:
            released = Path(model.data["released"])
            doc = yaml.safe_load(released.read_text())
            for layer, ref in references.items():
                out["layers"][layer]["released"] = _against_released(
                    out["layers"][layer],
                    kept["trained", layer],
                    concepts,
                    ref,
                    doc,
                    released.parent,
                    iou_threshold,
                )
        tables[name] = rows
        shown[name] = {
            "layer": deepest,
            "units": _top_units(
                trained,
                pre,
                paths[deepest],
                kept["trained", deepest],
                ds,
                concepts,
                size,
                top_units,
                device,
            ),
        }
        metrics["models"][name] = out
        del trained
    data = {
        "tables": tables,
        "shown": shown,
        "categories": categories,
        "layers": {n: m.settings["layers"] for n, m in models.items()},
        "weights": ["trained", "random"] if random_copies else ["trained"],
    }
    return Computed(metrics, data)


def figures(result: Computed, figure_dir) -> None:
    _detectors(result, figure_dir / "detectors.png")
    _headlines(result, figure_dir / "headlines.png")
    for name, s in result.data["shown"].items():
        _top_units_figure(name, s, figure_dir / f"{name}.png")


def tables(result: Computed, tables_dir) -> None:
    """Every unit's best concept, and best concept per category, with IoUs and thresholds."""
    for name, rows in result.data["tables"].items():
        path = Path(tables_dir) / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def _detectors(result: Computed, path: Path) -> None:
    """Unique detectors per layer by category (the paper's Fig. 5), trained next to random,
    one panel per counting rule."""
    import matplotlib.pyplot as plt

    per_model, weights = result.metrics["models"], result.data["weights"]
    columns = [
        (n, layer, w)
        for n, layers in result.data["layers"].items()
        for layer in layers
        for w in weights
    ]

    def counts(n, layer, w):
        return per_model[n]["layers"][layer][w]

    f, axes = plt.subplots(2, 1, figsize=(max(6, 0.42 * len(columns) + 2), 7), sharex=True)
    x = np.arange(len(columns))
    for ax, rule in zip(axes, ("per_category", "top_label"), strict=True):
        bottom = np.zeros(len(columns))
        for cat in result.data["categories"]:
            h = np.array([counts(*c)[rule]["by_category"].get(cat, 0) for c in columns])
            ax.bar(
                x,
                h,
                bottom=bottom,
                color=CATEGORY_COLOURS.get(cat),
                label=cat,
                hatch=None,
                edgecolor="white",
                linewidth=0.3,
            )
            bottom += h
        for i, c in enumerate(columns):
            ax.text(
                i,
                bottom[i],
                str(counts(*c)[rule]["units"]),
                ha="center",
                va="bottom",
                fontsize=6,
                color="0.3",
            )
        rule_text = {
            "per_category": "unique detectors, per-category rule (the paper's figures)",
            "top_label": "unique detectors, top-label rule (the released per-unit files)",
        }[rule]
        ax.set_ylabel("unique detectors", fontsize=8)
        ax.set_title(rule_text + "; number above a bar: detector units", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set_xticks(
        x, [f"{n} {la} ({w})" for n, la, w in columns], fontsize=6, rotation=60, ha="right"
    )
    f.suptitle(
        f"Network Dissection on the {result.metrics['probe']} probe (IoU > threshold; "
        f"{result.metrics['scoring']} scoring, {result.metrics['upsample']} upsampling)",
        fontsize=9,
    )
    f.tight_layout()
    fig.save(f, path)


def _headlines(result: Computed, path: Path) -> None:
    """The paper's three headline tests on each model's deepest layer: unique detectors of the
    rotated bases Q^alpha (Fig. 4), over training (Fig. 10), and trained against random."""
    import matplotlib.pyplot as plt

    per_model = result.metrics["models"]
    f, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    ax = axes[0]
    for name, out in per_model.items():
        alpha = out.get("rotations", {}).get("alpha", {})
        if alpha:
            xs = sorted(alpha, key=float)
            ys = [alpha[a]["per_category"] for a in xs]
            ax.plot([float(a) for a in xs], ys, "o-", label=name)
    ax.set_xlabel("rotation alpha (0: the units, 1: a random basis)", fontsize=8)
    ax.set_title("axis-aligned? (Fig. 4)", fontsize=9)
    ax = axes[1]
    for name, out in per_model.items():
        snaps = out.get("snapshots")
        if snaps:
            keys = sorted(snaps["step"], key=int)
            steps = [int(k) for k in keys]
            end = snaps.get("end_step") or 2 * max(max(steps), 1)
            ys = [snaps["step"][k]["per_category"] for k in keys] + [snaps["end"]["per_category"]]
            ax.plot(steps + [end], ys, "o-", label=f"{name} (last point: trained)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_title("over training (Fig. 10)", fontsize=9)
    ax = axes[2]
    names = list(per_model)
    for i, name in enumerate(names):
        out = per_model[name]
        deepest = result.data["layers"][name][-1]
        ax.bar(i, out["layers"][deepest]["trained"]["per_category"]["unique"], color="0.6")
        seeds = out.get("random_seeds", {}).get("seed", {})
        ys = [v["per_category"] for v in seeds.values()]
        ax.plot([i] * len(ys), ys, "kx", label="random initialisations" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_title("trained (bar) vs random", fontsize=9)
    for ax in axes:
        ax.set_ylabel("unique detectors (per-category rule)", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    f.suptitle(
        f"Network Dissection's headline tests, deepest dissected layer ({result.metrics['probe']} "
        f"probe, {result.metrics['scoring']} scoring)",
        fontsize=9,
    )
    f.tight_layout()
    fig.save(f, path)


def _top_units_figure(name: str, s: dict, path: Path) -> None:
    """The best units on their top images: the unit's thresholded map lit, the rest dimmed, the
    concept's mask outlined."""
    import matplotlib.pyplot as plt

    units = s["units"]
    k = len(units[0]["images"])
    f, axes = plt.subplots(len(units), k, figsize=(1.3 * k + 0.2, 1.45 * len(units)), squeeze=False)
    for r, u in enumerate(units):
        for c, (img, m, mask) in enumerate(zip(u["images"], u["maps"], u["masks"], strict=True)):
            ax = axes[r, c]
            size = m.shape[0]
            lit = m > u["threshold"]
            ax.imshow(fig.as_rgb(img) * np.where(lit[..., None], 1.0, 0.3))
            if lit.any():
                ax.contour(lit.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            if mask is not None and mask.any():
                ys = np.linspace(0, size - 1, mask.shape[0])
                xs = np.linspace(0, size - 1, mask.shape[1])
                ax.contour(
                    xs, ys, mask.astype(float), levels=[0.5], colors="yellow", linewidths=0.8
                )
            ax.axis("off")
        axes[r, 0].set_title(
            f"unit {u['unit']}: {u['label']} ({u['category']}), IoU {u['iou']:.3f}",
            fontsize=7,
            loc="left",
        )
    f.suptitle(
        f"{name} {s['layer']}: top units (lit, red outline: unit above its threshold; yellow: "
        "concept mask)",
        fontsize=8,
    )
    fig.save(f, path)


def _weakest(values: dict[str, float], parts: list[str], what: str, missing: str) -> dict:
    """A claim over several models: the weakest model decides."""
    if not values:
        return {"na": missing}
    return {"value": min(values.values()), "ours": "; ".join(parts) + f" ({what})"}


def _trained_vs_random(per_model: dict, layers: dict) -> dict:
    """Trained unique detectors over the most any random initialisation reaches (at least
    FLOOR)."""
    values, parts = {}, []
    for name, out in per_model.items():
        seeds = out.get("random_seeds", {}).get("seed", {})
        if not seeds:
            continue
        deepest = layers[name][-1]
        trained = out["layers"][deepest]["trained"]["per_category"]["unique"]
        randoms = [v["per_category"] for v in seeds.values()]
        values[name] = trained / max(FLOOR, *randoms)
        parts.append(
            f"{name} {deepest}: {trained} trained vs {'/'.join(map(str, randoms))} random "
            f"(seeds {', '.join(seeds)})"
        )
    return _weakest(
        values,
        parts,
        "unique detectors, per-category rule; value = trained / the most of any random "
        f"initialisation, at least {FLOOR}",
        "random_copies is 0",
    )


def _rotation(per_model: dict) -> dict:
    """Unique detectors of the fully rotated basis over the unrotated one (the weakest model:
    the largest ratio)."""
    values, parts, skipped = {}, [], []
    for name, out in per_model.items():
        alpha = out.get("rotations", {}).get("alpha", {})
        if "1" not in alpha:
            continue
        base, turned = alpha["0"]["per_category"], alpha["1"]["per_category"]
        trend = " -> ".join(f"{v['per_category']}" for v in alpha.values())
        if base < MIN_UNROTATED:
            skipped.append(f"{name}: {base} unrotated detectors, too few to judge a drop")
            continue
        values[name] = turned / base
        parts.append(f"{name} {out['rotations']['layer']}: {trend} at alpha {', '.join(alpha)}")
    if not values:
        return {"na": "; ".join(skipped) or "rotations do not include alpha = 1"}
    worst = max(values, key=values.get)
    return {
        "value": values[worst],
        "ours": "; ".join(parts + skipped)
        + " (unique detectors, per-category rule; value = full rotation / unrotated, the "
        "largest ratio decides)",
    }


def _training(per_model: dict) -> dict:
    """Unique detectors of the trained net over those of its first snapshot (at least
    FLOOR)."""
    values, parts = {}, []
    for name, out in per_model.items():
        snaps = out.get("snapshots")
        if not snaps:
            continue
        steps = snaps["step"]
        first = steps[min(steps, key=int)]["per_category"]
        end = snaps["end"]["per_category"]
        values[name] = end / max(FLOOR, first)
        trend = ", ".join(f"{k}: {steps[k]['per_category']}" for k in sorted(steps, key=int))
        parts.append(
            f"{name} {snaps['layer']} by step: {trend}, end (step {snaps.get('end_step')}): {end}"
        )
    return _weakest(
        values,
        parts,
        f"unique detectors, per-category rule; value = end / first snapshot, at least {FLOOR}",
        "no dissected model keeps training snapshots (models.<model>.train.snapshots; "
        "imported nets have none)",
    )


def claims(result: Computed) -> dict:
    per_model, layers = result.metrics["models"], result.data["layers"]
    rising, counts, agreement = {}, {}, {}
    for name, out in per_model.items():
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
    out = {
        "trained_more_detectors": _trained_vs_random(per_model, layers),
        "rotation_destroys_detectors": _rotation(per_model),
        "detectors_rise_with_training": _training(per_model),
        "high_level_rises_with_depth": _weakest(
            {n: b - a for n, (a, b) in rising.items()},
            [
                f"{n} {layers[n][0]} {a:.2f} -> {layers[n][-1]} {b:.2f}"
                for n, (a, b) in rising.items()
            ],
            "share of object/part/scene/material among unique detectors",
            "no model with two or more layers that both have detectors",
        ),
    }
    if counts:
        ratios = {k: o / r for k, (o, r) in counts.items()}
        worst = max(ratios, key=lambda k: abs(np.log(max(ratios[k], 1e-9))))
        out["released_unique_detectors"] = {
            "value": ratios[worst],
            "ours": "; ".join(f"{k}: {o} vs {r} released" for k, (o, r) in counts.items())
            + " (per-category rule; the ratio furthest from 1 decides)",
        }
    else:
        out["released_unique_detectors"] = {
            "na": "the stand-in probe is not Broden: no released result applies"
            if result.metrics["probe"] == "standin"
            else "no dissected layer names a released result "
            "(experiments.dissection.models.<model>.references)"
        }
    if agreement:
        out["released_unit_labels"] = {
            "value": min(agreement.values()),
            "ours": "; ".join(f"{k}: {v:.2f}" for k, v in agreement.items()),
        }
    else:
        out["released_unit_labels"] = {
            "na": "no dissected net has the released net's weights (same_weights)"
        }
    return out
