"""inversion_dip: a layer's features of an image inverted with a deep image prior (Ulyanov et al.
2018), against a total-variation prior (Mahendran & Vedaldi 2015); how far the reconstruction is
from the image, layer by layer."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.experiments.common import (
    Computed,
    Declaration,
    Model,
    Probe,
    depth_trend,
    from_unit,
    load,
    module_path,
    probe_images,
    to_unit,
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
    metrics: dict = {
        "models": {},
        "dtype": str(dtype).split(".")[-1],
        "iterations": iterations,
        "seed": probe.seed,
    }
    shown, per_image = {}, {}
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
        per_image[name] = {}
        for j, layer in enumerate(names):
            sel = [q for q, (_, jj) in enumerate(pairs) if jj == j]  # image order
            row = {}
            for key, r in (("dip", dip), ("tv", base)):
                rmse = (r.images[sel] - orig[sel]).flatten(1).pow(2).mean(1).sqrt()
                row[f"{key}_pixel_rmse"] = float(rmse.mean())
                per_image[name].setdefault(layer, {})[key] = rmse.double().cpu().numpy()
                row[f"{key}_feature_error"] = float(r.feature_error[sel].mean())
            info["layers"][layer] = row
        info["dip_loss_history"] = dip.history
        metrics["models"][name] = info
        shown[name] = {
            "images": x.cpu(),
            "layers": names,
            "inversions": {"deep image prior": dip.images.cpu(), "TV prior": base.images.cpu()},
        }
    return Computed(metrics, {"shown": shown, "pixel_rmse": per_image})


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
    """dip_error_grows_with_depth: per model, the depth trend of the deep-image-prior pixel
    RMSE over its layers (the input left out: an identity); dip_closer_than_tv: per model, the
    TV-prior pixel RMSE minus the deep-image-prior one, each image's mean over layers, mean
    over images with a paired bootstrap interval over the images. The weakest model decides."""
    seed = int(result.metrics.get("seed", 0))
    per = result.data["pixel_rmse"]
    trend, gap, left_out, t_text, g_text = {}, {}, {}, [], []
    for name, lay in per.items():
        deep = [layer for layer in lay if layer != "input"]
        n_images = len(next(iter(lay.values()))["dip"])
        if len(deep) >= 2:
            est = trend[name] = depth_trend([lay[layer]["dip"] for layer in deep], seed)
            t_text.append(
                f"{name}: Spearman {est['value']:+.2f}"
                + f" {stats.interval_text(est, '+.2f')}"
                + f" over {len(deep)} layers ("
                + ", ".join(f"{layer} {np.mean(lay[layer]['dip']):.3f}" for layer in deep)
                + f"), {n_images} image(s)"
            )
        else:
            left_out[name] = "fewer than two layers beyond the input"
        diff = np.mean([lay[layer]["tv"] - lay[layer]["dip"] for layer in lay], axis=0)
        ci = stats.bootstrap(diff, np.mean, seed=seed)  # one image: spread unknown
        gap[name] = stats.estimate(float(diff.mean()), ci)
        g_text.append(
            f"{name}: TV minus DIP pixel RMSE {diff.mean():+.3f}"
            + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if np.isfinite(ci[0]) else "")
            + f" (mean over {len(lay)} layers, {len(diff)} image(s))"
        )
    info = result.metrics["models"]
    iters = result.metrics.get("iterations")
    conditions = (
        (
            f"{iters} of the paper's 3,100 iterations (too few for the reconstructions to "
            "converge: at this budget the claim cannot be measured meaningfully); "
            if iters and iters < 3100
            else ""
        )
        + "; ".join(f"{n}: {v['images']} image(s) at {v['size']} px" for n, v in info.items())
        + (" (one image: no interval)" if any(v["images"] < 2 for v in info.values()) else "")
        + "; the paper: AlexNet at 227 px"
    )
    return {
        "dip_error_grows_with_depth": stats.claim(
            trend,
            "deep-image-prior pixel RMSE by layer — " + "; ".join(t_text),
            conditions,
            left_out=left_out,
        ),
        "dip_closer_than_tv": stats.claim(gap, "; ".join(g_text), conditions),
    }
