"""Train a classifier from scratch, or pretrain a fully connected net's hidden layers without
labels (greedy layer-wise denoising auto-encoders): seeded, deterministic on the CPU, resumable
per epoch."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cvinterp.data import ImageData
from cvinterp.models import Preprocessing, build


def channel_stats(data: ImageData) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images on the [0, 1] scale."""
    c = data.images.shape[-1]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(data), 4096):  # in chunks: paper-scale sets stay small in memory
        x = data.images[i : i + 4096].reshape(-1, c).astype(np.float64) / 255.0
        total, sq, n = total + x.sum(0), sq + (x * x).sum(0), n + len(x)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0))
    return mean.round(4).tolist(), std.clip(1e-3).round(4).tolist()


class Batches:
    """A split's uint8 images and labels, cut into batches for `device`.

    On a CUDA device the images are copied there once when they take under a quarter of its
    free memory (no copy per batch; the paper's training sets take 150 MB at most), else held
    in pinned host memory and each batch copied without blocking; the labels are copied once.
    Elsewhere a batch is cut from the arrays as they are. The pixels are the same either way,
    and `pre` normalises them with the same float32 operations on any device."""

    def __init__(self, data: ImageData, device: torch.device):
        self.device = torch.device(device)
        self.images, self.labels = data.images, torch.as_tensor(data.labels)
        if self.device.type == "cuda":
            images = torch.from_numpy(np.ascontiguousarray(data.images))
            if images.nbytes <= torch.cuda.mem_get_info(self.device)[0] / 4:
                self.images = images.to(self.device)
            else:
                self.images = images.pin_memory()
            self.labels = self.labels.to(self.device)

    def __call__(self, index: torch.Tensor, pre: Preprocessing) -> tuple[torch.Tensor, ...]:
        """(preprocessed images, labels) of the items `index` (a CPU tensor of positions)."""
        if isinstance(self.images, np.ndarray):
            x = pre(self.images[index.numpy()]).to(self.device)
            return x, self.labels[index].to(self.device)
        if self.images.device.type == "cpu":  # pinned: gathered into pinned memory
            batch = torch.empty(
                (len(index), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=True
            )
            torch.index_select(self.images, 0, index, out=batch)
            x = batch.to(self.device, non_blocking=True)
        else:
            x = self.images[index.to(self.device)]
        return pre(x), self.labels[index.to(self.device)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 512,
) -> dict:
    """Top-1 accuracy and mean cross-entropy over `data`."""
    model.eval()
    correct, loss = 0, 0.0
    feed = Batches(data, device)
    for i in range(0, len(data), batch_size):
        x, y = feed(torch.arange(i, min(i + batch_size, len(data))), pre)
        out = model(x)
        loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    return {"accuracy": correct / len(data), "loss": loss / len(data), "n": len(data)}


def relative_change(initial: dict, final: dict) -> dict:
    """||W - W0|| / ||W0|| for every weight tensor: how far training moved it from its init."""
    return {
        k: round(float((final[k] - w0).norm() / w0.norm().clamp_min(1e-12)), 4)
        for k, w0 in initial.items()
        if k.endswith("weight")
    }


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _run_key(arch: str, arch_args: dict, train_args: dict, seed: int, train: ImageData) -> str:
    """Identity of a training run: settings, seed and a fingerprint of the training data."""
    h = hashlib.sha256(json.dumps([arch, arch_args, train_args, seed], sort_keys=True).encode())
    h.update(train.labels.tobytes())
    h.update(np.ascontiguousarray(train.images[:: max(1, len(train) // 256)]).tobytes())
    return h.hexdigest()[:16]


def read_state(path: Path) -> dict | None:
    """A saved training state (weights-only), or None with a message when it is unreadable (a
    crash while writing, a damaged disk): training then starts afresh rather than failing."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        print(f"ignoring {path}: unreadable ({type(err).__name__}); training from the start")
        return None
    return saved if isinstance(saved, dict) else None


def write_state(path: Path, payload: dict) -> None:
    """Save a training state for `read_state`, atomically: written beside the file and moved
    over it, so an interruption never leaves half a state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def train_classifier(
    arch: str,
    arch_args: dict,
    train: ImageData,
    test: ImageData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    lr_milestones: list[int],
    seed: int,
    device: torch.device,
    resume_path: str | Path | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    snapshots: list[int] = (),
    run_seed: int | None = None,
    shuffle_labels: bool = False,
):
    """Train `arch` on `train` with SGD; return (model, preprocessing, metrics, snapshots).

    run_seed: the seed of this run instead of `seed` (another training run of the same net).
    shuffle_labels: train on the labels permuted at random (seeded by the run's seed), a model
    that learns nothing about its classes (Adebayo et al. 2018's data randomisation); the test
    split keeps its true labels.

    snapshots: optimizer steps after which a copy of the weights is kept (0: the
    initialisation); returned as {step: state dict on the CPU}, kept across a resume, for
    looking at a representation over training (Bau et al. 2017, Fig. 10). Steps beyond the run
    are ignored.

    After every epoch the full training state is written to `resume_path`; a later call with
    the same arguments continues from there and ends with the same weights as an
    uninterrupted run (shuffling and dropout of epoch e depend only on (seed, e)).
    `stop_after_epoch` ends the run early (as an interruption would), returning None.

    Metrics: `train_accuracy` is the accuracy on the last epoch's training batches as they were
    trained (dropout on), on the labels trained on: with shuffle_labels, how far the net has
    memorised the permuted labels.
    """
    if run_seed is not None:
        seed = run_seed
    mean, std = channel_stats(train)
    pre = Preprocessing(1.0, mean, std, False, train.images.shape[1])
    torch.manual_seed(seed)
    in_channels = train.images.shape[-1]
    model = build(arch, len(train.classes), in_channels, **arch_args).to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, lr_milestones, 0.1)
    train_args = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_milestones=lr_milestones,
    )
    if snapshots:
        train_args["snapshots"] = sorted(set(snapshots))
    if shuffle_labels:  # (only when set: the keys of earlier runs stay what they were)
        train_args["shuffle_labels"] = True
    key = _run_key(arch, arch_args, train_args, seed, train)
    start_epoch, history = 0, []
    kept = {0: _cpu(initial)} if 0 in snapshots else {}
    resume_path = Path(resume_path) if resume_path else None
    state = read_state(resume_path) if resume_path and resume_path.exists() else None
    if state is not None:
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, history = state["epoch"], json.loads(state["history"])
            kept = {int(k): v for k, v in state.get("snapshots", {}).items()}
            print(f"resuming from {resume_path} after epoch {start_epoch}")
        else:
            print(f"ignoring {resume_path}: it belongs to other training settings")
    labels = torch.as_tensor(train.labels)
    if shuffle_labels:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    feed = Batches(ImageData(train.images, labels.numpy(), train.classes), device)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        model.train()
        torch.manual_seed(seed * 1000 + epoch)  # dropout of epoch e depends only on (seed, e)
        order = torch.randperm(
            len(train), generator=torch.Generator().manual_seed(seed * 1000 + epoch)
        )
        batches = range(0, len(train), batch_size)
        step = epoch * len(batches)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, mininterval=5)
        running, seen, hits = 0.0, 0, 0
        for i in bar:
            idx = order[i : i + batch_size]
            x, y = feed(idx, pre)
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            hits += (out.detach().argmax(1) == y).sum().item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step in snapshots:
                kept[step] = _cpu(model.state_dict())
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.3f}", refresh=False)
        sched.step()
        test_metrics = evaluate(model, test, pre, device)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": running / seen,
                "train_accuracy": hits / seen,
                **test_metrics,
            }
        )
        print(
            f"epoch {epoch + 1}: train loss {running / seen:.4f}, "
            f"test accuracy {test_metrics['accuracy']:.4f}"
        )
        if resume_path:
            write_state(
                resume_path,
                {
                    "key": key,
                    "epoch": epoch + 1,
                    "history": json.dumps(history),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "snapshots": {str(k): v for k, v in kept.items()},
                },
            )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch < epochs:
            return None
    if history and history[-1]["epoch"] == epochs:  # the last epoch's scores: the same model
        final = history[-1]
    else:
        final = evaluate(model, test, pre, device)
    metrics = {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "n_train": len(train),
        "n_test": len(test),
        "history": history,
        "train_seconds_this_run": round(time.perf_counter() - t0, 1),
        "relative_weight_change": relative_change(initial, model.state_dict()),
    }
    metrics["steps"] = epochs * -(-len(train) // batch_size)  # optimizer steps in all
    if history and "train_accuracy" in history[-1]:
        # the last epoch's training batches, on the labels trained on (permuted ones with
        # shuffle_labels), in training mode (dropout on): how well the net fits them
        metrics["train_accuracy"] = history[-1]["train_accuracy"]
    if run_seed is not None:
        metrics["run_seed"] = run_seed
    if shuffle_labels:
        metrics["shuffled_labels"] = True
    if snapshots:
        metrics["snapshot_steps"] = sorted(kept)
    return model.eval(), pre, metrics, kept


# --- greedy layer-wise pretraining of denoising auto-encoders (Vincent et al. 2008) ---------


def masking_noise(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Vincent et al. 2008's masking noise: in each row of x (N, D), round(fraction * D)
    components chosen at random are set to 0. The choice is drawn on the CPU from `generator`,
    so it is the same on every device."""
    n, d = x.shape
    dropped = torch.rand(n, d, generator=generator).argsort(dim=1)[:, : round(fraction * d)]
    keep = torch.ones(n, d).scatter_(1, dropped, 0.0)
    return x * keep.to(x.device, x.dtype)


def denoising_loss(
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    decoder_bias: torch.Tensor,
) -> torch.Tensor:
    """Reconstruction cross-entropy of a tied-weight auto-encoder, in nats per example (summed
    over the D components, averaged over the N rows): h = sigmoid(W x~ + b) encodes the
    corrupted x~, r = sigmoid(W^T h + c) decodes it, scored against the clean x in [0, 1]."""
    h = torch.sigmoid(corrupted @ weight.T + bias)
    logits = h @ weight + decoder_bias  # r = sigmoid(logits), the loss computed stably
    return (
        nn.functional.binary_cross_entropy_with_logits(logits, clean, reduction="none")
        .sum(1)
        .mean()
    )


def _generator(*seeds: int) -> torch.Generator:
    """A generator that depends only on the given integers (a seed, a layer, an epoch)."""
    state = np.random.SeedSequence(list(seeds)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@torch.no_grad()
def _codes(model: nn.Module, x: torch.Tensor, depth: int, batch_size: int = 1024) -> torch.Tensor:
    """The clean output of the first `depth` hidden layers for the flattened inputs x (N, D)."""
    return torch.cat([model.hidden_output(b, depth) for b in x.split(batch_size)])


@torch.no_grad()
def _test_loss(
    clean: torch.Tensor, corrupted: torch.Tensor, fc: nn.Linear, c: torch.Tensor
) -> float:
    """The denoising loss over the whole test split, in chunks of 1024 rows."""
    total = sum(
        float(denoising_loss(x, x_noisy, fc.weight, fc.bias, c)) * len(x)
        for x, x_noisy in zip(clean.split(1024), corrupted.split(1024), strict=True)
    )
    return total / len(clean)


def pretrain_denoising_autoencoders(
    arch: str,
    arch_args: dict,
    train: ImageData,
    test: ImageData,
    *,
    corruption: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    resume_path: str | Path | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
):
    """Greedy layer-wise pretraining of a stacked denoising auto-encoder (Vincent et al. 2008),
    without labels; return (model, preprocessing, metrics).

    The model is the fully connected `arch` ("mlp", sigmoid units) on pixels in [0, 1]. Layer
    l = 1, 2, ... is trained as a denoising auto-encoder on the clean output of layers 1..l-1,
    which are frozen: its input x with a fraction `corruption` of components set to 0
    (`masking_noise`) is encoded by h = sigmoid(W x~ + b) and decoded with the tied weights,
    r = sigmoid(W^T h + c), minimising the cross-entropy between r and x (`denoising_loss`) by
    SGD, `epochs` epochs per layer. W and b become the hidden layer's weights; the decoder biases
    c are discarded; the output (class) layer keeps its seeded random initialisation.

    Metrics per layer: the test split's denoising loss (one fixed corruption) before and after,
    and per epoch the training loss. After every epoch the state is written to `resume_path`;
    a later call with the same arguments continues from there to the same weights (shuffling and
    noise of layer l's epoch e depend only on (seed, l, e)). `stop_after_epoch` counts the
    epochs of all layers and ends the run early, returning None.
    """
    if arch != "mlp":
        raise ValueError(f"denoising auto-encoder pretraining needs the 'mlp' arch, not {arch!r}")
    if arch_args.get("activation", "sigmoid") != "sigmoid":
        raise ValueError(
            "denoising auto-encoders encode with sigmoid units: set activation sigmoid"
        )
    c_in, size = train.images.shape[-1], train.images.shape[1]
    pre = Preprocessing(1.0, [0.0] * c_in, [1.0] * c_in, False, size)  # the pixels in [0, 1]
    torch.manual_seed(seed)
    model = build(arch, len(train.classes), c_in, **arch_args).to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_hidden = model.hidden
    pretrain_args = dict(corruption=corruption, epochs=epochs, batch_size=batch_size, lr=lr)
    key = _run_key(arch, arch_args, {"denoising_autoencoder": pretrain_args}, seed, train)
    x_train = pre(train.images).flatten(1).to(device)
    x_test = pre(test.images).flatten(1).to(device)
    done, history = 0, []  # epochs done over all layers, layer-major
    resume_path = Path(resume_path) if resume_path else None
    state = read_state(resume_path) if resume_path and resume_path.exists() else None
    if state is not None and state.get("key") != key:
        print(f"ignoring {resume_path}: it belongs to other pretraining settings")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        done, history = state["done"], json.loads(state["history"])
        print(f"resuming from {resume_path} after {done} of {n_hidden * epochs} epochs")
    batches = range(0, len(train), batch_size)
    t0 = time.perf_counter()
    for layer in range(1 + done // epochs, n_hidden + 1):
        fc = getattr(model, f"fc{layer}")
        c = torch.zeros(fc.in_features, device=device, requires_grad=True)  # decoder bias
        opt = torch.optim.SGD([fc.weight, fc.bias, c], lr=lr)
        first = done - (layer - 1) * epochs  # epochs of this layer already done
        if first:
            with torch.no_grad():
                c.copy_(state["decoder_bias"].to(device))
            opt.load_state_dict(state["optimizer"])
        clean = _codes(model, x_train, layer - 1)  # frozen: computed once, no gradient
        clean_test = _codes(model, x_test, layer - 1)
        noisy_test = masking_noise(clean_test, corruption, _generator(seed, layer, 0, 1))
        if not first:
            before = _test_loss(clean_test, noisy_test, fc, c.detach())
            history.append({"layer": f"fc{layer}", "epoch": 0, "test_loss": before})
        for epoch in range(first, epochs):
            gen = _generator(seed, layer, epoch + 1)
            order = torch.randperm(len(train), generator=gen)
            desc = f"fc{layer} epoch {epoch + 1}/{epochs}"
            bar = tqdm(batches, desc=desc, disable=not progress, mininterval=5)
            running = 0.0
            for i in bar:
                x = clean[order[i : i + batch_size].to(device)]
                loss = denoising_loss(x, masking_noise(x, corruption, gen), fc.weight, fc.bias, c)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item() * len(x)
                bar.set_postfix(loss=f"{running / len(train):.2f}", refresh=False)
            test_loss = _test_loss(clean_test, noisy_test, fc, c.detach())
            history.append(
                {
                    "layer": f"fc{layer}",
                    "epoch": epoch + 1,
                    "train_loss": running / len(train),
                    "test_loss": test_loss,
                }
            )
            print(f"{desc}: denoising loss {running / len(train):.2f}, test {test_loss:.2f}")
            done += 1
            if resume_path:
                write_state(
                    resume_path,
                    {
                        "key": key,
                        "done": done,
                        "history": json.dumps(history),
                        "model": model.state_dict(),
                        "decoder_bias": c.detach().cpu(),
                        "optimizer": opt.state_dict(),
                    },
                )
            if stop_after_epoch is not None and done >= stop_after_epoch < n_hidden * epochs:
                return None
    layers = {}
    for k in range(1, n_hidden + 1):
        rows = [h for h in history if h["layer"] == f"fc{k}"]
        layers[f"fc{k}"] = {
            "input": "pixels" if k == 1 else f"fc{k - 1}'s clean output (frozen)",
            "units": getattr(model, f"fc{k}").out_features,
            "test_loss_before": rows[0]["test_loss"],
            "test_loss_after": rows[-1]["test_loss"],
            "train_loss": [h["train_loss"] for h in rows[1:]],
        }
    metrics = {
        "pretrain": {"kind": "denoising_autoencoder", **pretrain_args},
        "optimizer": "plain SGD (no momentum, no weight decay), one layer at a time",
        "loss": "denoising reconstruction cross-entropy, nats per example (summed over the "
        "layer's inputs); test: the test split under one fixed corruption",
        "layers": layers,
        "output_layer": f"fc{n_hidden + 1}: its seeded random initialisation, never trained "
        "(no labels were used)",
        "n_train": len(train),
        "n_test": len(test),
        "history": history,
        "train_seconds_this_run": round(time.perf_counter() - t0, 1),
        "relative_weight_change": relative_change(initial, model.state_dict()),
        "steps": n_hidden * epochs * len(batches),
    }
    return model.eval(), pre, metrics
