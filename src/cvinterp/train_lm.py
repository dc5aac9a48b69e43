"""Train a word-level LSTM language model the AWD-LSTM way (Merity, Keskar & Socher 2018).

Truncated back-propagation through time over `batch_size` parallel streams of the training
text with a random window length (bptt w.p. 0.95, else bptt / 2, then N(., 5), at least 5;
the learning rate scaled by length / bptt), activation (alpha) and temporal activation (beta)
regularisation of the last layer, gradient clipping, and either NT-ASGD (SGD that switches to
averaged SGD once the validation loss is worse than the best of the epochs before the last
`nonmono`; evaluated with the averaged weights) or Adam. The weights with the best validation
loss are kept. As in AWD-LSTM, torch's ASGD applies a step's length-scaled learning rate one
step late (its step size is computed from the previous step's rate).

Seeded and deterministic on the CPU. The full training state is written to `resume_path` every
`checkpoint_seconds` (checked after each step and each epoch) and when training ends; a later
call with the same arguments continues from there and, on the CPU, ends with the same weights
as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cvinterp.data.prose import Corpus
from cvinterp.models.awd_lstm import AWDLSTM
from cvinterp.train import read_state, write_state


def batchify(ids: np.ndarray, streams: int, device) -> torch.Tensor:
    """(streams, n // streams): the text cut into `streams` contiguous rows (the rest dropped)."""
    n = len(ids) // streams
    if n < 2:
        raise ValueError(f"{len(ids)} tokens cannot fill {streams} streams of 2 or more")
    return (
        torch.as_tensor(np.asarray(ids[: n * streams]), dtype=torch.int64)
        .view(streams, n)
        .to(device)
    )


@torch.no_grad()
def evaluate_lm(model: AWDLSTM, ids: np.ndarray, batch_size: int, bptt: int, device) -> dict:
    """Mean cross-entropy (nats) and perplexity over `ids`, read as `batch_size` streams with the
    state carried across windows (AWD-LSTM's evaluation)."""
    model.eval()
    data = batchify(ids, batch_size, device)
    total, count, state = 0.0, 0, None
    for i in range(0, data.shape[1] - 1, bptt):
        y = data[:, i + 1 : i + 1 + bptt]
        logits, state, _, _ = model(data[:, i : i + y.shape[1]], state)
        total += nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


def _detach(state):
    return [tuple(t.detach() for t in s) for s in state] if state else None


def _run_key(corpus: Corpus, settings: dict, seed: int) -> str:
    """Identity of a training run: settings, seed and a fingerprint of the corpus."""
    h = hashlib.sha256(json.dumps([settings, seed], sort_keys=True).encode())
    h.update("\n".join(corpus.vocab).encode())
    for split in (corpus.train, corpus.valid):
        h.update(np.asarray(split[:: max(1, len(split) // 4096)]).tobytes())
        h.update(str(len(split)).encode())
    return h.hexdigest()[:16]


class _Averaged:
    """Evaluate with ASGD's averaged weights, then put the live weights back."""

    def __init__(self, model: AWDLSTM, opt: torch.optim.Optimizer):
        self.model, self.opt, self.saved = model, opt, {}

    def __enter__(self):
        if isinstance(self.opt, torch.optim.ASGD):
            for p in self.model.parameters():
                if "ax" in self.opt.state[p]:
                    self.saved[p] = p.detach().clone()
                    p.data.copy_(self.opt.state[p]["ax"])
        return self

    def __exit__(self, *exc):
        for p, w in self.saved.items():
            p.data.copy_(w)


def train_language_model(
    corpus: Corpus,
    *,
    arch_args: dict,
    epochs: int,
    batch_size: int,
    bptt: int,
    optimizer: str,
    lr: float,
    weight_decay: float,
    clip: float,
    alpha: float,
    beta: float,
    nonmono: int,
    eval_batch_size: int,
    test_batch_size: int,
    tokens_per_epoch: int | None,
    checkpoint_seconds: float,
    seed: int,
    device: torch.device,
    resume_path: str | Path | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
):
    """Train an AWDLSTM on `corpus`; return (model in eval mode, metrics).

    The training text is cut into `batch_size` contiguous streams. An epoch reads every stream
    whole, or (`tokens_per_epoch`) a window of each stream of tokens_per_epoch / batch_size
    positions, each epoch's window following the previous one's (wrapping around): a short
    epoch reads a part of every stretch of the corpus, and later epochs read the rest.

    `stop_after_steps` ends the run after that many optimisation steps of this call, as an
    interruption would (the state is saved first), returning (None, None).
    """
    settings = dict(
        arch_args=arch_args,
        epochs=epochs,
        batch_size=batch_size,
        bptt=bptt,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        clip=clip,
        alpha=alpha,
        beta=beta,
        nonmono=nonmono,
        tokens_per_epoch=tokens_per_epoch,
        eval_batch_size=eval_batch_size,
    )
    key = _run_key(corpus, settings, seed)
    torch.manual_seed(seed)
    model = AWDLSTM(len(corpus.vocab), **arch_args).to(device)
    params = list(model.parameters())

    def make_opt(kind: str) -> torch.optim.Optimizer:
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        if kind == "asgd":
            return torch.optim.ASGD(params, lr=lr, t0=0, lambd=0.0, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

    mode = "adam" if optimizer == "adam" else "sgd"
    opt = make_opt(mode)
    data = batchify(corpus.train, batch_size, device)
    end = data.shape[1] - 1  # an epoch reads this many positions of each stream
    if tokens_per_epoch:
        end = min(end, max(tokens_per_epoch // batch_size, 2))

    def offset(e: int) -> int:
        """Where epoch e starts in each stream: after the previous epoch's window, wrapping."""
        room = data.shape[1] - 1 - end
        return (e * end) % room if room > 0 else 0

    epoch, pos, step_total, history, best = 0, 0, 0, [], None
    state, gen, resumed = None, None, False
    running, seen = 0.0, 0  # this epoch's summed training loss and target count
    resume_path = Path(resume_path) if resume_path else None
    saved = read_state(resume_path) if resume_path and resume_path.exists() else None
    if saved is not None:
        if saved.get("key") == key:
            model.load_state_dict(saved["model"])
            mode = saved["mode"]
            opt = make_opt(mode)
            opt.load_state_dict(saved["optimizer"])
            epoch, pos, step_total = saved["epoch"], saved["pos"], saved["steps"]
            running, seen = float(saved["running"]), int(saved["seen"])
            history = json.loads(saved["history"])
            if saved["best_loss"] is not None:
                best = (float(saved["best_loss"]), saved["best_model"])
            if saved["state"] is not None:
                state = [tuple(t.to(device) for t in s) for s in saved["state"]]
            gen = torch.Generator().manual_seed(0)
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["rng"])
            if device.type == "cuda" and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"])
            resumed = pos > 0  # saved after an epoch ended: the next one starts afresh
            print(f"resuming from {resume_path}: epoch {epoch + 1}, token {pos}")
        else:
            print(f"ignoring {resume_path}: it belongs to other training settings")

    def save_state() -> None:
        if not resume_path:
            return
        payload = {
            "key": key,
            "epoch": epoch,
            "pos": pos,
            "steps": step_total,
            "mode": mode,
            "running": running,
            "seen": seen,
            "history": json.dumps(history),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "best_loss": None if best is None else best[0],
            "best_model": None if best is None else best[1],
            "state": None if state is None else [tuple(t.cpu() for t in s) for s in state],
            "generator": gen.get_state() if gen is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        }
        write_state(resume_path, payload)

    steps_here, t0, last_save = 0, time.perf_counter(), time.perf_counter()
    tokens_here = 0
    while epoch < epochs:
        if not resumed:  # a fresh epoch: its window lengths and dropout depend on (seed, epoch)
            gen = torch.Generator().manual_seed(seed * 1000 + epoch)
            torch.manual_seed(seed * 1000 + epoch)
            pos, state, running, seen = 0, None, 0.0, 0
        resumed = False
        model.train()
        bar = tqdm(
            total=end,
            initial=pos,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not progress,
            mininterval=5,
            unit="tok/stream",
        )
        while pos < end - 1:
            half = torch.rand((), generator=gen).item() >= 0.95
            mean = bptt / 2 if half else bptt
            seq_len = max(5, int(torch.normal(mean, 5.0, (), generator=gen).item()))
            seq_len = min(seq_len, end - pos)
            for group in opt.param_groups:
                group["lr"] = lr * seq_len / bptt
            at = offset(epoch) + pos
            x, y = data[:, at : at + seq_len], data[:, at + 1 : at + 1 + seq_len]
            logits, state, raw, dropped = model(x, _detach(state))
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            total = loss
            if alpha:
                total = total + alpha * dropped.pow(2).mean()
            if beta and raw.shape[1] > 1:
                total = total + beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            total.backward()
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            for group in opt.param_groups:
                group["lr"] = lr
            pos += seq_len
            step_total += 1
            steps_here += 1
            tokens_here += y.numel()
            running += loss.item() * y.numel()
            seen += y.numel()
            bar.update(seq_len)
            bar.set_postfix(loss=f"{running / seen:.3f}", refresh=False)
            if stop_after_steps is not None and steps_here >= stop_after_steps:
                save_state()
                bar.close()
                return None, None
            if time.perf_counter() - last_save > checkpoint_seconds:
                save_state()
                last_save = time.perf_counter()
        bar.close()
        with _Averaged(model, opt):
            val = evaluate_lm(model, corpus.valid, eval_batch_size, bptt, device)
            if best is None or val["loss"] < best[0]:
                best = (val["loss"], {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": running / max(seen, 1),
                "valid_loss": val["loss"],
                "valid_perplexity": val["perplexity"],
                "optimizer": mode,
            }
        )
        print(
            f"epoch {epoch + 1}: train loss {running / max(seen, 1):.3f}, valid perplexity "
            f"{val['perplexity']:.1f} ({mode})"
        )
        # AWD-LSTM's rule: the earlier epochs' losses, less the last `nonmono` of them
        earlier = [h["valid_loss"] for h in history[:-1]]
        if mode == "sgd" and len(earlier) > nonmono and val["loss"] > min(earlier[:-nonmono]):
            print(f"validation stalled for {nonmono} epochs: switching to averaged SGD")
            mode = "asgd"
            opt = make_opt(mode)
        epoch += 1
        pos, state, running, seen = 0, None, 0.0, 0
        if epoch == epochs or time.perf_counter() - last_save > checkpoint_seconds:
            save_state()  # not after every epoch: at paper scale a state is ~0.4 GB
            last_save = time.perf_counter()
    seconds = time.perf_counter() - t0
    model.load_state_dict(best[1])
    model.eval()
    val = evaluate_lm(model, corpus.valid, eval_batch_size, bptt, device)
    test = evaluate_lm(model, corpus.test, test_batch_size, bptt, device)
    metrics = {
        "valid_perplexity": val["perplexity"],
        "valid_loss": val["loss"],
        "test_perplexity": test["perplexity"],
        "test_loss": test["loss"],
        "train_tokens_per_epoch": int(end * batch_size),
        "valid_tokens": val["tokens"],
        "test_tokens": test["tokens"],
        "vocab_size": len(corpus.vocab),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "train_seconds_this_run": round(seconds, 1),
        "train_tokens_per_second_this_run": round(tokens_here / max(seconds, 1e-9)),
    }
    return model, metrics
