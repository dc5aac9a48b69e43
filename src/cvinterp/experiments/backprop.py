"""backprop: class maps of the three backward rules side by side (Simonyan et al. 2014;
Springenberg et al. 2015), how much of the class saliency falls on the object (Simonyan et al.
2014, Sec. 3), the cascading randomisation of one model's layers from the top and the
data-randomisation test against a model trained on permuted labels (Adebayo et al. 2018's
sanity checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    class_images,
    inputs,
    load,
)
from cvinterp.instrument import gradients_on
from cvinterp.methods.backward import RULES, gini, magnitude, project, to_image
from cvinterp.methods.sanity import cascading_randomisation, rank_similarity
from cvinterp.models import zoo

#: Datasets of grey items on a black background: the item is the pixels above 0, so how much
#: of a saliency map falls on the object can be measured without a segmentation.
ON_BLACK = ("fashion_mnist", "mnist5k")
#: Images per backward pass of the saliency-on-object claim (memory: a batch, not the count).
CLAIM_BATCH = 64


def _check(settings: dict) -> None:
    dr = settings.get("data_randomisation")
    if not dr:
        return
    for key in ("model", "shuffled"):
        if dr[key] not in settings["models"]:
            raise ValueError(
                f"config key 'experiments.backprop.data_randomisation.{key}': '{dr[key]}' must "
                "also be listed in 'experiments.backprop.models'"
            )


#: Adebayo et al. 2018's data-randomisation test needs a net that has memorised its permuted
#: labels (trained until it fits them); below this training accuracy on those labels the net is
#: close to its random initialisation and the test is a second model randomisation. The bar and
#: its reason are in config/claims/adebayo2018.yaml (guided_insensitive_to_label_randomisation).
MEMORISED = 0.9


def _shuffled_metrics(settings: dict) -> list[str]:
    dr = settings.get("data_randomisation")
    return [dr["shuffled"]] if dr else []


DECLARATION = Declaration(
    figures=lambda settings: [*settings["models"], "randomisation"],
    training_metrics=_shuffled_metrics,
    model_references=("sanity.model",),
    check=_check,
    short=True,
)


def _shuffled(model: Model) -> bool:
    return bool(model.spec.get("train", {}).get("shuffle_labels"))


def saliency_on_object(maps: torch.Tensor, imgs: np.ndarray) -> dict:
    """Simonyan et al.'s class saliency (|gradient|, max over channels) of images of an item on
    black: per image, the fraction of the saliency mass on the item (pixels above 0) and the
    item's share of the image (what a uniform map would put on it)."""
    sal = maps.abs().amax(1).flatten(1).double()  # (N, H*W)
    item = torch.as_tensor(np.asarray(imgs).max(-1) > 0).flatten(1).double()
    mass = (sal * item).sum(1) / sal.sum(1).clamp_min(1e-300)
    return {"mass_on_item": mass.tolist(), "item_area": item.mean(1).tolist()}


def compute(
    models: dict[str, Model],
    *,
    images: int,
    sanity: dict,
    claim_images: int = 64,
    data_randomisation: dict | None = None,
    probe: Probe,
    device,
) -> Computed:
    """Each model's class maps of `images` labelled images under the three rules and their
    sharpness (Gini); for models of items on black, the share of the class saliency on the item
    over `claim_images` images; then `sanity['model']`'s layers re-initialised one by one from
    the top, and the rank correlation of each rule's maps with the trained model's; and the same
    correlation with the maps of the same net trained on permuted labels
    (`data_randomisation`)."""
    rules = list(RULES)
    metrics: dict = {"models": {}, "saliency_on_object": {}}
    shown, loaded = {}, {}
    for name, model in models.items():
        m = loaded[name] = load(model, probe, device)
        imgs, classes = class_images(m, images, device)
        x = inputs(m, imgs, device)
        maps = {r: project(m.model, x, None, classes.to(device), r)[0].cpu() for r in rules}
        shown[name] = {
            "images": imgs,
            "labels": [str(m.classes[int(c)]) for c in classes],
            "maps": {r: to_image(maps[r], bgr=m.pre.bgr).numpy() for r in rules},
        }
        metrics["models"][name] = {
            "images": len(imgs),
            "median_gini": {r: float(gini(magnitude(maps[r])).median()) for r in rules},
        }
        if _shuffled(model):
            metrics["models"][name]["note"] = "trained on permuted labels"
        elif model.spec.get("dataset") in ON_BLACK:
            imgs, classes = class_images(m, claim_images, device)
            share: dict[str, list] = {"mass_on_item": [], "item_area": []}
            for a in range(0, len(imgs), CLAIM_BATCH):  # the backward pass keeps activations
                batch, cls = imgs[a : a + CLAIM_BATCH], classes[a : a + CLAIM_BATCH]
                grads = project(m.model, inputs(m, batch, device), None, cls.to(device), "gradient")
                for key, values in saliency_on_object(grads[0].cpu(), batch).items():
                    share[key] += values
            metrics["saliency_on_object"][name] = share
    name, top = sanity["model"], sanity["randomise_top"]
    m = loaded[name]
    top_down = list(reversed(list(zoo()[m.arch]["layers"].items())))
    if top > len(top_down):
        raise ValueError(f"sanity.randomise_top = {top}, but {m.arch} has {len(top_down)} layers")
    imgs, classes = class_images(m, sanity["images"], device)
    x = inputs(m, imgs, device)
    paths = [p for _, p in top_down]
    sims = cascading_randomisation(m.model, x, classes.to(device), paths, rules, probe.seed)
    metrics["sanity"] = {
        "model": name,
        "images": len(imgs),
        "randomised": [f"{layer} and above" for layer, _ in top_down],
        "mean_spearman": {r: sims[r].mean(1).tolist() for r in rules},
        "spearman_at_top": {r: sims[r][top - 1].tolist() for r in rules},
    }
    if data_randomisation:
        metrics["data_randomisation"] = _data_randomisation(
            loaded[data_randomisation["model"]],
            loaded[data_randomisation["shuffled"]],
            data_randomisation,
            rules,
            device,
        )
        metrics["data_randomisation"]["shuffled_train_accuracy"] = train_accuracy(
            models[data_randomisation["shuffled"]]
        )
    specs = {n: m.spec for n, m in models.items()}
    data = {"shown": shown, "randomise_top": top, "specs": specs, "seed": probe.seed}
    return Computed(metrics, data)


