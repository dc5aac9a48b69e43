"""The experiments: one module per workflow rule, named as the rule, each read top to bottom as
its declaration, compute, figures and claims (see `cvinterp.experiments.common`).

`EXPERIMENTS` is the registry the workflow and the config checks read; `run` is what a rule's
script calls.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from cvinterp.experiments import (
    ablation,
    activations,
    actmax,
    backprop,
    deconvnet,
    dissection,
    embedding,
    filters,
    guided_backprop,
    inversion_dip,
    inversion_learned,
    lm_context,
    occlusion,
    top_images,
)
from cvinterp.experiments.common import Declaration, Model, Probe
from cvinterp.results import write_json
from cvinterp.runtime import pick_device, seed_everything

#: Experiment name (= rule name, config key, folder of its figures) -> its module.
EXPERIMENTS: dict[str, ModuleType] = {
    # what one unit does
    "filters": filters,
    "activations": activations,
    "top_images": top_images,
    "deconvnet": deconvnet,
    "guided_backprop": guided_backprop,
    "backprop": backprop,
    "occlusion": occlusion,
    "actmax": actmax,
    # what all units do
    "embedding": embedding,
    "inversion_dip": inversion_dip,
    "inversion_learned": inversion_learned,
    "dissection": dissection,
    # how units matter for the prediction
    "ablation": ablation,
    "lm_context": lm_context,
}


def declaration(name: str) -> Declaration:
    return EXPERIMENTS[name].DECLARATION


def run(
    name: str,
    settings: dict,
    models: dict[str, Model],
    *,
    probe: Probe,
    device: str,
    results: str | Path,
) -> None:
    """Run one experiment of the config: compute, then its figures (and tables) and its
    metrics with the claims, into the results folder `results`."""
    exp = EXPERIMENTS[name]
    seed_everything(probe.seed, probe.threads)
    kwargs = {k: v for k, v in settings.items() if k != "models"}
    result = exp.compute(models, **kwargs, probe=probe, device=pick_device(device))
    results = Path(results)
    (results / "figures" / name).mkdir(parents=True, exist_ok=True)
    exp.figures(result, results / "figures" / name)
    if exp.DECLARATION.tables(settings):
        exp.tables(result, results / "tables" / name)
    write_json(
        results / "metrics" / f"{name}.json", {**result.metrics, "claims": exp.claims(result)}
    )
