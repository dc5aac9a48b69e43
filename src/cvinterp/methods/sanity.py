"""Model-randomisation sanity check (Adebayo et al. 2018), for the three backward rules.

Cascading randomisation: re-initialise the layers from the top (logits) down, one more layer at
each step, and compare each class map with the trained model's map of the same image and class.
A map that explains the model should change when its weights do. Similarity is the Spearman rank
correlation of the pixel magnitudes (Adebayo et al.'s "absolute value" variant), per image.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from cvinterp.instrument import gradients_on
from cvinterp.methods.backward import magnitude, project


def reinitialise(module: nn.Module, seed: int) -> None:
    """Fresh weights for every parameterised submodule, seeded; the caller's random state is
    left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def rank_similarity(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation of the pixel magnitudes of two batches of maps, per image. A
    constant map (e.g. all zero once the randomised net's ReLUs are all off) keeps nothing of
    the other: its similarity is 0."""
    ma, mb = magnitude(a).flatten(1).cpu().numpy(), magnitude(b).flatten(1).cpu().numpy()
    return np.array(
        [
            spearmanr(u, v).statistic if u.std() > 0 and v.std() > 0 else 0.0
            for u, v in zip(ma, mb, strict=True)
        ]
    )


def cascading_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor,
    layers_top_down: list[str],
    rules: list[str],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """For each rule, (steps, images) similarity to the trained model's map; step s has the
    top s+1 layers of `layers_top_down` (module paths) re-initialised. Works under
    `torch.no_grad()` and `torch.inference_mode()`."""
    with gradients_on():  # the randomised copy's weights must not be inference tensors
        original = {r: project(model, x, None, classes, r)[0] for r in rules}
        randomised = copy.deepcopy(model)
        sims = {r: [] for r in rules}
        for step, path in enumerate(layers_top_down):
            reinitialise(randomised.get_submodule(path), seed + step)
            for r in rules:
                maps = project(randomised, x, None, classes, r)[0]
                sims[r].append(rank_similarity(original[r], maps))
    return {r: np.stack(v) for r, v in sims.items()}
