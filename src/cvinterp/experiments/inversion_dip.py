"""inversion_dip: a layer's features of an image inverted with a deep image prior (Ulyanov et al.
2018), against a total-variation prior (Mahendran & Vedaldi 2015); how far the reconstruction is
from the image, layer by layer."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    from_unit,
    load,
    module_path,
    probe_images,
    to_unit,
    trend_claim,
)
from cvinterp.methods import inversion as inv

DECLARATION = Declaration(input_layer=True)


def compute(
    models: dict[str, Model],
    *,
    images: int,
    iterations: int,
    lr: float,
    generator: dict,
    tv: dict,
    float64: bool,
    probe: Probe,
    device,
) -> Computed:
    """Each listed layer's features of `images` labelled images (at the model's `size`, default
    its input size) inverted with both priors; per layer the pixel RMSE (on [0, 1]) and the
    relative feature error of the reconstructions."""
    dtype = torch.float64 if float64 else torch.float32
    metrics: dict = {"models": {}, "dtype": str(dtype).split(".")[-1]}
    shown = {}
    for name, model in models.items():
        m = load(model, probe, device, frozen=True)
        m.model.to(dtype)
        size = model.settings.get("size") or m.size
        x = to_unit(probe_images(m, images))
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        x = x.to(device).to(dtype)
        names = model.settings["layers"]
        paths = [module_path(m, layer) for layer in names]
        # one inversion per (image, layer), image-major
        pairs = [(i, j) for i in range(len(x)) for j in range(len(names))]
        with torch.no_grad():
            per_layer = inv.features(m.model, m.pre.from_unit(x), paths)
        targets = [per_layer[j][i : i + 1] for i, j in pairs]
        # the same problem for both priors: the net, its input map, targets, layers, image shape
        problem = (
            m.model,
            m.pre.from_unit,
            targets,
            [paths[j] for _, j in pairs],
            size,
            m.channels,
        )
        common = dict(seed=probe.seed, dtype=dtype)
        bar = tqdm(total=iterations, desc=f"{name}: deep image prior", mininterval=5)
        dip = inv.dip_invert(
            *problem,
            generator=generator,
            iterations=iterations,
            lr=lr,
            input_depth=generator["input_depth"],
            progress=bar,
            **common,
        )
        bar.close()
        tv_iters = tv["iterations"] or iterations
        bar = tqdm(total=tv_iters, desc=f"{name}: TV prior", mininterval=5)
        base = inv.tv_invert(
            *problem,
            iterations=tv_iters,
            tv_weight=tv["weight"],
            beta=tv["beta"],
            lr=tv["lr"],
            progress=bar,
            **common,
        )
        bar.close()
        orig = torch.stack([x[i] for i, _ in pairs])
        info = {"size": size, "images": len(x), "layers": {}}
        for j, layer in enumerate(names):
            sel = [q for q, (_, jj) in enumerate(pairs) if jj == j]
            row = {}
            for key, r in (("dip", dip), ("tv", base)):
                rmse = (r.images[sel] - orig[sel]).flatten(1).pow(2).mean(1).sqrt()
                row[f"{key}_pixel_rmse"] = float(rmse.mean())
                row[f"{key}_feature_error"] = float(r.feature_error[sel].mean())
            info["layers"][layer] = row
        info["dip_loss_history"] = dip.history
        metrics["models"][name] = info
        shown[name] = {
            "images": x.cpu(),
            "layers": names,
            "inversions": {"deep image prior": dip.images.cpu(), "TV prior": base.images.cpu()},
        }
    return Computed(metrics, {"shown": shown})


def figures(result: Computed, figure_dir) -> None:
    """A row per (image, prior): the original, then its inversion from each layer."""
    for name, s in result.data["shown"].items():
        x, names = s["images"], s["layers"]
        rows, labels = [], []
        for i in range(len(x)):
            for key, imgs in s["inversions"].items():
                row = torch.cat([x[i : i + 1], imgs[i * len(names) : (i + 1) * len(names)]])
                rows.append([fig.as_rgb(im) for im in from_unit(row.float())])
                labels.append(f"image {i + 1}\n{key}")
        fig.image_rows(
            rows,
            labels,
            f"{name}: inverting features with a deep image prior (Ulyanov et al. 2018) and a TV "
            "prior (Mahendran & Vedaldi 2015)",
            figure_dir / f"{name}.png",
            col_labels=["original", *names],
            cell=1.6,
        )


def claims(result: Computed) -> dict:
    per = {n: info["layers"] for n, info in result.metrics["models"].items()}
    dip_error = {
        n: {layer: v["dip_pixel_rmse"] for layer, v in lay.items() if layer != "input"}
        for n, lay in per.items()
    }
    dip_vs_tv = {
        n: float(np.mean([v["tv_pixel_rmse"] - v["dip_pixel_rmse"] for v in lay.values()]))
        for n, lay in per.items()
    }
    return {
        "dip_error_grows_with_depth": trend_claim(
            dip_error, "deep-image-prior pixel RMSE by layer"
        ),
        "dip_closer_than_tv": {
            "value": min(dip_vs_tv.values()),
            "ours": "; ".join(
                f"{n}: TV minus DIP pixel RMSE {v:+.3f} (mean over layers)"
                for n, v in dip_vs_tv.items()
            ),
        },
    }
