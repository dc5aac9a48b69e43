"""ablation: every unit of chosen layers zeroed in turn (Zhou et al. 2018). The overall accuracy
and every class's accuracy on labelled images (a trained net's test split; an ImageNet net's
validation folder, which must be given), the drops against three predictors of a unit's
importance (its class selectivity, the L1 norm of its incoming weights, its class correlation),
and units ablated cumulatively in order of importance (cross-fitted: ranked on one half of the
images, scored on the other) and at random. The per-image outcomes of
every single-unit ablation give the null of class specificity: the class drops recomputed under
shuffled labels of the evaluation images."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from scipy.stats import t as student_t
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.data.images import DataError
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Loaded,
    Model,
    Probe,
    imagenet_folder,
    imagenet_nets,
    load,
)
from cvinterp.methods import ablation as ab
from cvinterp.models import layer_path

# an ImageNet net is ablated on labelled ImageNet images only (the offline photo crops have no
# ImageNet classes)
DECLARATION = Declaration(
    figures=lambda s: [f"{m}_{layer}" for m, ms in s["models"].items() for layer in ms["layers"]],
    needs_imagenet=imagenet_nets,
)

CLAIMS = (
    "single_unit_overall_drop_small",
    "class_drop_much_larger",
    "selectivity_predicts_class_drop",
    "unit_hurts_its_selective_class_most",
    "importance_order_beats_random",
    "l1_norm_predicts_class_drop",
)


def labelled(m: Loaded, probe: Probe, images: int | None):
    """(images, n) of labelled images: the test split, or the ImageNet validation folder."""
    if m.imagenet:
        folder = probe.datasets.get("imagenet_val", {}).get("dir")
        if not folder:
            raise DataError(
                f"ablation of {m.name} needs labelled ImageNet images: set "
                "datasets.imagenet_val.dir to your ImageNet validation folder (class "
                "sub-folders; licence-gated, never downloaded)"
            )
        data = imagenet_folder(folder, m.size, images, m.pre, m.arch, probe)
        return data, len(data)
    n = len(m.images) if images is None else min(images, len(m.images))
    return m.images, n


def _batches(data, pre, n: int, batch_size: int, device):
    """(input, label) batches of the first n images, in the data's order (for the ImageNet
    folder its stratified sample's, so any first n are stratified too)."""
    labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.int64)
    seen = 0
    for x in data.batches(pre, batch_size, device):
        x = x[: n - seen]
        yield x, labels[seen : seen + len(x)]
        seen += len(x)
        if seen >= n:
            return


#: Shufflings of the evaluation images' labels in the class-specificity null (each a matrix
#: product over the stored per-image outcomes: milliseconds).
LABEL_PERMUTATIONS = 20

PREDICTORS = {
    "selectivity": "class selectivity",
    "l1_norm": "weight L1 norm",
    "class_correlation": "class correlation",
}


