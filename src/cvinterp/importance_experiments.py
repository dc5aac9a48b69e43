"""How units matter for the prediction: the workflow step of unit ablation (Zhou et al. 2018).

`ablation_experiment` zeroes every unit of the chosen layers, one at a time, and measures the
overall accuracy and the accuracy of every class on labelled images (a trained net's test split;
an ImageNet net's validation folder, which must be given), relates the drops to each unit's class
selectivity, and ablates units cumulatively in order of importance and at random. It writes one
figure per (model, layer) and the claims for compare.tsv.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from cvinterp import figures
from cvinterp.data.images import DataError
from cvinterp.data.probe import FolderProbe
from cvinterp.methods import ablation as ab
from cvinterp.models import layer_path
from cvinterp.pipeline import write_json
from cvinterp.unit_experiments import Probe, _device_and_seed, load


def _labelled(m, probe: Probe, images: int | None):
    """(probe, n) of labelled images: the test split, or the ImageNet validation folder."""
    if m.imagenet:
        folder = probe.datasets.get("imagenet_val", {}).get("dir")
        if not folder:
            raise DataError(
                f"ablation of {m.name} needs labelled ImageNet images: set "
                "datasets.imagenet_val.dir to your ImageNet validation folder (class "
                "sub-folders; licence-gated, never downloaded)"
            )
        data = FolderProbe(folder, m.size, images, probe.workers)
        return data, len(data)
    n = len(m.images) if images is None else min(images, len(m.images))
    return m.images, n


def _batches(data, pre, n: int, batch_size: int, dev):
    """(input, label) batches of the first n images, in dataset order."""
    labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.int64)
    seen = 0
    for x in data.batches(pre, batch_size, dev):
        x = x[: n - seen]
        yield x, labels[seen : seen + len(x)]
        seen += len(x)
        if seen >= n:
            return


def _spearman(a, b) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def ablate_layer(m, path: str, data, n: int, *, batch_size: int, group: int, steps: int,
                 random_orders: int, cache_mb: float, seed: int, dev) -> dict:  # fmt: skip
    """Every unit of one layer zeroed in turn, selectivity, and the cumulative curves."""
    engine = ab.Ablation(m.model, path, dev)
    bar = tqdm(total=n, desc=f"{m.name} {path}: features", mininterval=5)
    engine.cache(_batches(data, m.pre, n, batch_size, dev), cache_mb, n, progress=bar)
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

    # cumulative ablation: most important first, against random orders
    k_steps = sorted({int(round(v)) for v in np.linspace(0, units, steps + 1)})
    order = np.argsort(-overall, kind="stable")
    keep = [ab.cumulative(order, units, k_steps)]
    rng = np.random.default_rng(seed)
    keep += [ab.cumulative(rng.permutation(units), units, k_steps) for _ in range(random_orders)]
    acc = engine.correct(torch.cat(keep), group=group).sum(1).double() / totals.sum()
    acc = acc.view(1 + random_orders, len(k_steps)).cpu().numpy()
    top = order[:5]
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
        "summary": {
            "images": n,
            "mean_overall_drop": float(overall.mean()),
            "mean_abs_overall_drop": float(np.abs(overall).mean()),
            "max_overall_drop": float(overall.max()),
            "mean_max_class_drop": float(max_drop.mean()),
            "spearman_selectivity_overall": _spearman(sel, overall),
            "spearman_selectivity_class": _spearman(sel, max_drop),
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
            for u in top
        ],  # fmt: skip
        "cumulative": {
            "removed": k_steps,
            "by_importance": acc[0].tolist(),
            "random_mean": acc[1:].mean(0).tolist() if random_orders else [],
        },
    }


def ablation_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], images: int | None,
    batch_size: int, group: int, steps: int, random_orders: int, cache_mb: float,
    probe: Probe, device: str, threads: int, figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Zhou et al. 2018 for every chosen layer of every model."""
    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    for name, entry in models.items():
        m = load(name, entry["checkpoint"], entry["spec"], probe, dev)
        data, n = _labelled(m, probe, images)
        out = result["models"][name] = {"data": getattr(data, "description", ""), "layers": {}}
        for layer in layers[name]:
            r = ablate_layer(m, layer_path(m.arch, layer), data, n, batch_size=batch_size,
                             group=group, steps=steps, random_orders=random_orders,
                             cache_mb=cache_mb, seed=probe.seed, dev=dev)  # fmt: skip
            out["layers"][layer] = r
            _figure(r, m.classes, f"{name} {layer}", f"{figure_dir}/{name}_{layer}.png")
    result["claims"] = _claims(result["models"])
    write_json(metrics, result)


