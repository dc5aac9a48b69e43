"""dissection: Network Dissection (Bau et al. 2017) of chosen layers of each model, and of a
randomly initialised copy, on a probe set in the Broden layout (the offline stand-in or the real
Broden): detector counts by category under both counting rules, the top units with their concept
masks, one per-unit table per model in the layout of the authors' released results, and (paper
profile) the comparison with those released results. The claims resample each count over the
dissected layer's units (the per-unit detections `compute` keeps) and judge it against a null
measured in the same run."""

from __future__ import annotations

import csv
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml

from cvinterp import figures as fig
from cvinterp import stats
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
    labels: dict[int, tuple[str, float]] | None,
    units: dict | None,
    threshold: float,
) -> dict:
    """Counts against the released ones; per-unit labels unit by unit where the same weights
    were dissected (`units`, from `_released_units`), else the overlap of the sets of detected
    concepts."""
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
    if labels is not None:
        best = zip(res.labels.best, res.labels.best_iou, strict=True)
        detected = {concepts.names[c] for c, s in best if s > threshold}
        theirs = {name for name, s in labels.values() if s > threshold}
        union = detected | theirs
        out["detected_label_jaccard"] = len(detected & theirs) / len(union) if union else 0.0
    if units is not None:
        same = [units["ours"][u] == name for u, name in units["theirs"].items()]
        out["unit_label_agreement"] = float(np.mean(same)) if same else 0.0
    return out


def _released_units(
    res: nd.LayerDissection,
    concepts: nd.Concepts,
    ref: dict,
    labels: dict[int, tuple[str, float]] | None,
    threshold: float,
) -> dict | None:
    """Where the released net itself was dissected (`same_weights`): our best label of every
    unit, and the released label of each released detector unit (0-based units), for the
    unit-by-unit comparison and its null (`_unit_labels`)."""
    if not ref.get("same_weights") or labels is None:
        return None
    ours = [concepts.names[c] for c in res.labels.best]
    theirs = {u - 1: name for u, (name, s) in labels.items() if s > threshold and u - 1 < len(ours)}
    return {"ours": ours, "theirs": theirs}


def _detected(labels: nd.UnitLabels, threshold: float) -> np.ndarray:
    """(U, K) int: each unit's best concept in each category where its IoU passes the
    threshold, else -1: what the per-category rule counts (`nd.count_detectors`), kept per unit
    so that the claims can resample the units."""
    return np.where(labels.per_category_iou > threshold, labels.per_category, -1)