def train_accuracy(model: Model) -> float | None:
    """The accuracy of a model on its training batches in its last epoch, on the labels it
    trained on (permuted ones for a permuted-label net), from its training metrics; None when
    they are not there or do not record it (a checkpoint trained before it was recorded)."""
    if not model.metrics or not Path(model.metrics).exists():
        return None
    value = json.loads(Path(model.metrics).read_text()).get("train_accuracy")
    return None if value is None else float(value)


def _data_randomisation(m, shuffled, settings: dict, rules: list[str], device) -> dict:
    """Per rule and image, the Spearman correlation of the map of the trained model with the
    map of the same net trained on permuted labels, on the trained model's labelled images."""
    imgs, classes = class_images(m, settings.get("images", 32), device)
    classes = classes.to(device)
    with gradients_on():
        sims = {
            r: rank_similarity(
                project(m.model, inputs(m, imgs, device), None, classes, r)[0],
                project(shuffled.model, inputs(shuffled, imgs, device), None, classes, r)[0],
            ).tolist()
            for r in rules
        }
    return {
        "model": settings["model"],
        "shuffled": settings["shuffled"],
        "images": len(imgs),
        "spearman": sims,
        "mean_spearman": {r: float(np.mean(v)) for r, v in sims.items()},
    }


def figures(result: Computed, figure_dir) -> None:
    """Per model, a row per image: the image and its three class maps; and the similarity to the
    trained model's maps as more layers are re-initialised."""
    import matplotlib.pyplot as plt

    rules = list(RULES)
    for name, s in result.data["shown"].items():
        rows = [[im] + [s["maps"][r][i] for r in rules] for i, im in enumerate(s["images"])]
        fig.image_rows(
            rows,
            s["labels"],
            f"{name}: class maps — backprop, deconvnet, guided backprop",
            figure_dir / f"{name}.png",
            col_labels=["image", *rules],
            cell=1.5,
        )
    sanity = result.metrics["sanity"]
    steps, mean = sanity["randomised"], sanity["mean_spearman"]
    f, ax = plt.subplots(figsize=(7, 3.6))
    for r, v in mean.items():
        ax.plot(range(len(steps)), v, marker="o", label=r)
    ax.set_xticks(range(len(steps)), steps, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Spearman with trained map")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(f"{sanity['model']}: cascading randomisation (Adebayo et al. 2018)", fontsize=9)
    fig.save(f, figure_dir / "randomisation.png")


def _paired_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _guided_minus_backprop(sims: dict, seed: int) -> dict:
    """Mean over images of guided backprop's similarity minus backprop's, with its 95% paired
    bootstrap interval over images."""
    g = np.asarray(sims["guided_backprop"], dtype=np.float64)
    b = np.asarray(sims["backprop"], dtype=np.float64)
    return stats.estimate(
        float(g.mean() - b.mean()),
        stats.bootstrap((g, b), _paired_difference, seed=seed, paired=True),
    )


def _train_text(spec: dict) -> str:
    t = spec.get("train", {})
    n = t.get("max_train_images")
    args = " ".join(f"{k}={v}" for k, v in spec.get("arch_args", {}).items())
    return (
        f"{spec.get('arch', '?')}{' ' + args if args else ''} on {spec.get('dataset', '?')}, "
        f"{t.get('epochs', '?')} epoch(s)" + (f" on {n} images" if n else "")
    )


def _label_randomisation_claim(dr: dict | None, specs: dict, seed: int) -> dict:
    """guided_insensitive_to_label_randomisation; n/a unless the permuted-label net has fitted
    its permuted training labels (training accuracy >= MEMORISED), as the paper's test needs."""
    paper = "the paper: MNIST and CIFAR-10 nets trained until they memorise the permuted labels"
    if dr is None:
        return {
            "na": "no model trained on permuted labels in this profile "
            "(experiments.backprop.data_randomisation)",
            "conditions": "no permuted-label net in this profile; " + paper,
        }
    acc = dr.get("shuffled_train_accuracy")
    fit = "not recorded" if acc is None else f"{acc:.2f}"
    conditions = (
        f"{dr['model']} ({_train_text(specs.get(dr['model'], {}))}) vs {dr['shuffled']} "
        f"({_train_text(specs.get(dr['shuffled'], {}))}, labels permuted; training accuracy on "
        f"its permuted labels {fit}, the test needs >= {MEMORISED}); {paper}"
    )
    if acc is None or acc < MEMORISED:
        why = (
            "its training accuracy on them is not recorded (a checkpoint trained before "
            "train_accuracy was; retrain it)"
            if acc is None
            else f"its training accuracy on them is {acc:.2f} (last epoch; chance 1/classes)"
        )
        return {
            "na": f"{dr['shuffled']} has not memorised its permuted labels: {why}, below the "
            f"{MEMORISED} the test needs, so it is near its random initialisation and the test "
            "would be a second model randomisation. Measurable where the permuted-label net "
            "trains until it fits them: the paper profile trains it 60 epochs on the full "
            "training set without weight decay (see its train_accuracy); if that falls short, "
            "it needs more epochs, or fewer training images",
            "conditions": conditions,
        }
    mean = dr["mean_spearman"]
    return stats.claim(
        {dr["model"]: _guided_minus_backprop(dr["spearman"], seed)},
        f"{dr['model']} vs {dr['shuffled']} (permuted labels, training accuracy on them "
        f"{acc:.2f}): mean Spearman of the maps: guided {mean['guided_backprop']:.2f}, backprop "
        f"{mean['backprop']:.2f}, deconvnet {mean['deconvnet']:.2f} ({dr['images']} images)",
        conditions,
    )


def claims(result: Computed) -> dict:
    metrics, top = result.metrics, result.data["randomise_top"]
    specs = result.data.get("specs", {})
    seed = result.data.get("seed", 0)
    sanity = metrics["sanity"]
    at = {r: v[top - 1] for r, v in sanity["mean_spearman"].items()}
    name = sanity["model"]
    out = {
        "guided_insensitive_to_randomisation": stats.claim(
            {name: _guided_minus_backprop(sanity["spearman_at_top"], seed)},
            f"{name}, top {top} layers re-initialised "
            f"({sanity['randomised'][top - 1]}): mean Spearman with the trained model's map: "
            f"guided {at['guided_backprop']:.2f}, backprop {at['backprop']:.2f}, deconvnet "
            f"{at['deconvnet']:.2f} ({sanity['images']} images)",
            f"{name} ({_train_text(specs.get(name, {}))}), {sanity['images']} images, top {top} "
            "layers re-initialised; the paper: Inception v3 on ImageNet",
        )
    }
    out["guided_insensitive_to_label_randomisation"] = _label_randomisation_claim(
        metrics.get("data_randomisation"), specs, seed
    )
    parts, left = {}, {}
    for n, s in metrics["saliency_on_object"].items():
        mass = np.asarray(s["mass_on_item"])
        area = np.asarray(s["item_area"])
        parts[n] = stats.estimate(
            float(mass.mean()),
            stats.bootstrap(mass, seed=seed),
            null=float(area.mean()),
            null_interval=stats.bootstrap(area, seed=seed),
        )
    for n, e in metrics["models"].items():
        if n not in parts:
            left[n] = (
                e.get("note") or f"{specs.get(n, {}).get('dataset') or 'photos'}: no item mask"
            )
    ours = "; ".join(
        f"{n}: {p['value']:.0%} of the saliency on the item, which covers {p['null']:.0%} of "
        f"the image ({len(metrics['saliency_on_object'][n]['mass_on_item'])} images)"
        for n, p in parts.items()
    )
    conditions = (
        f"{', '.join(parts) or 'no model'} on Fashion-MNIST items on black (item = pixels above "
        "0), not ImageNet photos; "
        + ", ".join(f"{n}: {_train_text(specs.get(n, {}))}" for n in parts)
    )
    if parts:
        out["saliency_on_object"] = stats.claim(parts, ours, conditions, left_out=left)
    else:
        out["saliency_on_object"] = {
            "na": "no model of items on black in this profile (no object mask on photos); "
            + "; ".join(f"{n}: {w}" for n, w in left.items()),
            "conditions": conditions,
        }
    return out