def _spearman(a, b) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def ablate_layer(
    m: Loaded,
    path: str,
    data,
    n: int,
    *,
    batch_size: int,
    group: int,
    steps: int,
    random_orders: int,
    cache_mb: float,
    seed: int,
    device,
) -> dict:
    """Every unit of one layer zeroed in turn, the predictors of each unit's importance and
    their Spearman correlations with its drops, and the cumulative curves.

    The predictors, per unit: class selectivity; the L1 norm of its incoming weights (its
    filter, bias excluded); and its class correlation, the largest over the classes with
    images of the Pearson correlation over the images between its activation (spatial mean)
    and the intact model's predicted probability of that class."""
    engine = ab.Ablation(m.model, path, device)
    bar = tqdm(total=n, desc=f"{m.name} {path}: features", mininterval=5)
    engine.cache(_batches(data, m.pre, n, batch_size, device), cache_mb, n, progress=bar)
    bar.close()
    units = engine.units
    totals = engine.class_totals().double()
    base, base_right = engine.correct(torch.ones(1, units, dtype=torch.bool), per_image=True)
    base = base[0].double()
    bar = tqdm(total=n, desc=f"{m.name} {path}: ablate {units} units", mininterval=5)
    correct, right = engine.correct(ab.single_units(units), group=group, progress=bar,
                                    per_image=True)  # fmt: skip
    correct = correct.double()
    bar.close()  # correct: (units, classes); right: (units, images)
    seen = totals > 0
    base_class = base[seen] / totals[seen]
    class_acc = correct[:, seen] / totals[seen]
    overall = (base.sum() - correct.sum(1)) / totals.sum()  # accuracy drop per unit
    class_drop = base_class[None] - class_acc  # (units, seen classes)
    worst = class_drop.argmax(1)
    max_drop = class_drop.max(1).values
    means = engine.class_means()[seen]
    sel = ab.selectivity(means)
    top = means.argmax(0).cpu().numpy()  # each unit's most selective class (a column)
    overall, max_drop = overall.cpu().numpy(), max_drop.cpu().numpy()
    class_ids = torch.nonzero(seen).flatten().cpu().numpy()
    # the null of class specificity: the same per-image outcomes under shuffled labels
    delta = base_right.to(torch.float32) - right.to(torch.float32)
    hits = ab.selective_hits(class_drop.cpu().numpy(), top)
    null_max, null_hits = ab.label_permutation_null(
        delta.numpy(), engine.labels().numpy(), class_ids, top, LABEL_PERMUTATIONS, seed
    )
    l1, corr, no_l1 = ab.unit_predictors(engine, m.model, path, torch.as_tensor(class_ids))
    predictors = {"selectivity": sel, "l1_norm": l1, "class_correlation": corr}

    order = np.argsort(-overall, kind="stable")  # the units that cost most, for the figure
    cumulative = cumulative_curves(
        engine, base_right[0], right, steps=steps, random_orders=random_orders, group=group,
        seed=seed,
    )  # fmt: skip
    return {
        "units": units,
        "images": n,
        "features_on_host": engine.on_host,
        "linear_update": engine.linear_update,
        "base_accuracy": float(base.sum() / totals.sum()),
        "overall_drop": overall.tolist(),
        "max_class_drop": max_drop.tolist(),
        "max_class": [int(class_ids[i]) for i in worst.cpu().numpy()],
        "selectivity": sel.tolist(),
        "l1_norm": None if no_l1 else l1.tolist(),
        **({"l1_norm_unavailable": no_l1} if no_l1 else {}),
        "class_correlation": corr.tolist(),
        "classes": len(class_ids),
        "seed": seed,
        "selective_class": [int(class_ids[i]) for i in top],
        "selective_class_hit": hits.tolist(),
        "label_permutations": LABEL_PERMUTATIONS,
        "null_max_class_drop": null_max.tolist(),
        "null_selective_class_hit": null_hits.tolist(),
        "summary": {
            "images": n,
            "mean_overall_drop": float(overall.mean()),
            "mean_abs_overall_drop": float(np.abs(overall).mean()),
            "max_overall_drop": float(overall.max()),
            "mean_max_class_drop": float(max_drop.mean()),
            "null_mean_max_class_drop": float(null_max.mean()),
            "spearman_selectivity_overall": _spearman(sel, overall),
            "spearman_selectivity_class": _spearman(sel, max_drop),
            # Spearman of each predictor against the overall drop and the largest class drop
            "predictors": {
                k: {"overall": _spearman(v, overall), "class": _spearman(v, max_drop)}
                for k, v in predictors.items()
            },
        },
        "most_important": [
            {
                "unit": int(u),
                "overall_drop": float(overall[u]),
                "classes": [
                    (int(class_ids[c]), float(class_drop[u, c]))
                    for c in class_drop[u].argsort(descending=True)[:3].cpu().numpy()
                ],
            }
            for u in order[:5]
        ],
        "cumulative": cumulative,
    }


