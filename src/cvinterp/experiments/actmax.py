"""actmax: activation maximisation. Erhan et al. 2009's norm-constrained gradient ascent for
many units of layers 1-3 from several random starts (do the starts agree?), on a net pretrained
without labels as theirs and on a second net beside it (a supervised one), and Yosinski et al.
2015's regularised class visualisations, settings 1-4 of their Table 1."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import Computed, Declaration, Model, Probe, load, spread
from cvinterp.methods.actmax import (
    YOSINSKI_SETTINGS,
    pixel_space,
    unit_objective,
)
from cvinterp.methods.actmax import erhan as erhan_ascent
from cvinterp.methods.actmax import yosinski as yosinski_ascent
from cvinterp.methods.inversion import features
from cvinterp.models import layer_path


def _figures(settings: dict) -> list[str]:
    return [k for k in ("erhan", "yosinski") if settings.get(k)]


def _erhan_models(erhan: dict) -> list[str]:
    """The models Erhan et al.'s part runs on: `model` (it decides the claim), then `compare`."""
    return [erhan["model"]] + ([erhan["compare"]] if erhan.get("compare") else [])


def _check(settings: dict) -> None:
    erhan = settings.get("erhan")
    for name in _erhan_models(erhan) if erhan else []:
        if not settings["models"][name].get("layers"):
            raise ValueError(
                f"config key 'experiments.actmax.models.{name}.layers': Erhan et al.'s units "
                "come from the layers listed there"
            )
    if erhan and erhan.get("compare") == erhan["model"]:
        raise ValueError(
            "config key 'experiments.actmax.erhan.compare': a model other than erhan.model"
        )


DECLARATION = Declaration(
    figures=_figures,
    model_references=("erhan.model", "erhan.compare", "yosinski.model"),
    check=_check,
    short=True,
)


def compute(
    models: dict[str, Model],
    *,
    erhan: dict | None,
    yosinski: dict | None,
    probe: Probe,
    device,
) -> Computed:
    """Each part runs on its model: `erhan` on the layers listed for each of its models,
    `yosinski` on its `layer` (none: the output)."""
    metrics, data = {}, {}
    if erhan:
        metrics["erhan"], data["erhan"] = _erhan(
            [models[name] for name in _erhan_models(erhan)], erhan, probe, device
        )
    if yosinski:
        model = models[yosinski["model"]]
        metrics["yosinski"], data["yosinski"] = _yosinski(model, yosinski, probe, device)
    return Computed(metrics, data)


_PRETRAINING = {"denoising_autoencoder": "unsupervised: greedy layer-wise denoising auto-encoders"}


def _training(spec: dict) -> str:
    """How a model of the config got its weights, in words."""
    if spec.get("pretrain"):
        return _PRETRAINING[spec["pretrain"]["kind"]]
    if spec.get("weights", "train") == "train":
        return f"supervised on {spec['dataset']}"
    return f"{spec['weights']} weights"


def _erhan(models: list[Model], s: dict, probe: Probe, device) -> tuple[dict, dict]:
    """Each model's units spread over each of its layers, each from `starts` random starts, on
    the sphere whose radius is the mean norm of the probe images (the network's input); the
    first model decides the claim."""
    info = {
        "model": models[0].name,
        "compare": models[1].name if len(models) > 1 else None,
        "seed": probe.seed,
        "starts": s["starts"],
        "iterations": s["iterations"],
        "step": s["step"],
        "models": {},
    }
    optima = {}
    for model in models:
        info["models"][model.name], optima[model.name] = _erhan_model(model, s, probe, device)
    return info, {"optima": optima}