def _described(name: str, model: Model, images: int, concepts: int) -> str:
    """How a dissected model and its probe depart from the paper's (CaffeNet and others trained
    on ImageNet or Places, 63k Broden images, 1,197 concepts)."""
    spec = model.spec
    if spec.get("weights", "train") == "train":
        train = spec.get("train", {})
        net = f"{spec.get('arch')} trained here on {spec.get('dataset')}"
        if "epochs" in train:
            epochs = train["epochs"]
            net += f" ({epochs} epoch{'' if epochs == 1 else 's'})"
    else:
        net = f"{spec.get('arch')} ({spec.get('weights')} weights)"
    return f"{name}: {net}, {images} probe images, {concepts} concepts"


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
    detected, described, same_units = {}, {}, {}
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

        # one feed for every dissection of this model: its images and masks are decoded once
        # where they fit in cache_mb (each dissection reads the probe twice, and a model is
        # dissected trained, random, rotated and at its snapshots)
        feed = nd.ProbeFeed(
            ds,
            concepts,
            size,
            batch_size=batch_size,
            device=device,
            workers=probe.threads,
            cache_mb=cache_mb,
        )
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
            feed=feed,
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
        det = {"categories": list(concepts.categories), "trained": {}, "random": {}}
        det["alpha"], det["step"] = {}, {}
        detected[name] = det
        for la in layers:
            det["trained"][la] = _detected(kept["trained", la].labels, iou_threshold)
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
            det["alpha"] = {"0": det["trained"][deepest]} | {
                f"{a:g}": _detected(res[f"alpha={a:g}"].labels, iou_threshold) for a in rotations
            }
        seeds = {}
        for i in range(random_copies):
            seed = probe.seed + i
            chosen = layers if i == 0 else [deepest]
            res = run(_random_copy(ckpt, seed, device), f"random seed {seed}", chosen, **options)
            det["random"][str(seed)] = _detected(res[paths[deepest]].labels, iou_threshold)
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
                det["step"][str(step)] = _detected(res[paths[deepest]].labels, iou_threshold)
            out["snapshots"]["end"] = _brief(out["layers"][deepest]["trained"])
            out["snapshots"]["end_step"] = ckpt["meta"].get("steps")  # the trained net's
        references = model.settings.get("references", {})
        if references:
            released = Path(model.data["released"])
            doc = yaml.safe_load(released.read_text())
            for layer, ref in references.items():
                labels = _released_labels(released.parent, doc[ref["trained"]])
                dissected = kept["trained", layer]
                units = _released_units(dissected, concepts, ref, labels, iou_threshold)
                if units is not None:
                    same_units[f"{name} {layer}"] = units
                out["layers"][layer]["released"] = _against_released(
                    out["layers"][layer],
                    dissected,
                    concepts,
                    ref,
                    doc,
                    labels,
                    units,
                    iou_threshold,
                )
        tables[name] = rows
        described[name] = _described(name, model, len(ds), len(concepts))
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
        del trained, feed, options, run
    data = {
        "tables": tables,
        "shown": shown,
        "categories": categories,
        "layers": {n: m.settings["layers"] for n, m in models.items()},
        "weights": ["trained", "random"] if random_copies else ["trained"],
        # what the claims resample: per model, each dissected net's detections (`_detected`)
        "detected": detected,
        "described": described,
        "same_units": same_units,
        "seed": probe.seed,
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


# --- the claims ------------------------------------------------------------------------------
#
# Every count of unique detectors (per-category rule) is resampled over the dissected layer's
# units: each unit with its best concept and IoU in each category, N_RESAMPLES resamples with
# replacement, seeded by the probe seed and the count's name (the same run gives the same
# intervals). A resample repeats some units and misses others (about 37%), which by itself
# lowers a count of *distinct* concepts; so the 95% interval is the resamples' percentile
# interval shifted by their mean's shortfall from the observed value (a bias-corrected
# percentile interval): the spread that the choice of units gives, centred on what was measured.


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _category_counts(detected: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unique detectors by category, (B, K), of the units weighted by each row of `weights`
    (B, U): a concept counts where a unit of positive weight detects it."""
    detected = np.asarray(detected)
    k = detected.shape[1]
    units, cats = np.nonzero(detected >= 0)
    if not len(units):
        return np.zeros((len(weights), k), np.int64)
    pairs = np.stack([cats, detected[units, cats]], 1)
    keys, column = np.unique(pairs, axis=0, return_inverse=True)
    hits = np.zeros((detected.shape[0], len(keys)))
    hits[units, column.ravel()] = 1.0
    present = (np.asarray(weights, np.float64) @ hits) > 0
    return np.stack([present[:, keys[:, 0] == j].sum(1) for j in range(k)], 1)


def _by_category(detected: np.ndarray, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Unique detectors by category of a layer (K,), and of N_RESAMPLES resamples of its
    units (B, K)."""
    n = len(detected)
    observed = _category_counts(detected, np.ones((1, n)))[0]
    if not n:
        return observed, np.tile(observed, (stats.N_RESAMPLES, 1))
    b = stats.N_RESAMPLES
    drawn = _rng(seed, key).integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
    weights = np.bincount(drawn.ravel(), minlength=b * n).reshape(b, n)  # times drawn
    return observed, _category_counts(detected, weights)


def _count(detected: np.ndarray) -> int:
    """Unique detectors of a layer (per-category rule), without resampling."""
    return int(_category_counts(detected, np.ones((1, len(detected))))[0].sum())


def _unique(detected: np.ndarray, seed: int, key: str) -> tuple[int, np.ndarray]:
    """Unique detectors of a layer, and of N_RESAMPLES resamples of its units."""
    observed, resampled = _by_category(detected, seed, key)
    return int(observed.sum()), resampled.sum(1)


def _interval(value: float, resampled: np.ndarray) -> tuple[float, float]:
    """The 95% interval of `value` from its resamples over units: their percentile interval
    shifted by their mean's departure from the value (the shortfall that repeated units give a
    count of distinct concepts); the degenerate [v, v] where the resamples do not vary."""
    r = np.asarray(resampled, np.float64)
    r = r[np.isfinite(r)]
    if r.size < 2 or np.ptp(r) == 0:
        return (float(value), float(value))
    tail = 100 * (1 - stats.LEVEL) / 2
    lo, hi = np.percentile(r, [tail, 100 - tail]) - (r.mean() - value)
    return (float(min(lo, value)), float(max(hi, value)))


def _fmt_iv(iv) -> str:
    return f"[{iv[0]:.3g}, {iv[1]:.3g}]"


def _over_null(count: tuple[int, np.ndarray], nulls: list[tuple[int, np.ndarray]]) -> dict:
    """A count of unique detectors against counts of the null nets, in units of the null's
    reach: the count and its interval over the units divided by the upper end of the null's
    interval (the highest over the null nets' intervals), at least FLOOR; the null is the null
    nets' mean count, its interval from the lowest to the highest of their intervals, divided
    alike. A value over t means the trained count's interval lies above t times anything the
    null reaches."""
    value, resampled = count
    iv = _interval(value, resampled)
    null_ivs = [_interval(v, r) for v, r in nulls]
    den = max(FLOOR, max(hi for _, hi in null_ivs))
    return stats.estimate(
        value / den,
        (iv[0] / den, iv[1] / den),
        null=float(np.mean([v for v, _ in nulls])) / den,
        null_interval=(min(lo for lo, _ in null_ivs) / den, max(hi for _, hi in null_ivs) / den),
    )


def _conditions(result: Computed, names, extra: str = "") -> str:
    """How this run departs from the paper's setting: the probe, the nets, and `extra`."""
    probe = result.metrics.get("probe")
    where = {"standin": "stand-in concept probe, not Broden", "broden": "Broden"}.get(probe, probe)
    described = result.data.get("described", {})
    text = "; ".join([where, *(described.get(n, n) for n in names)] + ([extra] if extra else []))
    return text


def _detections(result: Computed, name: str) -> dict:
    return result.data["detected"][name]


def _trained_vs_random(result: Computed) -> dict:
    """Per model, the deepest layer's unique detectors over the reach of its random
    initialisations (`_over_null`; the paper: 61 vs 2)."""
    layers, seed = result.data["layers"], result.data.get("seed", 0)
    parts, texts, names, left_out = {}, [], [], {}
    for name in result.metrics["models"]:
        det = _detections(result, name)
        if not det["random"]:
            left_out[name] = "no random initialisation dissected"
            continue
        deepest = layers[name][-1]
        trained = _unique(det["trained"][deepest], seed, f"{name} {deepest} trained")
        randoms = [
            _unique(a, seed, f"{name} {deepest} random {s}") for s, a in det["random"].items()
        ]
        parts[name] = est = _over_null(trained, randoms)
        names.append(name)
        texts.append(
            f"{name} {deepest}: {trained[0]} trained {_fmt_iv(_interval(*trained))} vs "
            + "/".join(str(v) for v, _ in randoms)
            + f" random (seeds {', '.join(det['random'])}); ratio {est['value']:.2f}"
        )
    copies = {len(_detections(result, n)["random"]) for n in names}
    return stats.claim(
        parts,
        "; ".join(texts) + " (unique detectors, per-category rule; value = trained / the upper "
        f"end of the random initialisations' intervals, at least {FLOOR}; intervals over units)",
        _conditions(result, names, f"{'/'.join(map(str, sorted(copies)))} random initialisations"),
        left_out=left_out if parts else {"random copies": "random_copies is 0"},
    )


def _rotation(result: Computed) -> dict:
    """Per model, unique detectors of the fully rotated deepest layer over the unrotated
    layer's; null: the unrotated layer over an independent resample of itself (1, with the
    spread that resampling the units alone gives)."""
    seed = result.data.get("seed", 0)
    parts, texts, left_out, names = {}, [], {}, []
    for name, out in result.metrics["models"].items():
        alpha = _detections(result, name).get("alpha", {})
        if "1" not in alpha:
            if alpha:
                left_out[name] = "its rotations do not include alpha = 1"
            continue
        layer = out["rotations"]["layer"]
        base, base_r = _unique(alpha["0"], seed, f"{name} {layer} alpha 0")
        turned, turned_r = _unique(alpha["1"], seed, f"{name} {layer} alpha 1")
        trend = " -> ".join(str(_count(a)) for a in alpha.values())
        if base < MIN_UNROTATED:
            left_out[name] = (
                f"{base} unrotated detectors at {layer}, fewer than {MIN_UNROTATED}: too few "
                "to judge a drop"
            )
            continue
        _, again = _unique(alpha["0"], seed, f"{name} {layer} alpha 0 again")
        parts[name] = stats.estimate(
            turned / base,
            _interval(turned / base, turned_r / np.maximum(base_r, 1)),
            null=1.0,
            null_interval=_interval(1.0, again / np.maximum(base_r, 1)),
        )
        names.append(name)
        texts.append(f"{name} {layer}: {trend} at alpha {', '.join(alpha)}")
    if not parts and not left_out:
        return {"na": "rotations do not include alpha = 1", "conditions": _conditions(result, [])}
    return stats.claim(
        parts,
        "; ".join(texts + [f"{n}: {w}" for n, w in left_out.items()])
        + " (unique detectors, per-category rule; value = full rotation / unrotated, interval "
        "over units; null: the unrotated layer over a resample of itself)",
        _conditions(result, names or list(left_out), "one random rotation Q (as the paper)"),
        left_out=left_out,
    )


def _training(result: Computed) -> dict:
    """Per model, the trained deepest layer's unique detectors over the reach of its first
    training snapshot (the initialisation: the null)."""
    seed = result.data.get("seed", 0)
    parts, texts, names, left_out = {}, [], [], {}
    for name, out in result.metrics["models"].items():
        snaps = out.get("snapshots")
        steps = _detections(result, name).get("step", {})
        if not snaps or not steps:
            left_out[name] = "no training snapshots (imported, or trained without snapshots)"
            continue
        layer, first = snaps["layer"], min(steps, key=int)
        end = _unique(_detections(result, name)["trained"][layer], seed, f"{name} {layer} end")
        init = _unique(steps[first], seed, f"{name} {layer} step {first}")
        parts[name] = est = _over_null(end, [init])
        names.append(name)
        trend = ", ".join(f"{k}: {_count(steps[k])}" for k in sorted(steps, key=int))
        texts.append(
            f"{name} {layer} by step: {trend}, end (step {snaps.get('end_step')}): {end[0]} "
            f"{_fmt_iv(_interval(*end))}; ratio {est['value']:.2f}"
        )
    if not parts:
        return {
            "na": "no dissected model keeps training snapshots (models.<model>.train.snapshots; "
            "imported nets have none)",
            "conditions": _conditions(result, []),
        }
    budget = ", ".join(
        f"{n} {result.metrics['models'][n]['snapshots'].get('end_step')} steps" for n in names
    )
    return stats.claim(
        parts,
        "; ".join(texts) + " (unique detectors, per-category rule; value = end / the upper end "
        f"of the first snapshot's interval, at least {FLOOR}; intervals over units)",
        _conditions(result, names, f"training {budget} (the paper: 2.4M iterations)"),
        left_out=left_out,
    )


def _high_share(counts: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The share of high-level categories among unique detectors ((..., K) counts); NaN where
    there are none."""
    total = counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts[..., high].sum(-1) / total, np.nan)


def _depth(result: Computed) -> dict:
    """Per model, the share of object/part/scene/material among the unique detectors, deepest
    minus shallowest layer; interval over the units of both layers (resampled apart); null: the
    units of the two layers pooled and dealt back at random (N_RESAMPLES permutations)."""
    layers, seed = result.data["layers"], result.data.get("seed", 0)
    parts, texts, left_out, names = {}, [], {}, []
    for name in result.metrics["models"]:
        if len(layers[name]) < 2:
            left_out[name] = f"one dissected layer ({layers[name][0]}): no depth to compare"
            continue
        det = _detections(result, name)
        high = np.array([c in HIGH_LEVEL for c in det["categories"]])
        ends = (layers[name][0], layers[name][-1])
        counts = {la: _by_category(det["trained"][la], seed, f"{name} {la} trained") for la in ends}
        empty = [la for la in ends if counts[la][0].sum() == 0]
        if empty:
            left_out[name] = (
                f"{' and '.join(empty)} has no unique detector: its share of high-level ones "
                "is undefined (0/0), not 0"
            )
            continue
        low, deep = (_high_share(counts[la][0], high) for la in ends)
        resampled = _high_share(counts[ends[1]][1], high) - _high_share(counts[ends[0]][1], high)
        pooled = np.concatenate([det["trained"][la] for la in ends])
        is_deep = np.arange(len(pooled)) >= len(det["trained"][ends[0]])
        dealt = _rng(seed, f"{name} depth null").permuted(
            np.tile(is_deep, (stats.N_RESAMPLES, 1)), axis=1
        )
        null = _high_share(_category_counts(pooled, dealt), high) - _high_share(
            _category_counts(pooled, ~dealt), high
        )
        null = null[np.isfinite(null)]
        tail = 100 * (1 - stats.LEVEL) / 2
        parts[name] = stats.estimate(
            deep - low,
            _interval(deep - low, resampled),
            null=float(null.mean()),
            null_interval=tuple(np.percentile(null, [tail, 100 - tail])),
        )
        names.append(name)
        texts.append(f"{name} {ends[0]} {low:.2f} -> {ends[1]} {deep:.2f}")
    return stats.claim(
        parts,
        "; ".join(texts) + " (share of object/part/scene/material among unique detectors, "
        "per-category rule; value = deepest - shallowest, interval over units; null: the two "
        "layers' units permuted between them)",
        _conditions(result, names or list(left_out)),
        left_out=left_out,
    )


def _released_counts(result: Computed) -> dict:
    """Per dissected layer with a released count: ours over the released one, the interval
    over our units (the released count is fixed)."""
    seed = result.data.get("seed", 0)
    parts, texts, names = {}, [], []
    for name, out in result.metrics["models"].items():
        for layer, entry in out["layers"].items():
            rel = entry.get("released")
            if not (rel and "per_category_unique" in rel):
                continue
            theirs = rel["per_category_unique"]["released"]
            ours, resampled = _unique(
                _detections(result, name)["trained"][layer], seed, f"{name} {layer} trained"
            )
            iv = _interval(ours, resampled)
            parts[f"{name} {layer}"] = stats.estimate(
                ours / theirs, (iv[0] / theirs, iv[1] / theirs)
            )
            names.append(name)
            texts.append(f"{name} {layer}: {ours} {_fmt_iv(iv)} vs {theirs} ({rel['network']})")
    if not parts:
        return {
            "na": "the stand-in probe is not Broden: no released result applies"
            if result.metrics["probe"] == "standin"
            else "no dissected layer names a released result "
            "(experiments.dissection.models.<model>.references)",
            "conditions": _conditions(result, []),
        }
    return stats.claim(
        parts,
        "; ".join(texts) + " (unique detectors, per-category rule; value = ours / released, "
        "interval over our units; the layer furthest from 1 decides)",
        _conditions(result, dict.fromkeys(names)),
    )


def _unit_labels(result: Computed) -> dict:
    """Where the released net itself was dissected on Broden: the fraction of the released
    detector units whose released label is our best label of the unit; interval over those
    units; null: our labels permuted across the units (the agreement of labels dealt at
    random with our labels' frequencies)."""
    seed = result.data.get("seed", 0)
    same = result.data.get("same_units", {})
    if result.metrics.get("probe") != "broden" or not same:
        return {
            "na": (
                "the stand-in probe is not Broden: no released net's units are dissected"
                if result.metrics.get("probe") == "standin"
                else "no dissected net carries the released net's weights"
            )
            + " (references.<layer>.same_weights). The released per-unit labels are of Caffe's "
            "CaffeNet conv5 and ResNet-152; the paper profile dissects torchvision's AlexNet and "
            "ResNet-152 (other weights) on Broden and compares the label sets "
            "(detected_label_jaccard). A profile that dissects the released Caffe weights on "
            "Broden with same_weights: true measures it",
            "conditions": _conditions(result, []),
        }
    parts, texts, left_out = {}, [], {}
    tail = 100 * (1 - stats.LEVEL) / 2
    for key, units in same.items():
        theirs = units["theirs"]
        if not theirs:
            left_out[key] = "the released layer has no detector unit"
            continue
        names = sorted(set(units["ours"]) | set(theirs.values()))
        code = {n: i for i, n in enumerate(names)}
        ours = np.array([code[n] for n in units["ours"]])
        which = np.array(sorted(theirs))
        released = np.array([code[theirs[u]] for u in which])
        agree = (ours[which] == released).astype(np.float64)
        dealt = _rng(seed, f"{key} labels null").permuted(
            np.tile(np.arange(len(ours)), (stats.N_RESAMPLES, 1)), axis=1
        )
        null = (ours[dealt[:, which]] == released).mean(1)
        parts[key] = stats.estimate(
            agree.mean(),
            stats.bootstrap(agree, np.mean, seed=seed),
            null=float(null.mean()),
            null_interval=tuple(np.percentile(null, [tail, 100 - tail])),
        )
        texts.append(f"{key}: {int(agree.sum())} of {len(agree)} released detector units")
    return stats.claim(
        parts,
        "; ".join(texts) + " (our best label = the released label; interval over the released "
        "detector units; null: our labels permuted across units)",
        _conditions(result, dict.fromkeys(k.split(" ")[0] for k in same)),
        left_out=left_out,
    )


def claims(result: Computed) -> dict:
    return {
        "trained_more_detectors": _trained_vs_random(result),
        "rotation_destroys_detectors": _rotation(result),
        "detectors_rise_with_training": _training(result),
        "high_level_rises_with_depth": _depth(result),
        "released_unique_detectors": _released_counts(result),
        "released_unit_labels": _unit_labels(result),
    }
