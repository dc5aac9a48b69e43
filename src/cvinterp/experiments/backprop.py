"""backprop: class maps of the three backward rules side by side (Simonyan et al. 2014;
Springenberg et al. 2015), and the cascading randomisation of one model's layers from the top
(Adebayo et al. 2018's sanity check)."""

from __future__ import annotations

from cvinterp import figures as fig
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    class_images,
    inputs,
    load,
)
from cvinterp.methods.backward import RULES, gini, magnitude, project, to_image
from cvinterp.methods.sanity import cascading_randomisation
from cvinterp.models import zoo

DECLARATION = Declaration(
    figures=lambda settings: [*settings["models"], "randomisation"],
    model_references=("sanity.model",),
    short=True,
)


def compute(
    models: dict[str, Model], *, images: int, sanity: dict, probe: Probe, device
) -> Computed:
    """Each model's class maps of `images` labelled images under the three rules and their
    sharpness (Gini); then `sanity['model']`'s layers re-initialised one by one from the top,
    and the rank correlation of each rule's maps with the trained model's."""
    rules = list(RULES)
    metrics: dict = {"models": {}}
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
    }
    return Computed(metrics, {"shown": shown, "randomise_top": top})


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


def claims(result: Computed) -> dict:
    sanity, top = result.metrics["sanity"], result.data["randomise_top"]
    at = {r: v[top - 1] for r, v in sanity["mean_spearman"].items()}
    return {
        "guided_insensitive_to_randomisation": {
            "value": at["guided_backprop"] - at["backprop"],
            "ours": f"{sanity['model']}, top {top} layers re-initialised "
            f"({sanity['randomised'][top - 1]}): mean Spearman with the trained model's map: "
            f"guided {at['guided_backprop']:.2f}, backprop {at['backprop']:.2f}, deconvnet "
            f"{at['deconvnet']:.2f} ({sanity['images']} images)",
        }
    }