def _erhan_model(model: Model, s: dict, probe: Probe, device) -> tuple[dict, dict]:
    """One model's part: its metrics, and its optima per layer (units, starts, C, H, W)."""
    m = load(model, probe, device, frozen=True)
    with torch.no_grad():
        x = next(iter(m.images.batches(m.pre, 256, device)))
        rho = float(x.flatten(1).norm(dim=1).mean())
    gen = torch.Generator().manual_seed(probe.seed)
    info = {"training": _training(model.spec), "rho": rho, "layers": {}}
    optima = {}
    for layer in model.settings["layers"]:
        p = layer_path(m.arch, layer)
        with torch.no_grad():
            n_units = int(features(m.model, x[:1], [p])[0].shape[1])
        units = spread(n_units, s["units"] or n_units)
        u = torch.tensor(units).repeat_interleave(s["starts"])  # unit-major: its starts together
        start = torch.rand(len(u), *x.shape[1:], generator=gen).to(device)
        objective = unit_objective(m.model, p, u, where="centre")
        bar = tqdm(total=s["iterations"], desc=f"{m.name} {layer}: Erhan", mininterval=5)
        res = erhan_ascent(objective, start, rho, s["iterations"], s["step"], progress=bar)
        bar.close()
        optima[layer] = res.images.cpu().view(len(units), s["starts"], *x.shape[1:])
        within, between = unit_correlations(optima[layer])
        info["layers"][layer] = {
            "units": units,
            "n_units": n_units,
            "within_unit_correlation": float(within.mean()),
            "between_unit_correlation": float(between.mean()),
            # per unit (in the order of `units`), for the claim's intervals over units
            "within_by_unit": within.tolist(),
            "between_by_unit": between.tolist(),
            "activation_start_mean": float(res.start.mean()),
            "activation_final_mean": float(res.final.mean()),
        }
    return info, optima


