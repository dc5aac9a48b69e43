"""What one unit does: the workflow steps of the unit-level figures.

activations (Yosinski 2015), top_images, deconvnet (Zeiler & Fergus 2014), backprop and
guided_backprop (Springenberg 2015, with Adebayo 2018's randomisation check) and occlusion
(Zeiler & Fergus 2014). Each step takes plain arguments from the validated config, reads model
checkpoints and writes its figures and one metrics file whose `claims` feed compare.tsv.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import wilcoxon
from tqdm import tqdm

from cvinterp import figures
from cvinterp.data import load_images, photos
from cvinterp.data.probe import FolderProbe, InMemoryProbe, photo_crops
from cvinterp.methods.backward import RULES, gini, magnitude, project, to_image
from cvinterp.methods.top_images import receptive_field, top_activations
from cvinterp.models import layer_path, load_checkpoint, zoo
from cvinterp.pipeline import IMAGENET_CHECK, centre_square, dataset_kwargs, write_json
from cvinterp.runtime import pick_device, seed_everything


@dataclass
class Probe:
    """Where probe images come from (the config's datasets section, resolved paths)."""

    datasets: dict
    fashion_dir: str | None = None
    cifar_dir: str | None = None
    seed: int = 0
    imagenet_probe: int = 256
    workers: int = 2


@dataclass
class Loaded:
    name: str
    model: torch.nn.Module
    pre: object
    arch: str
    classes: list
    spec: dict
    images: object  # InMemoryProbe | FolderProbe
    size: int
    channels: int
    imagenet: bool  # an ImageNet net (imported or random weights), not one trained here


def load(name: str, checkpoint: str, spec: dict, probe: Probe, device) -> Loaded:
    """A model from its checkpoint, in eval mode, with its probe images."""
    model, pre, ckpt = load_checkpoint(checkpoint, device)
    model.eval()
    imagenet = spec.get("weights", "train") != "train"
    if not imagenet:
        kw = dataset_kwargs(spec["dataset"], probe.datasets, probe.fashion_dir, probe.cifar_dir,
                            probe.seed)  # fmt: skip
        data = load_images(spec["dataset"], "test", **kw)
        images = InMemoryProbe(data, f"{spec['dataset']} test split ({len(data)} images)")
        size = data.images.shape[1]
    else:
        size = pre.input_size
        folder = probe.datasets.get("imagenet_val", {}).get("dir")
        if folder:
            images = FolderProbe(folder, size, probe.imagenet_probe, probe.workers)
        else:
            crops = photo_crops(size, probe.imagenet_probe, probe.seed)
            images = InMemoryProbe(
                crops, f"offline stand-in: {len(crops)} {size}px crops of the 12 bundled photos"
            )
    return Loaded(name, model, pre, ckpt["arch"], ckpt["classes"], spec, images, size,
                  ckpt["in_channels"], imagenet)  # fmt: skip


def _device_and_seed(device: str, threads: int, seed: int):
    seed_everything(seed, threads)
    return pick_device(device)


def _paths(m: Loaded, layers: list[str]) -> list[str]:
    return [layer_path(m.arch, layer) for layer in layers]


def _x(m: Loaded, images: np.ndarray, device) -> torch.Tensor:
    return m.pre(np.asarray(images)).to(device)


def _spread(n_units: int, k: int) -> list[int]:
    """k units spread evenly over a layer's channels (deterministic)."""
    return sorted({int(round(v)) for v in np.linspace(0, n_units - 1, min(k, n_units))})


def _min_difference(per_model: dict[str, float], what: str, fmt: str = ".3f") -> dict:
    """A claim over several models: the weakest model decides (min of the differences)."""
    if not per_model:
        return {"na": f"no model with {what}"}
    text = "; ".join(f"{n}: {v:+{fmt}}" for n, v in per_model.items())
    return {"value": min(per_model.values()), "ours": text}


# --- activations (Yosinski et al. 2015) ----------------------------------------------------


def _showcase(m: Loaded) -> np.ndarray:
    """The input the activation figure shows: a bundled photo for ImageNet nets, else the
    first test image."""
    if m.imagenet:
        return centre_square(photos(["chelsea"])["chelsea"], m.size)
    return m.images.image(0)


@torch.no_grad()
def activations_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], images: int, probe: Probe,
    device: str, threads: int, figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """All channels of each chosen layer as one tiled map (after the ReLU) for one input, and
    the layers' sparsity over `images` probe images."""
    from cvinterp.instrument import Instrument

    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    deeper_sparser = {}
    for name, entry in models.items():
        m = load(name, entry["checkpoint"], entry["spec"], probe, dev)
        paths = _paths(m, layers[name])
        shown = _showcase(m)
        with Instrument(m.model, paths, detach=True, stop_early=True) as ins:
            ins.forward(_x(m, shown[None], dev))
            maps = {p: ins[p][0].clamp(min=0).cpu().numpy() for p in paths}
            zero = dict.fromkeys(paths, 0.0)
            count = 0
            for x in _limit(m.images.batches(m.pre, 64, dev), images):
                ins.forward(x)
                for p in paths:
                    zero[p] += float((ins[p] <= 0).float().mean()) * len(x)
                count += len(x)
        entry_metrics = {"probe": m.images.description, "images": count, "layers": {}}
        panels = [figures.as_rgb(shown)]
        titles = ["input"]
        for layer, p in zip(layers[name], paths, strict=True):
            a = maps[p]
            if a.ndim == 1:  # a fully connected layer: one pixel per unit
                a = a[:, None, None]
            panels.append(figures.tile(a, pad=max(1, a.shape[-1] // 16)))
            titles.append(f"{layer}: {a.shape[0]} channels {a.shape[1]}x{a.shape[2]}")
            entry_metrics["layers"][layer] = {
                "channels": int(a.shape[0]),
                "map": list(a.shape[1:]),
                "fraction_zero": zero[p] / count,
            }
        result["models"][name] = entry_metrics
        _panel_figure(panels, titles, f"{name}: activations of every channel (ReLU output) — "
                      "after Yosinski et al. 2015", f"{figure_dir}/{name}.png")  # fmt: skip
        first, last = layers[name][0], layers[name][-1]
        if first != last:
            lay = entry_metrics["layers"]
            deeper_sparser[name] = lay[last]["fraction_zero"] - lay[first]["fraction_zero"]
    result["claims"]["deeper_layers_sparser"] = _min_difference(
        deeper_sparser, "two or more layers"
    )
    write_json(metrics, result)


def _panel_figure(panels, titles, title, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, panel, t in zip(axes[0], panels, titles, strict=True):
        ax.imshow(panel, cmap="gray", interpolation="nearest")
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    figures.save(fig, path)


# --- top images -----------------------------------------------------------------------------


def _top(m: Loaded, paths: list[str], k: int, max_images: int | None, dev, observe=None):
    n = len(m.images) if max_images is None else min(max_images, len(m.images))
    bar = tqdm(total=n, desc=f"{m.name}: top-{k} images", mininterval=5)
    limited = _limit(m.images.batches(m.pre, 64, dev), n)
    tops = top_activations(m.model, limited, paths, k, progress=bar, observe=observe)
    bar.close()
    return tops, n


def _limit(batches, n: int):
    seen = 0
    for x in batches:
        if seen >= n:
            return
        x = x[: n - seen]
        seen += len(x)
        yield x


@dataclass
class LayerTops:
    layer: str  # paper name
    path: str  # module path
    tops: object  # TopK
    field: object  # Field
    boxes: np.ndarray  # (H*W, 4) receptive field of every feature-map position


def _layer_tops(name, entry, layers, k, max_images, probe, dev, observe=None):
    """Load a model, find the top-k images of every unit of its chosen layers in one pass
    (`observe(path, activations)` sees that pass too), and measure each layer's receptive
    field."""
    m = load(name, entry["checkpoint"], entry["spec"], probe, dev)
    paths = _paths(m, layers)
    tops, n = _top(m, paths, k, max_images, dev, observe)
    out = []
    for layer, p in zip(layers, paths, strict=True):
        field = receptive_field(m.model, p, m.channels, probe=max(96, 2 * m.size))
        out.append(LayerTops(layer, p, tops[p], field, field.boxes(tops[p].shape, (m.size,) * 2)))
    return m, n, out


def _boxed(img: np.ndarray, box) -> np.ndarray:
    """The image with the box's outline drawn in red."""
    a = figures.as_rgb(img).copy()
    t = max(1, a.shape[0] // 64)  # line width
    y0, y1, x0, x1 = (int(v) for v in box)
    red = np.array([1.0, 0.1, 0.1])
    a[y0 : y0 + t, x0:x1] = a[max(y0, y1 - t) : y1, x0:x1] = red
    a[y0:y1, x0 : x0 + t] = a[y0:y1, max(x0, x1 - t) : x1] = red
    return a


def _purity(labels: np.ndarray) -> float:
    """Fraction of labels equal to the most common one."""
    return float(np.bincount(labels).max() / len(labels))


def top_images_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], units: int, k: int,
    max_images: int | None, probe: Probe, device: str, threads: int, figure_dir: str,
    metrics: str,
) -> None:  # fmt: skip
    """The top-k images of chosen units of several layers and the receptive-field crops that
    excite them most; class purity of the top-k per layer."""
    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    purer = {}
    for name, entry in models.items():
        m, n, per_layer = _layer_tops(name, entry, layers[name], k, max_images, probe, dev)
        rng = np.random.default_rng(probe.seed)
        chance = np.mean([_purity(rng.choice(m.images.labels[:n], k)) for _ in range(2000)])
        rows, labels, info = [], [], {"probe": m.images.description, "images": n, "layers": {}}
        info["chance_purity"] = float(chance)
        for lt in per_layer:
            layer, t, field, boxes = lt.layer, lt.tops, lt.field, lt.boxes
            alive = t.values[0] > 0
            purity = [
                _purity(m.images.labels[t.index[:, u].numpy()])
                for u in range(t.values.shape[1])
                if alive[u]
            ]
            info["layers"][layer] = {
                "units": int(t.values.shape[1]),
                "dead_units": int((~alive).sum()),
                "receptive_field": list(field.size),
                "top_k_class_purity": float(np.mean(purity)) if purity else None,
            }
            for u in _spread(t.values.shape[1], units):
                idx, loc = t.index[:, u].numpy(), t.location[:, u].numpy()
                imgs = [m.images.image(int(i)) for i in idx]
                crops = [figures.crop_to(im, boxes[j], 64) for im, j in zip(imgs, loc, strict=True)]
                rows.append([_boxed(imgs[0], boxes[loc[0]])] + crops)
                labels.append(f"{layer} unit {u}\nmax {float(t.values[0, u]):.2g}")
        result["models"][name] = info
        figures.image_rows(rows, labels, f"{name}: top-{k} images per unit (first: top image "
                           "with its receptive field; then the field's crops)",
                           f"{figure_dir}/{name}.png")  # fmt: skip
        lay = info["layers"]
        first, last = layers[name][0], layers[name][-1]
        if first != last and None not in (lay[first]["top_k_class_purity"],
                                           lay[last]["top_k_class_purity"]):  # fmt: skip
            purer[name] = lay[last]["top_k_class_purity"] - lay[first]["top_k_class_purity"]
    result["claims"]["deeper_layers_class_specific"] = _min_difference(purer, "two or more layers")
    write_json(metrics, result)


# --- deconvnet (Zeiler & Fergus 2014) and guided backprop (Springenberg et al. 2015) ---------


@dataclass
class TopActivations:
    """The top activations of chosen units, unit-major (each unit's top-k in a row)."""

    images: np.ndarray  # uint8 (N, H, W, C)
    x: torch.Tensor  # the same, preprocessed, on the device
    unit: torch.Tensor  # (N,)
    location: torch.Tensor  # (N,) flat feature-map position
    box: np.ndarray  # (N, 4) receptive field at that position


def _top_activations_of(m: Loaded, lt: LayerTops, chosen: list[int], dev) -> TopActivations:
    """Read each chosen unit's top-k images once, for every projection of them."""
    idx = lt.tops.index[:, chosen].T.reshape(-1).numpy()
    loc = lt.tops.location[:, chosen].T.reshape(-1)
    images = np.stack([m.images.image(int(i)) for i in idx])
    unit = torch.tensor(chosen).repeat_interleave(lt.tops.index.shape[0])
    return TopActivations(images, _x(m, images, dev), unit.to(dev), loc.to(dev),
                          lt.boxes[loc.numpy()])  # fmt: skip


def _projections(m: Loaded, lt: LayerTops, top: TopActivations, rule: str,
                 maxpool: str = "switches") -> torch.Tensor:  # fmt: skip
    """Projections of all the top activations, one batch for all of them."""
    maps, _ = project(m.model, top.x, lt.path, top.unit, rule, maxpool=maxpool,
                      locations=top.location)  # fmt: skip
    return maps.cpu()


def _edge_correlation(images: np.ndarray, maps: torch.Tensor, boxes) -> np.ndarray:
    """Spearman correlation, inside each box, of the projection's magnitude with the image's
    gradient magnitude (Sobel on the grey image)."""
    from scipy.ndimage import sobel
    from scipy.stats import spearmanr

    out = []
    mag = magnitude(maps).numpy()
    for img, mm, (y0, y1, x0, x1) in zip(images, mag, boxes, strict=True):
        grey = figures.as_rgb(img).mean(-1)
        edges = np.hypot(sobel(grey, 0), sobel(grey, 1))[y0:y1, x0:x1].ravel()
        proj = mm[y0:y1, x0:x1].ravel()
        ok = edges.std() > 0 and proj.std() > 0
        out.append(spearmanr(edges, proj).statistic if ok else 0.0)
    return np.array(out)


def _has_maxpool(model) -> bool:
    return any(isinstance(mod, (torch.nn.MaxPool2d, torch.nn.AdaptiveMaxPool2d))
               for mod in model.modules())  # fmt: skip


def deconvnet_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], units: int, k: int,
    max_images: int | None, probe: Probe, device: str, threads: int, figure_dir: str,
    metrics: str,
) -> None:  # fmt: skip
    """Zeiler & Fergus Fig. 2: for chosen units of several layers, the deconvnet projections of
    their top-k activations beside the receptive-field crops; and the same with unpooling
    without switches, measured by how well the projection follows the image's edges."""
    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    switch_gain = {}
    for name, entry in models.items():
        m, n, per_layer = _layer_tops(name, entry, layers[name], k, max_images, probe, dev)
        pooled = _has_maxpool(m.model)
        info = {"probe": m.images.description, "images": n, "has_maxpool": pooled, "layers": {}}
        rows, labels = [], []
        for lt in per_layer:
            layer = lt.layer
            chosen = _spread(lt.tops.values.shape[1], units)
            top = _top_activations_of(m, lt, chosen, dev)
            maps = _projections(m, lt, top, "deconvnet")
            shown = to_image(maps, bgr=m.pre.bgr).numpy()
            imgs, box = top.images, top.box
            kk = len(imgs) // len(chosen)
            for j, u in enumerate(chosen):
                s = slice(j * kk, (j + 1) * kk)
                proj = [figures.crop_to(a, b, 64) for a, b in zip(shown[s], box[s], strict=True)]
                crops = [figures.crop_to(a, b, 64) for a, b in zip(imgs[s], box[s], strict=True)]
                rows.append(proj + crops)
                labels.append(f"{layer} unit {u}")
            layer_info = {"units": chosen, "receptive_field": list(lt.field.size),
                          "edge_correlation_switches": float(
                              np.mean(_edge_correlation(imgs, maps, box)))}  # fmt: skip
            if pooled:
                flat = _projections(m, lt, top, "deconvnet", "uniform")
                layer_info["edge_correlation_no_switches"] = float(
                    np.mean(_edge_correlation(imgs, flat, box))
                )
            info["layers"][layer] = layer_info
        result["models"][name] = info
        figures.image_rows(
            rows, labels, f"{name}: deconvnet projections of each unit's top-{k} activations "
            f"(left) and their receptive fields (right) — after Zeiler & Fergus 2014 Fig. 2",
            f"{figure_dir}/{name}.png",
        )  # fmt: skip
        deepest = info["layers"][layers[name][-1]]
        if pooled:
            switch_gain[name] = (
                deepest["edge_correlation_switches"] - deepest["edge_correlation_no_switches"]
            )
    result["claims"]["switches_keep_image_structure"] = _min_difference(switch_gain, "max-pooling")
    write_json(metrics, result)


def guided_backprop_experiment(
    models: dict[str, dict], *, layers: dict[str, list[str]], units: int, k: int,
    max_images: int | None, test_error: dict | None, probe: Probe, device: str, threads: int,
    figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Springenberg et al. Fig. 3/4: backprop, deconvnet and guided backprop side by side for
    the top activations of chosen units; sharpness (Gini) of each; All-CNN-C's test error."""
    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    rules = list(RULES)
    sharpness: dict[str, dict[str, list]] = {}
    for name, entry in models.items():
        sharpness[name] = {r: [] for r in rules}
        m, n, per_layer = _layer_tops(name, entry, layers[name], k, max_images, probe, dev)
        info = {"probe": m.images.description, "images": n, "layers": {}}
        rows, labels = [], []
        for lt in per_layer:
            layer = lt.layer
            chosen = _spread(lt.tops.values.shape[1], units)
            top = _top_activations_of(m, lt, chosen, dev)
            per_rule = {r: _projections(m, lt, top, r) for r in rules}
            imgs, box = top.images, top.box
            layer_info = {"units": chosen}
            for r in rules:
                mag = magnitude(per_rule[r])
                g = [float(gini(mag[i : i + 1, b[0] : b[1], b[2] : b[3]])[0])
                     for i, b in enumerate(box)]  # fmt: skip
                sharpness[name][r] += g
                layer_info[f"gini_{r}"] = float(np.median(g))
            info["layers"][layer] = layer_info
            shown = {r: to_image(per_rule[r], bgr=m.pre.bgr).numpy() for r in rules}
            kk = len(imgs) // len(chosen)
            for j, u in enumerate(chosen):
                row = []
                for i in range(j * kk, (j + 1) * kk):
                    row.append(figures.crop_to(imgs[i], box[i], 64))
                    row += [figures.crop_to(shown[r][i], box[i], 64) for r in rules]
                rows.append(row)
                labels.append(f"{layer} unit {u}")
        result["models"][name] = info
        cols = ["image", "backprop", "deconvnet", "guided"] * k
        figures.image_rows(rows, labels, f"{name}: backprop, deconvnet and guided backprop of "
                           f"each unit's top-{k} activations — after Springenberg et al. 2015",
                           f"{figure_dir}/{name}.png", col_labels=cols)  # fmt: skip
    med = {n: {r: float(np.median(v)) for r, v in per.items()} for n, per in sharpness.items()}
    result["median_gini"] = med
    claims = result["claims"]
    for other in ("backprop", "deconvnet"):
        gain = {n: g["guided_backprop"] - g[other] for n, g in med.items()}
        claims[f"guided_sharper_than_{other}"] = {
            "value": min(gain.values()),
            "ours": "; ".join(
                f"{n}: guided {g['guided_backprop']:.3f} vs {other} {g[other]:.3f} "
                f"({len(sharpness[n][other])} unit-image pairs)"
                for n, g in med.items()
            ),
        }
    claims["all_cnn_c_test_error"] = _test_error(test_error)
    write_json(metrics, result)


def _test_error(test_error: dict | None) -> dict:
    if not test_error:
        return {"na": "no All-CNN-C model named in experiments.guided_backprop.test_error_model"}
    data = json.loads(open(test_error["metrics"]).read())
    err = 100 * (1 - data["test_accuracy"])
    if test_error["dataset"] != "cifar10":
        return {"na": f"{test_error['model']} is trained on {test_error['dataset']}, not "
                f"CIFAR-10 (test error {err:.2f}% after {len(data.get('history', []))} epochs); "
                "the paper profile trains All-CNN-C on CIFAR-10"}  # fmt: skip
    return {"value": err, "ours": f"{test_error['model']}: {err:.2f}% CIFAR-10 test error"}


# --- backprop: class maps and the randomisation sanity check (Adebayo et al. 2018) -----------


def _probe_images(m: Loaded, n: int) -> np.ndarray:
    """The first n labelled probe images; offline, an ImageNet net's bundled photos of known
    class (uint8 NHWC)."""
    if m.imagenet and not isinstance(m.images, FolderProbe):
        photo = photos(list(IMAGENET_CHECK)).values()
        return np.stack([centre_square(im, m.size) for im in photo])[:n]
    return np.stack([m.images.image(i) for i in range(min(n, len(m.images)))])


def _class_images(m: Loaded, n: int, dev):
    """Images and the class each map explains: labelled images (true class) for a model trained
    here or an ImageNet net with a validation folder; offline, the bundled photos of known
    ImageNet class (the most probable of their classes)."""
    imgs = _probe_images(m, n)
    if m.imagenet and not isinstance(m.images, FolderProbe):
        with torch.no_grad():
            prob = m.model(_x(m, imgs, dev)).softmax(1).cpu()
        classes = [max(ids, key=lambda c, i=i: prob[i, c]) for i, ids in
                   zip(range(len(imgs)), IMAGENET_CHECK.values(), strict=False)]  # fmt: skip
        return imgs, torch.tensor(classes)
    return imgs, torch.as_tensor(m.images.labels[: len(imgs)])


def backprop_experiment(
    models: dict[str, dict], *, images: int, sanity: dict, probe: Probe, device: str,
    threads: int, figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Class maps of the three backward rules side by side, and the cascading randomisation
    of `sanity['model']`'s layers from the top."""
    from cvinterp.methods.sanity import cascading_randomisation

    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    rules = list(RULES)
    loaded = {}
    for name, entry in models.items():
        m = loaded[name] = load(name, entry["checkpoint"], entry["spec"], probe, dev)
        imgs, classes = _class_images(m, images, dev)
        x = _x(m, imgs, dev)
        maps = {r: project(m.model, x, None, classes.to(dev), r)[0].cpu() for r in rules}
        shown = {r: to_image(maps[r], bgr=m.pre.bgr).numpy() for r in rules}
        rows = [[imgs[i]] + [shown[r][i] for r in rules] for i in range(len(imgs))]
        labels = [str(m.classes[int(c)]) for c in classes]
        figures.image_rows(rows, labels, f"{name}: class maps — backprop, deconvnet, guided "
                           "backprop", f"{figure_dir}/{name}.png",
                           col_labels=["image"] + rules, cell=1.5)  # fmt: skip
        mags = {r: magnitude(maps[r]) for r in rules}
        result["models"][name] = {
            "images": len(imgs),
            "median_gini": {r: float(gini(mags[r]).median()) for r in rules},
        }
    # sanity check
    name, top = sanity["model"], sanity["randomise_top"]
    m = loaded[name]
    top_down = list(reversed(list(zoo()[m.arch]["layers"].items())))
    if top > len(top_down):
        raise ValueError(f"sanity.randomise_top = {top}, but {m.arch} has {len(top_down)} layers")
    imgs, classes = _class_images(m, sanity["images"], dev)
    sims = cascading_randomisation(
        m.model, _x(m, imgs, dev), classes.to(dev), [p for _, p in top_down], rules, probe.seed
    )
    steps = [f"{layer} and above" for layer, _ in top_down]
    mean = {r: sims[r].mean(1).tolist() for r in rules}
    result["sanity"] = {"model": name, "images": len(imgs), "randomised": steps,
                        "mean_spearman": mean}  # fmt: skip
    _sanity_figure(steps, mean, name, f"{figure_dir}/randomisation.png")
    at = {r: mean[r][top - 1] for r in rules}
    result["claims"]["guided_insensitive_to_randomisation"] = {
        "value": at["guided_backprop"] - at["backprop"],
        "ours": f"{name}, top {top} layers re-initialised ({steps[top - 1]}): mean Spearman "
        f"with the trained model's map: guided {at['guided_backprop']:.2f}, backprop "
        f"{at['backprop']:.2f}, deconvnet {at['deconvnet']:.2f} ({len(imgs)} images)",
    }
    write_json(metrics, result)


def _sanity_figure(steps, mean, name, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r, v in mean.items():
        ax.plot(range(len(steps)), v, marker="o", label=r)
    ax.set_xticks(range(len(steps)), steps, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Spearman with trained map")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: cascading randomisation (Adebayo et al. 2018)", fontsize=9)
    figures.save(fig, path)


# --- occlusion (Zeiler & Fergus 2014 Fig. 7) -------------------------------------------------


def occlusion_experiment(
    models: dict[str, dict], *, settings: dict[str, dict], images: int, claim_images: int,
    probe: Probe, device: str, threads: int, figure_dir: str, metrics: str,
) -> None:  # fmt: skip
    """Occlusion maps for a few images per model; and, for models trained on centred items on
    a black background (Fashion-MNIST), whether occluding the item lowers p(true class) more
    than occluding the background, over `claim_images` correctly classified test images."""
    from cvinterp.methods.occlusion import object_vs_background, occlusion

    dev = _device_and_seed(device, threads, probe.seed)
    result: dict = {"models": {}, "claims": {}}
    claim = None
    for name, entry in models.items():
        m = load(name, entry["checkpoint"], entry["spec"], probe, dev)
        s = settings[name]
        p = layer_path(m.arch, s["layer"])
        imgs, classes = _class_images(m, images, dev)
        shown = []
        for img, c in zip(imgs, classes, strict=True):
            om = occlusion(m.model, _x(m, img[None], dev)[0], int(c), p, window=s["window"],
                           stride=s["stride"])  # fmt: skip
            shown.append((img, int(c), om))
        _occlusion_figure(m, shown, s, f"{figure_dir}/{name}.png")
        info = {"window": s["window"], "stride": s["stride"], "layer": s["layer"],
                "p_true_clean": [om.p_true_clean for _, _, om in shown],
                "p_true_min": [float(om.p_true.min()) for _, _, om in shown]}  # fmt: skip
        if entry["spec"].get("dataset") == "fashion_mnist":
            drops = []
            data = m.images.data
            with torch.no_grad():
                pred = torch.cat([m.model(x).argmax(1).cpu()
                                  for x in m.images.batches(m.pre, 256, dev)])  # fmt: skip
            correct = np.flatnonzero(pred.numpy() == data.labels)[:claim_images]
            for i in tqdm(correct, desc=f"{name}: occlusion claim", mininterval=5):
                om = occlusion(
                    m.model,
                    _x(m, data.images[i : i + 1], dev)[0],
                    int(data.labels[i]),
                    p,
                    window=s["window"],
                    stride=s["stride"],
                )
                mask = data.images[i, :, :, 0] > 25  # the item: everything not black
                d = object_vs_background(om, mask)
                if d is not None:
                    drops.append(d)
            if not drops:
                raise ValueError(f"{name}: no correctly classified test image has both item and "
                                 "background positions; lower the occlusion window")  # fmt: skip
            d = np.array(drops)
            test = wilcoxon(d[:, 0], d[:, 1], alternative="greater")
            info["object_vs_background"] = {
                "images": len(d), "mean_drop_object": float(d[:, 0].mean()),
                "mean_drop_background": float(d[:, 1].mean()),
                "wilcoxon_p": float(test.pvalue),
            }  # fmt: skip
            if claim is None:
                claim = {
                    "value": float(test.pvalue),
                    "ours": f"{name}: mean drop of p(true class) {d[:, 0].mean():.3f} with the "
                    f"square on the item vs {d[:, 1].mean():.3f} on the background "
                    f"({len(d)} correctly classified test images; one-sided Wilcoxon "
                    f"p = {test.pvalue:.2g})",
                }
        result["models"][name] = info
    result["claims"]["object_occlusion_hurts_more"] = claim or {
        "na": "no model trained on Fashion-MNIST, where the item's region is known"
    }
    write_json(metrics, result)


def _occlusion_figure(m: Loaded, shown, s, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shown), 4, figsize=(11, 2.8 * len(shown)), squeeze=False)
    for row, (img, c, om) in zip(axes, shown, strict=True):
        row[0].imshow(figures.as_rgb(img))
        row[0].set_title(f"true: {m.classes[c]}", fontsize=8)
        im = row[1].imshow(om.p_true, cmap="jet", vmin=0, vmax=max(om.p_true.max(), 1e-6))
        row[1].set_title(f"p(true) (clean {om.p_true_clean:.2f})", fontsize=8)
        fig.colorbar(im, ax=row[1], fraction=0.046)
        labels, codes = np.unique(om.label, return_inverse=True)
        row[2].imshow(codes.reshape(om.label.shape), cmap="tab10", vmin=0, vmax=9,
                      interpolation="nearest")  # fmt: skip
        names = ", ".join(str(m.classes[int(v)])[:14] for v in labels[:5])
        row[2].set_title(f"most likely label ({names})", fontsize=7)
        im = row[3].imshow(om.feature, cmap="jet")
        row[3].set_title(f"{s['layer']} map {om.feature_unit}: total activation", fontsize=8)
        fig.colorbar(im, ax=row[3], fraction=0.046)
        for ax in row:
            ax.axis("off")
    fig.suptitle(f"{m.name}: occlusion with a {s['window']}px grey square, stride "
                 f"{s['stride']} — after Zeiler & Fergus 2014 Fig. 7", fontsize=9)  # fmt: skip
    figures.save(fig, path)
