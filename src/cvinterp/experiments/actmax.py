"""actmax: activation maximisation. Erhan et al. 2009's norm-constrained gradient ascent for
many units of layers 1-3 from several random starts (do the starts agree?), on a net pretrained
without labels as theirs and on a second net beside it (a supervised one), and Yosinski et al.
2015's regularised class visualisations, settings 1-4 of their Table 1."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp.experiments.common import Computed, Declaration, Model, Probe, load, spread
from cvinterp.methods.actmax import (
    YOSINSKI_SETTINGS,
    pairwise_correlation,
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
        within, between = pairwise_correlation(res.images.cpu(), u)
        info["layers"][layer] = {
            "units": units,
            "n_units": n_units,
            "within_unit_correlation": within,
            "between_unit_correlation": between,
            "activation_start_mean": float(res.start.mean()),
            "activation_final_mean": float(res.final.mean()),
        }
        optima[layer] = res.images.cpu().view(len(units), s["starts"], *x.shape[1:])
    return info, optima


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
    info = {
        "model": model.name,
        "layer": layer or "output",
        "classes": s["classes"],
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
    """random_starts_converge, decided on erhan.model (Erhan et al.'s: pretrained without
    labels) by its weakest layer; the compared model's numbers in the text."""
    if "erhan" not in result.metrics:
        return {"random_starts_converge": {"na": "experiments.actmax.erhan not set"}}
    info = result.metrics["erhan"]

    def summary(name: str) -> tuple[str, float]:
        m = info["models"][name]
        lay = m["layers"]
        worst = min(lay, key=lambda layer: lay[layer]["within_unit_correlation"])
        per_layer = ", ".join(
            f"{k} {v['within_unit_correlation']:.2f} (other units "
            f"{v['between_unit_correlation']:.2f})"
            for k, v in lay.items()
        )
        text = f"{name} ({m['training']}): {per_layer}; {len(lay[worst]['units'])} units per layer"
        return text, lay[worst]["within_unit_correlation"]

    ours, value = summary(info["model"])
    ours += f" (mean pairwise correlation of one unit's optima from {info['starts']} random starts)"
    if info["compare"]:
        ours += f". Beside it, {summary(info['compare'])[0]}"
    return {"random_starts_converge": {"value": value, "ours": ours}}