def cross_fit_folds(n: int, seed: int) -> np.ndarray:
    """(n,) the fold (0 or 1) of each evaluation image: a seeded split into two halves."""
    fold = np.ones(n, dtype=np.int64)
    fold[np.random.default_rng([seed, 2018]).permutation(n)[: n // 2]] = 0
    return fold


def cumulative_curves(
    engine,
    base_right: torch.Tensor,
    right: torch.Tensor,
    *,
    steps: int,
    random_orders: int,
    group: int,
    seed: int,
) -> dict:
    """Units zeroed cumulatively, most important first, against random orders, cross-fitted.

    Ranking the units by their single-unit drop on the very images the curve is scored on
    would put first the units whose removal happened to flip these images (chance flips
    included): that curve falls faster than a random one even when no unit matters. So the
    images are split in two seeded halves; the units are ranked by their single-unit drop
    (`base_right` (images,) and `right` (units, images), the per-image correctness of the
    intact and of each single-unit ablation) on one half and the curve is scored on the other,
    both ways round: every image is scored once, by the ranking of the half it is not in. The
    random orders are scored on every image. Costs what one curve on all the images costs
    (`Ablation.correct` runs each ranking on the other half's images only).

    `by_importance` and `random` (accuracy per step) are over all the images; `cross_fit`
    keeps, per image, its correct counts over the steps that zero some units but not all
    (the importance curve's, and the random orders' summed), for the claim's interval."""
    units = engine.units
    n = len(base_right)
    k_steps = sorted({int(round(v)) for v in np.linspace(0, units, steps + 1)})
    fold = cross_fit_folds(n, seed)
    lost = base_right.to(torch.float64)[None] - right.to(torch.float64)  # (units, images)
    importance = torch.zeros(len(k_steps), n, dtype=torch.bool)
    for rank_on in (0, 1):
        ranked, scored = fold == rank_on, fold != rank_on
        if not scored.any():
            continue
        drop = lost[:, torch.as_tensor(ranked)].sum(1).numpy() / max(int(ranked.sum()), 1)
        keep = ab.cumulative(np.argsort(-drop, kind="stable"), units, k_steps)
        _, got = engine.correct(keep, group=group, per_image=True, images=torch.as_tensor(scored))
        importance[:, torch.as_tensor(scored)] = got
    rng = np.random.default_rng(seed)
    keep = [ab.cumulative(rng.permutation(units), units, k_steps) for _ in range(random_orders)]
    if keep:
        _, random = engine.correct(torch.cat(keep), group=group, per_image=True)
        random = random.view(random_orders, len(k_steps), n)
    else:
        random = torch.zeros(0, len(k_steps), n, dtype=torch.bool)
    acc = importance.sum(1).double().numpy() / n
    random_acc = random.sum(2).double().numpy() / n
    middle = torch.as_tensor([0 < k < units for k in k_steps])
    return {
        "removed": k_steps,
        "by_importance": acc.tolist(),
        "random_mean": random_acc.mean(0).tolist() if random_orders else [],
        "random": random_acc.tolist(),
        "importance_ranking": (
            "cross-fitted: units ranked by their single-unit overall drop on one seeded half "
            "of the images, the curve scored on the other half, both ways round"
        ),
        "cross_fit": {
            "folds": 2,
            "fold_images": [int((fold == 0).sum()), int((fold == 1).sum())],
            "steps": int(middle.sum()),
            "importance_right": importance[middle].sum(0).tolist(),
            "random_right": random[:, middle].sum((0, 1)).tolist(),
        },
    }


def compute(
    models: dict[str, Model],
    *,
    images: int | None,
    batch_size: int,
    group: int,
    steps: int,
    random_orders: int,
    cache_mb: float,
    probe: Probe,
    device,
) -> Computed:
    """Zhou et al. 2018 for every listed layer of every model."""
    metrics: dict = {"models": {}}
    classes = {}
    for name, model in models.items():
        m = load(model, probe, device)
        data, n = labelled(m, probe, images)
        train = (m.spec or {}).get("train") or {}
        out = metrics["models"][name] = {
            "data": getattr(data, "description", ""),
            "arch": m.arch,
            "epochs": train.get("epochs"),
            "layers": {},
        }
        for layer in model.settings["layers"]:
            out["layers"][layer] = ablate_layer(
                m,
                layer_path(m.arch, layer),
                data,
                n,
                batch_size=batch_size,
                group=group,
                steps=steps,
                random_orders=random_orders,
                cache_mb=cache_mb,
                seed=probe.seed,
                device=device,
            )
        classes[name] = [str(c) for c in m.classes]
    return Computed(metrics, {"classes": classes})


def figures(result: Computed, figure_dir) -> None:
    for name, out in result.metrics["models"].items():
        for layer, r in out["layers"].items():
            _figure(
                r,
                result.data["classes"][name],
                f"{name} {layer}",
                figure_dir / f"{name}_{layer}.png",
            )


def _figure(r: dict, classes: list[str], title: str, path) -> None:
    """Histograms of the overall and largest class drops, the predictors' Spearman correlations
    with both, selectivity against both drops and class correlation against the largest class
    drop, the most important units, and the cumulative curves."""
    import matplotlib.pyplot as plt

    overall = 100 * np.array(r["overall_drop"])
    max_drop = 100 * np.array(r["max_class_drop"])
    sel = np.array(r["selectivity"])
    s = r["summary"]
    f, axes = plt.subplots(2, 4, figsize=(17, 7.2))
    ax = axes[0, 0]
    ax.hist(overall, bins=30, color="0.4")
    ax.set(xlabel="overall accuracy drop (points)", ylabel="units")
    ax.set_title("one unit zeroed: overall accuracy", fontsize=10)
    ax = axes[0, 1]
    ax.hist(max_drop, bins=30, color="#d62728")
    if "null_max_class_drop" in r:
        null = 100 * float(np.mean(r["null_max_class_drop"]))
        ax.axvline(null, color="k", ls="--", lw=1, label=f"shuffled labels (mean {null:.1f})")
        ax.axvline(max_drop.mean(), color="#d62728", lw=1, label=f"mean {max_drop.mean():.1f}")
        ax.legend(fontsize=7)
    ax.set(xlabel="largest class accuracy drop (points)", ylabel="units")
    ax.set_title("one unit zeroed: its most affected class", fontsize=10)
    _predictor_bars(axes[0, 2], s.get("predictors"))
    rho_overall, rho_class = s["spearman_selectivity_overall"], s["spearman_selectivity_class"]
    panels = [
        (axes[1, 0], sel, "class selectivity", overall, rho_overall, "overall drop"),
        (axes[1, 1], sel, "class selectivity", max_drop, rho_class, "largest class drop"),
    ]
    if "class_correlation" in r and "predictors" in s:
        rho = s["predictors"]["class_correlation"]["class"]
        corr = np.array(r["class_correlation"])
        panels.append((axes[1, 2], corr, "class correlation", max_drop, rho, "largest class drop"))
    else:
        axes[1, 2].axis("off")
    for ax, x, name, y, rho, what in panels:
        ax.scatter(x, y, s=8, alpha=0.7)
        ax.set(xlabel=name, ylabel=f"{what} (points)")
        ax.set_title(f"{name} vs {what}:\nSpearman {rho:+.2f}", fontsize=10)
    ax = axes[0, 3]
    ax.axis("off")
    lines = ["most important units (overall drop)", "and the classes they hit hardest:"]
    for u in r["most_important"]:
        hit = ", ".join(f"{classes[c]} {100 * d:+.1f}" for c, d in u["classes"])
        lines.append(f"unit {u['unit']}: {100 * u['overall_drop']:+.2f} overall; {hit}")
    ax.text(0, 1, "\n".join(lines), va="top", fontsize=7, family="monospace", wrap=True)
    ax = axes[1, 3]
    c = r["cumulative"]
    label = "most important first"
    if "cross_fit" in c:
        label += "\n(ranked on the other half of the images)"
    ax.plot(c["removed"], 100 * np.array(c["by_importance"]), "o-", label=label)
    if c["random_mean"]:
        ax.plot(c["removed"], 100 * np.array(c["random_mean"]), "s--", label="random order (mean)")
    for curve in c.get("random", []):
        ax.plot(c["removed"], 100 * np.array(curve), color="C1", lw=0.5, alpha=0.5)
    ax.set(xlabel="units zeroed", ylabel="accuracy (%)")
    ax.set_title("cumulative ablation", fontsize=10)
    ax.legend(fontsize=7)
    f.suptitle(
        f"Unit ablation, {title}: {r['units']} units, {r['images']} images, base accuracy "
        f"{100 * r['base_accuracy']:.1f}%",
        fontsize=10,
    )
    f.tight_layout()
    fig.save(f, path)


def _predictor_bars(ax, predictors: dict | None) -> None:
    """Grouped bars: each predictor's Spearman rho with the overall and the largest class drop
    (n/a where a rank order is missing)."""
    ax.set_title("which attribute predicts a unit's importance?", fontsize=10)
    if not predictors:
        ax.axis("off")
        ax.text(0.5, 0.5, "predictors not computed", ha="center", va="center")
        return
    x = np.arange(len(PREDICTORS))
    for i, (what, label, colour) in enumerate(
        (("overall", "overall drop", "0.4"), ("class", "largest class drop", "#d62728"))
    ):
        rho = np.array([predictors[k][what] for k in PREDICTORS], dtype=float)
        pos = x + (i - 0.5) * 0.38
        ax.bar(pos, np.nan_to_num(rho), 0.38, color=colour, label=label)
        for px, v in zip(pos, rho, strict=True):
            text, y = ("n/a", 0.0) if np.isnan(v) else (f"{v:+.2f}", v)
            va = "bottom" if y >= 0 else "top"
            ax.text(px, y, text, ha="center", va=va, fontsize=7)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [PREDICTORS[k].replace(" ", "\n", 1) for k in PREDICTORS], fontsize=8)
    ax.set(ylim=(-1.1, 1.1), ylabel="Spearman rho with the drop")
    ax.legend(fontsize=7, loc="lower right")


#: Permutations of the units in the null of a correlation over units.
UNIT_PERMUTATIONS = 1000

#: The paper's setting, for the `conditions` of every claim.
PAPER_SETTING = "paper: AlexNet / VGG16 conv5 on ImageNet / Places validation, 1,000 / 365 classes"


def _layers(result: Computed) -> dict[str, dict]:
    return {
        f"{n} {layer}": r
        for n, o in result.metrics["models"].items()
        for layer, r in o["layers"].items()
    }


def _conditions(result: Computed, extra: str = "") -> str:
    """How this run departs from the paper: its models, layers, images and classes."""
    runs = []
    for n, o in result.metrics["models"].items():
        layers = o["layers"]
        if not layers:
            continue
        r = next(iter(layers.values()))
        net = ", ".join(
            x
            for x in (
                o.get("arch"),
                f"{o['epochs']} epochs" if o.get("epochs") else None,
                f"accuracy {100 * r['base_accuracy']:.0f}%" if "base_accuracy" in r else None,
            )
            if x
        )
        net = f" ({net})" if net else ""
        data = f" of the {o['data']}" if o.get("data") else " images"
        runs.append(
            f"{n}{net} {', '.join(layers)}: {r['images']}{data}, {r.get('classes', '?')} classes"
        )
    return "; ".join(runs) + f" ({PAPER_SETTING}){extra}"


def _seed(r: dict) -> int:
    return int(r.get("seed", 0))


def _permutation_null(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, tuple]:
    """Spearman's rho of x with y under `UNIT_PERMUTATIONS` shufflings of the units: the
    null's mean and its central 95% range."""
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((UNIT_PERMUTATIONS, len(y))), axis=1)
    rho = stats.spearman(np.broadcast_to(x, perm.shape), y[perm], axis=-1)
    lo, hi = np.percentile(rho, [2.5, 97.5])
    return float(rho.mean()), (float(lo), float(hi))


