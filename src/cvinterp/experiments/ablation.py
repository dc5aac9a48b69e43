"""ablation: every unit of chosen layers zeroed in turn (Zhou et al. 2018). The overall accuracy
and every class's accuracy on labelled images (a trained net's test split; an ImageNet net's
validation folder, which must be given), the drops against three predictors of a unit's
importance (its class selectivity, the L1 norm of its incoming weights, its class correlation),
and units ablated cumulatively in order of importance and at random."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp.data.images import DataError
from cvinterp.data.probe import FolderProbe
from cvinterp.experiments.common import Computed, Declaration, Loaded, Model, Probe, load
from cvinterp.methods import ablation as ab
from cvinterp.models import layer_path

DECLARATION = Declaration(
    figures=lambda s: [f"{m}_{layer}" for m, ms in s["models"].items() for layer in ms["layers"]]
)

CLAIMS = (
    "single_unit_overall_drop_small",
    "class_drop_much_larger",
    "selectivity_predicts_class_drop",
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
        data = FolderProbe(folder, m.size, images, probe.threads)
        return data, len(data)
    n = len(m.images) if images is None else min(images, len(m.images))
    return m.images, n


def _batches(data, pre, n: int, batch_size: int, device):
    """(input, label) batches of the first n images, in dataset order."""
    labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.int64)
    seen = 0
    for x in data.batches(pre, batch_size, device):
        x = x[: n - seen]
        yield x, labels[seen : seen + len(x)]
        seen += len(x)
        if seen >= n:
            return


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
    base = engine.correct(torch.ones(1, units, dtype=torch.bool))[0].double()
    bar = tqdm(total=n, desc=f"{m.name} {path}: ablate {units} units", mininterval=5)
    correct = engine.correct(ab.single_units(units), group=group, progress=bar).double()
    bar.close()  # correct: (units, classes)
    seen = totals > 0
    base_class = base[seen] / totals[seen]
    class_acc = correct[:, seen] / totals[seen]
    overall = (base.sum() - correct.sum(1)) / totals.sum()  # accuracy drop per unit
    class_drop = base_class[None] - class_acc  # (units, seen classes)
    worst = class_drop.argmax(1)
    max_drop = class_drop.max(1).values
    sel = ab.selectivity(engine.class_means()[seen])
    overall, max_drop = overall.cpu().numpy(), max_drop.cpu().numpy()
    class_ids = torch.nonzero(seen).flatten().cpu().numpy()
    l1, corr, no_l1 = ab.unit_predictors(engine, m.model, path, torch.as_tensor(class_ids))
    predictors = {"selectivity": sel, "l1_norm": l1, "class_correlation": corr}

    # cumulative ablation: most important first, against random orders
    k_steps = sorted({int(round(v)) for v in np.linspace(0, units, steps + 1)})
    order = np.argsort(-overall, kind="stable")
    keep = [ab.cumulative(order, units, k_steps)]
    rng = np.random.default_rng(seed)
    keep += [ab.cumulative(rng.permutation(units), units, k_steps) for _ in range(random_orders)]
    acc = engine.correct(torch.cat(keep), group=group).sum(1).double() / totals.sum()
    acc = acc.view(1 + random_orders, len(k_steps)).cpu().numpy()
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
        "summary": {
            "images": n,
            "mean_overall_drop": float(overall.mean()),
            "mean_abs_overall_drop": float(np.abs(overall).mean()),
            "max_overall_drop": float(overall.max()),
            "mean_max_class_drop": float(max_drop.mean()),
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
        "cumulative": {
            "removed": k_steps,
            "by_importance": acc[0].tolist(),
            "random_mean": acc[1:].mean(0).tolist() if random_orders else [],
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
        out = metrics["models"][name] = {"data": getattr(data, "description", ""), "layers": {}}
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
    ax.plot(c["removed"], 100 * np.array(c["by_importance"]), "o-", label="most important first")
    if c["random_mean"]:
        ax.plot(c["removed"], 100 * np.array(c["random_mean"]), "s--", label="random order (mean)")
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


def claims(result: Computed) -> dict:
    rows = {
        f"{n} {layer}": r["summary"]
        for n, o in result.metrics["models"].items()
        for layer, r in o["layers"].items()
    }
    if not rows:
        return {k: {"na": "no layer ablated"} for k in CLAIMS}
    pct = {k: 100 * s["mean_overall_drop"] for k, s in rows.items()}
    # against the mean size of the overall change (a unit's removal can also raise accuracy),
    # at least one image's worth
    ratio = {
        k: s["mean_max_class_drop"] / max(s["mean_abs_overall_drop"], 1 / s["images"])
        for k, s in rows.items()
    }
    gap = {
        k: s["spearman_selectivity_class"] - s["spearman_selectivity_overall"]
        for k, s in rows.items()
    }
    out = {
        CLAIMS[0]: {
            "value": max(pct.values()),
            "ours": "; ".join(
                f"{k}: mean {v:.2f} pts, max {100 * rows[k]['max_overall_drop']:.2f}"
                for k, v in pct.items()
            ),
        },
        CLAIMS[1]: {
            "value": min(ratio.values()),
            "ours": "; ".join(
                f"{k}: mean max-class drop {100 * rows[k]['mean_max_class_drop']:.2f} pts = "
                f"{v:.1f}x the mean |overall change|"
                for k, v in ratio.items()
            ),
        },
        CLAIMS[2]: {
            "value": min(gap.values()),
            "ours": "; ".join(
                f"{k}: rho(sel, class drop) {rows[k]['spearman_selectivity_class']:+.2f} vs "
                f"rho(sel, overall) {rows[k]['spearman_selectivity_overall']:+.2f}"
                + _other_predictors(rows[k])
                for k in rows
            ),
        },
    }
    if any(np.isnan(v) for v in gap.values()):
        out[CLAIMS[2]] = {"na": "a layer's selectivities or drops are all equal: no rank order"}
    return out


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
