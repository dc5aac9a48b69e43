"""guided_backprop: backprop, deconvnet and guided backprop side by side for the top activations
of chosen units, how sharp each is, and All-CNN-C's test error (Springenberg et al. 2015,
Figs. 3-4 and Table 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    layer_tops,
    load,
    model_conditions,
    projections,
    spread,
    top_activations_of,
)
from cvinterp.methods.backward import RULES, gini, magnitude, to_image


def _tested(settings: dict) -> list[str]:
    return [settings["test_error_model"]] if settings.get("test_error_model") else []


DECLARATION = Declaration(
    training_metrics=_tested, model_references=("test_error_model",), short=True
)


def compute(
    models: dict[str, Model],
    *,
    units: int,
    k: int,
    max_images: int | None,
    test_error_model: str | None,
    probe: Probe,
    device,
) -> Computed:
    """For `units` units spread over each layer, the three backward rules' projections of their
    top-k activations; the sharpness (Gini) of each projection inside the receptive field."""
    rules = list(RULES)
    metrics: dict = {"models": {}}
    sharpness, shown, conditions = {}, {}, {}
    for name, model in models.items():
        sharpness[name] = {r: [] for r in rules}
        m = load(model, probe, device)
        n, per_layer = layer_tops(m, model.settings["layers"], k, max_images)
        conditions[name] = (
            model_conditions(model, m.images.description, n)
            + f", {units} units x top-{k} of {', '.join(model.settings['layers'])}"
        )
        info = {"probe": m.images.description, "images": n, "layers": {}}
        shown[name] = []
        for lt in per_layer:
            chosen = spread(lt.tops.values.shape[1], units)
            top = top_activations_of(m, lt, chosen, device)
            per_rule = {r: projections(m, lt, top, r) for r in rules}
            layer_info = {"units": chosen}
            for r in rules:
                mag = magnitude(per_rule[r])
                g = [
                    float(gini(mag[i : i + 1, y0:y1, x0:x1])[0])
                    for i, (y0, y1, x0, x1) in enumerate(top.box)
                ]
                sharpness[name][r] += g
                layer_info[f"gini_{r}"] = float(np.median(g))
            info["layers"][lt.layer] = layer_info
            shown[name].append(
                {
                    "layer": lt.layer,
                    "units": chosen,
                    "images": top.images,
                    "boxes": top.box,
                    "maps": {r: to_image(per_rule[r], bgr=m.pre.bgr).numpy() for r in rules},
                }
            )
        metrics["models"][name] = info
    metrics["median_gini"] = {
        n: {r: float(np.median(v)) for r, v in per.items()} for n, per in sharpness.items()
    }
    pairs = {n: len(per[rules[0]]) for n, per in sharpness.items()}
    tested = None
    if test_error_model:
        model = models[test_error_model]
        trained = json.loads(Path(model.metrics).read_text())
        tested = {
            "model": test_error_model,
            "dataset": model.spec.get("dataset"),
            "error": 100 * (1 - trained["test_accuracy"]),
            "n_test": trained.get("n_test"),
            "epochs": len(trained.get("history", [])),
            "conditions": model_conditions(model, f"{model.spec.get('dataset')} test split"),
        }
    data = {"shown": shown, "k": k, "pairs": pairs, "test_error": tested, "seed": probe.seed}
    gini_of = {n: {r: np.array(v) for r, v in per.items()} for n, per in sharpness.items()}
    return Computed(metrics, {**data, "gini": gini_of, "conditions": conditions})


def figures(result: Computed, figure_dir) -> None:
    """A row per unit: each top image's receptive field, then the three rules' projections."""
    rules = list(RULES)
    k = result.data["k"]
    for name, per_layer in result.data["shown"].items():
        rows, labels = [], []
        for s in per_layer:
            kk = len(s["images"]) // len(s["units"])
            for j, u in enumerate(s["units"]):
                row = []
                for i in range(j * kk, (j + 1) * kk):
                    box = s["boxes"][i]
                    row.append(fig.crop_to(s["images"][i], box, 64))
                    row += [fig.crop_to(s["maps"][r][i], box, 64) for r in rules]
                rows.append(row)
                labels.append(f"{s['layer']} unit {u}")
        fig.image_rows(
            rows,
            labels,
            f"{name}: backprop, deconvnet and guided backprop of each unit's top-{k} "
            "activations — after Springenberg et al. 2015",
            figure_dir / f"{name}.png",
            col_labels=["image", "backprop", "deconvnet", "guided"] * k,
        )


def _median_difference(a, b, axis=-1):
    return np.median(a, axis=axis) - np.median(b, axis=axis)


def sharper(guided: np.ndarray, other: np.ndarray, seed: int) -> dict:
    """Median Gini of guided backprop's maps minus the other rule's over the same unit-image
    pairs, with its 95% paired bootstrap interval over the pairs."""
    value = float(np.median(guided) - np.median(other))
    return stats.estimate(
        value, stats.bootstrap((guided, other), _median_difference, seed=seed, paired=True)
    )


def error_estimate(error: float, n_test: int | None) -> dict:
    """A test error (%) with its 95% Wilson interval over the `n_test` test images."""
    if not n_test:
        return stats.estimate(error)
    wrong = round(error / 100 * n_test)
    ci = binomtest(wrong, n_test).proportion_ci(confidence_level=stats.LEVEL, method="wilson")
    return stats.estimate(error, (100 * ci.low, 100 * ci.high))


def claims(result: Computed) -> dict:
    """guided_sharper_than_*: one part per model, the weakest decides; all_cnn_c_test_error:
    the trained All-CNN-C's CIFAR-10 test error with its binomial interval."""
    gini, seed = result.data["gini"], result.data.get("seed", 0)
    conditions = "; ".join(result.data["conditions"].values())
    out = {}
    for other in ("backprop", "deconvnet"):
        parts, ours = {}, []
        for n, g in gini.items():
            est = parts[n] = sharper(g["guided_backprop"], g[other], seed)
            ours.append(
                f"{n}: median Gini guided {np.median(g['guided_backprop']):.3f} vs {other} "
                f"{np.median(g[other]):.3f}, difference {est['value']:+.3f} "
                f"{stats.interval_text(est)} "
                f"({len(g[other])} unit-image pairs)"
            )
        out[f"guided_sharper_than_{other}"] = stats.claim(parts, "; ".join(ours), conditions)
    t = result.data["test_error"]
    if not t:
        out["all_cnn_c_test_error"] = {
            "na": "no All-CNN-C model named in experiments.guided_backprop.test_error_model",
            "conditions": conditions,
        }
        return out
    cond = f"{t['conditions']}, {t['epochs']} epoch(s) trained (paper: 350 on CIFAR-10)"
    if t["dataset"] != "cifar10":
        out["all_cnn_c_test_error"] = {
            "na": f"{t['model']} is trained on {t['dataset']}, not CIFAR-10 (test error "
            f"{t['error']:.2f}% after {t['epochs']} epochs); the paper profile trains All-CNN-C "
            "on CIFAR-10",
            "conditions": cond,
        }
    else:
        est = error_estimate(t["error"], t.get("n_test"))
        out["all_cnn_c_test_error"] = stats.claim(
            {t["model"]: est},
            f"{t['model']}: {t['error']:.2f}% CIFAR-10 test error "
            f"{stats.interval_text(est, '.2f')} "
            f"({t.get('n_test')} test images)",
            cond,
        )
    return out