def unit_correlations(optima: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, from its optima (units, starts, ...): the mean Pearson correlation between its
    own optima from different starts (within), and between its optima and those of every other
    unit (between, NaN with one unit). Their means over units are the layer's mean pairwise
    correlations (every unit has the same number of starts)."""
    n_units, n_starts = optima.shape[:2]
    v = optima.flatten(2).double()
    v = v - v.mean(-1, keepdim=True)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    flat = v.reshape(n_units * n_starts, -1)
    r = (flat @ flat.T).view(n_units, n_starts, n_units, n_starts).permute(0, 2, 1, 3)
    own = torch.eye(n_units, dtype=torch.bool)
    same = r[own]  # (units, starts, starts)
    off = ~torch.eye(n_starts, dtype=torch.bool)
    within = same[:, off].mean(1) if n_starts > 1 else torch.full((n_units,), float("nan"))
    if n_units > 1:
        between = r[~own].view(n_units, n_units - 1, -1).mean((1, 2))
    else:
        between = torch.full((n_units,), float("nan"))
    return within.numpy(), between.numpy()


def _yosinski(model: Model, s: dict, probe: Probe, device) -> tuple[dict, dict]:
    """The chosen classes from the same noise under each setting, in pixel units."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    m = load(model, probe, device, frozen=True)
    to_input, _, bounds = pixel_space(m.pre)
    bounds = tuple(b.to(device) for b in bounds)
    layer = model.settings.get("layer")
    p = None if layer is None else layer_path(m.arch, layer)
    classes = torch.tensor(s["classes"])
    objective = unit_objective(m.model, p, classes, where="mean")
    gen = torch.Generator().manual_seed(probe.seed)
    # Yosinski et al. start from the mean image plus noise: in pixel units, noise around 0
    start = (torch.randn(len(classes), m.channels, m.size, m.size, generator=gen) * 10).to(device)
    names = m.classes if len(m.classes) > int(classes.max()) else _IMAGENET_CATEGORIES
    with torch.no_grad():  # the claim's null: the class's probability for the start images
        p_start = m.model(to_input(start)).softmax(1)[
            torch.arange(len(classes)), classes.to(device)
        ]
    info = {
        "model": model.name,
        "layer": layer or "output",
        "seed": probe.seed,
        "classes": s["classes"],
        "class_names": [names[int(c)] for c in classes],
        "p_target_start": p_start.cpu().tolist(),
        "settings": {},
    }
    shown = {}
    for k in s["settings"]:
        setting = YOSINSKI_SETTINGS[k]
        steps = setting.iterations
        if s["max_iterations"]:
            steps = min(steps, s["max_iterations"])
        bar = tqdm(total=steps, desc=f"{m.name}: Yosinski setting {k}", mininterval=5)
        res = yosinski_ascent(objective, start, to_input, setting, bounds, steps, progress=bar)
        bar.close()
        with torch.no_grad():
            prob = m.model(to_input(res.images)).softmax(1)
        p_target = prob[torch.arange(len(classes)), classes.to(device)].cpu()
        info["settings"][k] = {
            **res.settings,
            "paper_iterations": setting.iterations,
            "score_start": res.start.cpu().tolist(),
            "score_final": res.final.cpu().tolist(),  # of the best image seen (shown)
            "score_last": res.last.cpu().tolist(),
            "best_iteration": res.best_iteration.cpu().tolist(),
            "p_target": p_target.tolist(),
            "pixel_std": res.images.flatten(1).std(1).cpu().tolist(),
        }
        shown[k] = (res.images.flip(1) if m.pre.bgr else res.images).cpu()  # RGB, pixel units
    labels = [f"{int(c)} {names[int(c)]}" for c in classes]
    return info, {"images": shown, "labels": labels}


def _stretch(u: torch.Tensor, pct: float) -> np.ndarray:
    """An optimised image (C, H, W) for display, HWC: contrast stretched between its pct-th and
    (100 - pct)-th percentiles (0: min-max)."""
    a = u.permute(1, 2, 0).double().cpu().numpy()
    lo, hi = np.percentile(a, [pct, 100 - pct])
    return ((a - lo) / max(hi - lo, 1e-12)).clip(0, 1)


def figures(result: Computed, figure_dir) -> None:
    """Erhan: per layer, 8 units from their first start, then one unit from every start.
    Yosinski: a row per class, a column per setting, each image contrast stretched."""
    if "erhan" in result.metrics:
        info, starts = result.metrics["erhan"], result.metrics["erhan"]["starts"]
        optima = result.data["erhan"]["optima"]
        layers = list(dict.fromkeys(k for per_model in optima.values() for k in per_model))
        rows, labels = [], []
        for layer in layers:  # the models' same layer side by side
            for name, per_model in optima.items():
                if layer not in per_model:
                    continue
                imgs, units = per_model[layer], info["models"][name]["layers"][layer]["units"]
                shown = spread(len(units), 8)
                rows.append([fig.as_rgb(_stretch(imgs[i, 0], 0)) for i in shown])
                labels.append(
                    f"{name} {layer}: units\n{', '.join(str(units[i]) for i in shown)} (start 1)"
                )
                rows.append([fig.as_rgb(_stretch(imgs[shown[0], j], 0)) for j in range(starts)])
                labels.append(f"{name} {layer} unit {units[shown[0]]}:\n{starts} random starts")
        nets = "; ".join(
            f"{name} ({m['training']}, ||x|| = {m['rho']:.1f})"
            for name, m in info["models"].items()
        )
        fig.image_rows(
            rows,
            labels,
            f"Activation maximisation on a sphere (Erhan et al. 2009), each image min-max "
            f"stretched:\n{nets}",
            figure_dir / "erhan.png",
        )
    if "yosinski" in result.metrics:
        info, shown = result.metrics["yosinski"], result.data["yosinski"]["images"]
        labels = result.data["yosinski"]["labels"]
        columns = [[_stretch(im, 0.5) for im in images] for images in shown.values()]
        fig.image_rows(
            [[col[i] for col in columns] for i in range(len(labels))],
            labels,
            f"{info['model']}: class visualisations with Yosinski et al. 2015's regularisers "
            "(Table 1, settings 1-4, the authors' learning rates), the best image seen, "
            "contrast stretched",
            figure_dir / "yosinski.png",
            col_labels=[
                f"setting {k} ({info['settings'][k]['iterations']} it., "
                f"{info['settings'][k]['lr_policy']} lr)\np = "
                + ", ".join(f"{p:.2f}" for p in info["settings"][k]["p_target"])
                for k in shown
            ],
            cell=2.0,
        )


def claims(result: Computed) -> dict:
    """random_starts_converge (Erhan et al. 2009), decided on erhan.model by its weakest layer;
    regularised_visualisations_classified (Yosinski et al. 2015), by the weakest setting."""
    return {
        "random_starts_converge": _erhan_claim(result.metrics.get("erhan")),
        "regularised_visualisations_classified": _yosinski_claim(result.metrics.get("yosinski")),
    }


def _seed(info: dict) -> int:
    return int(info.get("seed", 0))


def _erhan_claim(info: dict | None) -> dict:
    """Per layer of erhan.model: the mean correlation between a unit's optima from different
    random starts, with a 95% bootstrap interval over the units; its null is the mean
    correlation between the optima of different units (per unit, resampled over the units)."""
    if not info:
        return {
            "na": "experiments.actmax.erhan not set",
            "conditions": "no Erhan et al. visualisations configured in this profile",
        }
    conditions = (
        f"{info['model']} ({info['models'][info['model']]['training']}); "
        f"{len(next(iter(info['models'][info['model']]['layers'].values()))['units'])} units "
        f"per layer, {info['starts']} random starts, {info['iterations']} steps of "
        f"{info['step']} rho"
    )
    if info["starts"] < 2:
        return {"na": "one random start: nothing to compare", "conditions": conditions}

    def per_layer(name: str) -> tuple[dict, dict, str]:
        parts, left_out, texts = {}, {}, []
        for layer, v in info["models"][name]["layers"].items():
            within = np.asarray(v["within_by_unit"], dtype=np.float64)
            between = np.asarray(v["between_by_unit"], dtype=np.float64)
            if len(within) < 2:
                left_out[layer] = "one unit: no other unit for the null"
                continue
            ci = stats.bootstrap(within, np.mean, seed=_seed(info))
            null_ci = stats.bootstrap(between, np.mean, seed=_seed(info))
            parts[layer] = stats.estimate(
                float(within.mean()), ci, null=float(between.mean()), null_interval=null_ci
            )
            texts.append(
                f"{layer} {within.mean():.2f} [{ci[0]:.2f}, {ci[1]:.2f}] (other units "
                f"{between.mean():.2f} [{null_ci[0]:.2f}, {null_ci[1]:.2f}])"
            )
        m = info["models"][name]
        return parts, left_out, f"{name} ({m['training']}): " + ", ".join(texts)

    parts, left_out, ours = per_layer(info["model"])
    ours += (
        f" (mean pairwise correlation of one unit's optima from {info['starts']} random starts, "
        "95% interval over units)"
    )
    if info["compare"]:
        ours += f". Beside it, {per_layer(info['compare'])[2]}"
    return stats.claim(parts, ours, conditions, left_out=left_out)


def _yosinski_claim(info: dict | None) -> dict:
    """Per setting of Table 1: the target class's probability for the visualisation shown (the
    best image seen), mean over the classes with a 95% bootstrap interval over them (one class:
    the spread is unknown, so the claim is at best inconclusive); its null is the same
    probability for the random start images."""
    if not info:
        return {
            "na": "experiments.actmax.yosinski not set",
            "conditions": "no Yosinski et al. class visualisations configured in this profile",
        }
    classes = info["classes"]

    def mean_ci(values) -> tuple[float, tuple | None, str]:
        v = np.asarray(values, dtype=np.float64)
        if len(v) < 2:  # one class: no spread over classes to measure
            return float(v.mean()), stats.UNKNOWN, f"{v.mean():.3g} (one class)"
        ci = stats.bootstrap(v, np.mean, seed=_seed(info))
        return float(v.mean()), ci, f"{v.mean():.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"

    p0, null_ci, null_text = mean_ci(info["p_target_start"])
    parts, texts, steps = {}, [], []
    for k, v in info["settings"].items():
        value, ci, text = mean_ci(v["p_target"])
        parts[f"setting {k}"] = stats.estimate(value, ci, null=p0, null_interval=null_ci)
        texts.append(f"setting {k} {text}")
        steps.append(f"setting {k} {v['iterations']} of {v['paper_iterations']}")
    names = info.get("class_names") or [str(c) for c in classes]
    ours = (
        f"{info['model']} {info['layer']}: p(target class) of the visualisation, mean over "
        f"{len(classes)} class(es) ({', '.join(names)}): "
        + ", ".join(texts)
        + f"; random start images {null_text}"
    )
    conditions = (
        f"{info['model']} (the paper: CaffeNet); {len(classes)} class(es)"
        + (" (one class: no interval)" if len(classes) < 2 else "")
        + f"; iterations (ours of the paper's): {', '.join(steps)}"
    )
    return stats.claim(parts, ours, conditions)
