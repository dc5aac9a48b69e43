"""Train a classifier from scratch: seeded, deterministic on the CPU, resumable per epoch."""

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
    for i in range(0, len(data), batch_size):
        x = pre(data.images[i : i + batch_size]).to(device)
        y = torch.as_tensor(data.labels[i : i + batch_size], device=device)
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
):
    """Train `arch` on `train` with SGD; return (model, preprocessing, metrics, snapshots).

    snapshots: optimizer steps after which a copy of the weights is kept (0: the
    initialisation); returned as {step: state dict on the CPU}, kept across a resume, for
    looking at a representation over training (Bau et al. 2017, Fig. 10). Steps beyond the run
    are ignored.

    After every epoch the full training state is written to `resume_path`; a later call with
    the same arguments continues from there and ends with the same weights as an
    uninterrupted run (shuffling and dropout of epoch e depend only on (seed, e)).
    `stop_after_epoch` ends the run early (as an interruption would), returning None.
    """
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
        running, seen = 0.0, 0
        for i in bar:
            idx = order[i : i + batch_size]
            x = pre(train.images[idx.numpy()]).to(device)
            y = labels[idx].to(device)
            loss = nn.functional.cross_entropy(model(x), y)
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
        history.append({"epoch": epoch + 1, "train_loss": running / seen, **test_metrics})
        print(
            f"epoch {epoch + 1}: train loss {running / seen:.4f}, "
            f"test accuracy {test_metrics['accuracy']:.4f}"
        )
        if resume_path:
            resume_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = resume_path.with_name(resume_path.name + ".tmp")
            torch.save(
                {
                    "key": key,
                    "epoch": epoch + 1,
                    "history": json.dumps(history),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "snapshots": {str(k): v for k, v in kept.items()},
                },
                tmp,
            )
            tmp.replace(resume_path)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch < epochs:
            return None
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
    if snapshots:
        metrics["snapshot_steps"] = sorted(kept)
    return model.eval(), pre, metrics, kept