def _rho_estimate(x, y, seed: int) -> dict:
    """Spearman's rho over the units, its paired bootstrap interval over the units, and the
    permuted-units null."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    null, null_interval = _permutation_null(x, y, seed)
    return stats.estimate(
        float(stats.spearman(x, y)),
        stats.bootstrap((x, y), stats.spearman, seed=seed, paired=True),
        null=null,
        null_interval=null_interval,
    )


def _constant(*arrays) -> bool:
    return any(np.ptp(np.asarray(a, dtype=float)) == 0 for a in arrays)


def _overall_drop_claim(result: Computed, layers: dict) -> dict:
    parts = {}
    for k, r in layers.items():
        pts = 100 * np.asarray(r["overall_drop"], dtype=float)
        parts[k] = stats.estimate(pts.mean(), stats.bootstrap(pts, seed=_seed(r)))
    ours = "; ".join(
        f"{k}: mean {parts[k]['value']:.2f} pts, max {100 * max(r['overall_drop']):.2f}"
        for k, r in layers.items()
    )
    return stats.claim(parts, ours, _conditions(result))


def _ratio(floor: float):
    """mean(class drop) / max(mean |overall change|, floor), vectorised for the bootstrap."""

    def statistic(a, b, axis=-1):
        return np.mean(a, axis=axis) / np.maximum(np.mean(b, axis=axis), floor)

    return statistic


def _class_drop_claim(result: Computed, layers: dict) -> dict:
    parts, texts = {}, []
    for k, r in layers.items():
        floor = 1 / r["images"]
        f = _ratio(floor)
        top = np.asarray(r["max_class_drop"], dtype=float)
        null = np.asarray(r["null_max_class_drop"], dtype=float)
        size = np.abs(np.asarray(r["overall_drop"], dtype=float))
        seed = _seed(r)
        parts[k] = stats.estimate(
            float(f(top, size)),
            stats.bootstrap((top, size), f, seed=seed, paired=True),
            null=float(f(null, size)),
            null_interval=stats.bootstrap((null, size), f, seed=seed, paired=True),
        )
        texts.append(
            f"{k}: mean largest class drop {100 * top.mean():.2f} pts = "
            f"{parts[k]['value']:.1f}x the mean |overall change| (shuffled labels: "
            f"{100 * null.mean():.2f} pts = {parts[k]['null']:.1f}x)"
        )
    extra = f"; null: {next(iter(layers.values()))['label_permutations']} label shufflings"
    return stats.claim(parts, "; ".join(texts), _conditions(result, extra))


def _selectivity_claim(result: Computed, layers: dict) -> dict:
    """Two parts per layer, both > 0: rho(selectivity, largest class drop) clear of the
    permuted-units null, and its excess over rho(selectivity, overall drop) (paired bootstrap
    over the units)."""
    parts, texts, left_out = {}, [], {}
    for k, r in layers.items():
        sel = np.asarray(r["selectivity"], dtype=float)
        top = np.asarray(r["max_class_drop"], dtype=float)
        overall = np.asarray(r["overall_drop"], dtype=float)
        if _constant(sel, top, overall):
            left_out[k] = "selectivities or drops all equal: no rank order"
            continue
        seed = _seed(r)
        parts[f"{k}: rho(sel, class drop)"] = _rho_estimate(sel, top, seed)

        def gap(s, c, o, axis=-1):
            return stats.spearman(s, c, axis=axis) - stats.spearman(s, o, axis=axis)

        parts[f"{k}: rho(sel, class drop) - rho(sel, overall drop)"] = stats.estimate(
            float(gap(sel, top, overall)),
            stats.bootstrap((sel, top, overall), gap, seed=seed, paired=True),
        )
        s = r["summary"]
        texts.append(
            f"{k}: rho(sel, class drop) {s['spearman_selectivity_class']:+.2f} vs "
            f"rho(sel, overall) {s['spearman_selectivity_overall']:+.2f}" + _other_predictors(s)
        )
    return stats.claim(parts, "; ".join(texts), _conditions(result), left_out=left_out)


def _l1_claim(result: Computed, layers: dict) -> dict:
    parts, texts, left_out = {}, [], {}
    for k, r in layers.items():
        if r.get("l1_norm") is None:
            left_out[k] = r.get("l1_norm_unavailable", "no weight L1 norm")
            continue
        l1 = np.asarray(r["l1_norm"], dtype=float)
        top = np.asarray(r["max_class_drop"], dtype=float)
        if _constant(l1, top):
            left_out[k] = "L1 norms or class drops all equal: no rank order"
            continue
        parts[k] = _rho_estimate(l1, top, _seed(r))
        rho_overall = float(stats.spearman(l1, np.asarray(r["overall_drop"], dtype=float)))
        texts.append(
            f"{k}: rho(L1, class drop) {parts[k]['value']:+.2f}, "
            f"rho(L1, overall drop) {rho_overall:+.2f}"
        )
    return stats.claim(parts, "; ".join(texts), _conditions(result), left_out=left_out)


def _selective_class_claim(result: Computed, layers: dict) -> dict:
    parts, texts = {}, []
    for k, r in layers.items():
        hits = np.asarray(r["selective_class_hit"], dtype=float)
        null = np.asarray(r["null_selective_class_hit"], dtype=float)
        seed = _seed(r)
        parts[k] = stats.estimate(
            hits.mean(),
            stats.bootstrap(hits, seed=seed),
            null=null.mean(),
            null_interval=stats.bootstrap(null, seed=seed),
        )
        texts.append(
            f"{k}: {100 * hits.mean():.0f}% of {len(hits)} units (shuffled labels "
            f"{100 * null.mean():.0f}%, 1/classes {100 / r['classes']:.0f}%)"
        )
    extra = f"; null: {next(iter(layers.values()))['label_permutations']} label shufflings"
    return stats.claim(parts, "; ".join(texts), _conditions(result, extra))


def _middle(c: dict) -> np.ndarray:
    """The cumulative steps that zero some units but not all."""
    removed = np.asarray(c["removed"])
    return (removed > 0) & (removed < removed.max())


def _importance_gap(c: dict) -> np.ndarray | None:
    """Per random order: the accuracy (points) by random order minus by importance, averaged
    over every step that zeroes some units but not all (the area between the two curves);
    None without such a step."""
    steps = _middle(c)
    if not steps.any():
        return None
    random = np.asarray(c["random"], dtype=float).reshape(-1, len(steps))[:, steps]
    importance = np.asarray(c["by_importance"], dtype=float)[steps]
    return 100 * (random - importance[None]).mean(1)


def _gap_interval(image_gap: np.ndarray, order_gap: np.ndarray) -> tuple[float, float]:
    """95% t-interval of the mean gap, combining its sources of noise: the images scored (the
    variance over images of each image's gap, random orders' mean minus the importance curve,
    paired) and the orders (the variance s2 over the random orders of their gaps), with
    Welch-Satterthwaite's degrees of freedom (few orders give few, hence a wide interval: a
    percentile bootstrap over 2-4 orders undercovers). The orders count s2 / orders for the
    random orders' mean plus s2 once more for the importance order: ranked on the other half
    of the images, it carries that half's noise like one more draw of an order (with no unit
    effect it is just that; without this term a simulation covered 0 in 86% of 160 runs)."""
    value = float(order_gap.mean())
    a = image_gap.var(ddof=1) / len(image_gap) if len(image_gap) > 1 else 0.0
    b = order_gap.var(ddof=1) * (1 / len(order_gap) + 1)
    if a + b == 0:
        return (value, value)
    parts = [v**2 / (k - 1) for v, k in ((a, len(image_gap)), (b, len(order_gap))) if v > 0]
    df = (a + b) ** 2 / sum(parts)
    half = float(student_t.ppf(0.5 + stats.LEVEL / 2, df)) * np.sqrt(a + b)
    return (value - half, value + half)


def _cumulative_claim(result: Computed, layers: dict) -> dict:
    parts, texts, left_out = {}, [], {}
    for k, r in layers.items():
        c = r["cumulative"]
        orders = len(c.get("random") or [])
        fit = c.get("cross_fit")
        gaps = _importance_gap(c) if orders else None
        if fit is None:
            left_out[k] = (
                "no cross-fitted curves (the units ranked on the images they are scored on): "
                "rerun the experiment"
            )
        elif orders < 2:
            left_out[k] = f"{orders} random order(s): at least 2 are needed for an interval"
        elif gaps is None or not fit["steps"]:
            left_out[k] = "no cumulative step zeroes some units but not all"
        if k in left_out:
            continue
        steps = fit["steps"]
        image_gap = 100 * (
            np.asarray(fit["random_right"], dtype=float) / (orders * steps)
            - np.asarray(fit["importance_right"], dtype=float) / steps
        )
        parts[k] = stats.estimate(gaps.mean(), _gap_interval(image_gap, gaps))
        texts.append(
            f"{k}: most important first (ranked on the other half of the images) lower by "
            f"{gaps.mean():.2f} pts on average over the cumulative steps ({orders} random "
            f"orders, {len(image_gap)} images)"
        )
    extra = "; importance ranked on one half of the images, scored on the other (cross-fit)"
    return stats.claim(parts, "; ".join(texts), _conditions(result, extra), left_out=left_out)


_BUILDERS = {
    CLAIMS[0]: _overall_drop_claim,
    CLAIMS[1]: _class_drop_claim,
    CLAIMS[2]: _selectivity_claim,
    CLAIMS[3]: _selective_class_claim,
    CLAIMS[4]: _cumulative_claim,
    CLAIMS[5]: _l1_claim,
}


def claims(result: Computed) -> dict:
    layers = _layers(result)
    if not layers:
        return {k: {"na": "no layer ablated", "conditions": PAPER_SETTING} for k in CLAIMS}
    return {k: build(result, layers) for k, build in _BUILDERS.items()}


def _other_predictors(summary: dict) -> str:
    """The other predictors' Spearman correlations with the largest class drop and the overall
    drop, as text (empty for a summary without predictors)."""
    predictors = summary.get("predictors", {})
    parts = [
        f"{PREDICTORS[k]} {predictors[k]['class']:+.2f} / {predictors[k]['overall']:+.2f}"
        for k in PREDICTORS
        if k != "selectivity" and k in predictors
    ]
    return f" (rho with class / overall drop: {', '.join(parts)})" if parts else ""