def _claims(per_model: dict) -> dict:
    rows = {
        f"{n} {la}": r["summary"] for n, o in per_model.items() for la, r in o["layers"].items()
    }
    ids = ("single_unit_overall_drop_small", "class_drop_much_larger",
           "selectivity_predicts_class_drop")  # fmt: skip
    if not rows:
        return {k: {"na": "no layer ablated"} for k in ids}
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
    claims = {
        ids[0]: {
            "value": max(pct.values()),
            "ours": "; ".join(
                f"{k}: mean {v:.2f} pts, max {100 * rows[k]['max_overall_drop']:.2f}"
                for k, v in pct.items()
            ),
        },
        ids[1]: {
            "value": min(ratio.values()),
            "ours": "; ".join(
                f"{k}: mean max-class drop {100 * rows[k]['mean_max_class_drop']:.2f} pts = "
                f"{v:.1f}x the mean |overall change|"
                for k, v in ratio.items()
            ),
        },
        ids[2]: {
            "value": min(gap.values()),
            "ours": "; ".join(
                f"{k}: rho(sel, class drop) {rows[k]['spearman_selectivity_class']:+.2f} vs "
                f"rho(sel, overall) {rows[k]['spearman_selectivity_overall']:+.2f}"
                for k in rows
            ),
        },
    }
    if any(np.isnan(v) for v in gap.values()):
        claims[ids[2]] = {"na": "a layer's selectivities or drops are all equal: no rank order"}
    return claims


def _figure(r: dict, classes: list[str], title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    overall = 100 * np.array(r["overall_drop"])
    max_drop = 100 * np.array(r["max_class_drop"])
    sel = np.array(r["selectivity"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))
    ax = axes[0, 0]
    ax.hist(overall, bins=30, color="0.4")
    ax.set(xlabel="overall accuracy drop (points)", ylabel="units",
           title="one unit zeroed: overall accuracy")  # fmt: skip
    ax = axes[0, 1]
    ax.hist(max_drop, bins=30, color="#d62728")
    ax.set(xlabel="largest class accuracy drop (points)", ylabel="units",
           title="one unit zeroed: its most affected class")  # fmt: skip
    s = r["summary"]
    for ax, y, rho, what in (
        (axes[1, 0], overall, s["spearman_selectivity_overall"], "overall drop"),
        (axes[1, 1], max_drop, s["spearman_selectivity_class"], "largest class drop"),
    ):
        ax.scatter(sel, y, s=8, alpha=0.7)
        ax.set(xlabel="class selectivity", ylabel=f"{what} (points)",
               title=f"selectivity vs {what}: Spearman {rho:+.2f}")  # fmt: skip
    ax = axes[0, 2]
    ax.axis("off")
    lines = ["most important units (overall drop) and the classes they hit hardest:"]
    for u in r["most_important"]:
        hit = ", ".join(f"{classes[c]} {100 * d:+.1f}" for c, d in u["classes"])
        lines.append(f"unit {u['unit']}: {100 * u['overall_drop']:+.2f} overall; {hit}")
    ax.text(0, 1, "\n".join(lines), va="top", fontsize=7, family="monospace", wrap=True)
    ax = axes[1, 2]
    c = r["cumulative"]
    ax.plot(c["removed"], 100 * np.array(c["by_importance"]), "o-", label="most important first")
    if c["random_mean"]:
        ax.plot(c["removed"], 100 * np.array(c["random_mean"]), "s--", label="random order (mean)")
    ax.set(xlabel="units zeroed", ylabel="accuracy (%)", title="cumulative ablation")
    ax.legend(fontsize=7)
    fig.suptitle(f"Unit ablation, {title}: {r['units']} units, {r['images']} images, base "
                 f"accuracy {100 * r['base_accuracy']:.1f}%", fontsize=10)  # fmt: skip
    fig.tight_layout()
    figures.save(fig, path)
