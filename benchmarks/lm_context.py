"""Benchmark: batched context scoring (Khandelwal et al. 2018) against one target at a time.

A benchmark, not a test. Run from the repository root:

    .venv/bin/python benchmarks/lm_context.py [--device cpu|cuda|auto] [--size default|paper]
        [--targets T] [--context L] [--batch B] [--naive N] [--train-steps S] [--sweep]
        [--threads n] [--out results.json]

Synthetic, seeded workload: an `AWDLSTM` with random weights (eval mode), at the default
profile's size (`--size default`: 5,000 words, embedding 128, hidden 256, 2 layers) or at
AWD-LSTM's (`--size paper`: 10,000 words, embedding 400, hidden 1150, 3 layers, tied), and a
stream of uniformly random token ids (250k tokens with `--size paper`, WikiText-2's test split's
size; the training steps read it as PTB-like batches).

- batched: `Scorer(model, stream, B).at(windows(positions, L), positions)`: T targets, each
  with its own L-token context, B targets per forward pass (cuDNN's LSTM on a GPU);
- one at a time: the same NLLs, one forward pass per target on its (1, L) context, for the
  first N targets (extrapolated to T); the NLLs must agree with the batched ones (float32
  tolerance), else the script exits with status 1 after printing;
- training (`--train-steps S`, 0 to skip): `train_language_model` itself for about S windows
  of each stream (AWD-LSTM's batch and mean BPTT window, weight drop and all dropouts on, Adam),
  tokens per second as the workflow's metrics report them (its first, warm-up step included);
- `--sweep`: the whole lm_context condition sweep on the T targets (the context grid up to
  1000 and 7 perturbations at 9 boundaries of an L-token window): seconds and targets/s of the
  batched conditions, and separately the seconds of the full-context pass (the stream read
  once from its start, one token after another: it does not batch over targets).

Timing: one untimed warm-up call of each path, then one timed call, CUDA synchronised around it.
Compare the figures with `../shared/reference/gpu-anchors.md` (one H200: AWD-LSTM-size eval
654k tokens/s, training 230k tokens/s, 512 targets x 300 tokens of context in bf16 10.7k
targets/s); this script scores in float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_name, print_table, resolve_device, timed, write_json  # noqa: E402

from cvinterp.methods import context as khandelwal  # noqa: E402
from cvinterp.models.awd_lstm import AWDLSTM  # noqa: E402

SIZES = {
    "default": {"vocab": 5000, "emb": 128, "hidden": 256, "layers": 2, "tokens": 100_000,
                "batch_size": 32, "bptt": 70},
    "paper": {"vocab": 10000, "emb": 400, "hidden": 1150, "layers": 3, "tokens": 250_000,
              "batch_size": 80, "bptt": 70},
}  # fmt: skip
SWEEP_SIZES = [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 700, 1000]
SWEEP_BOUNDARIES = [1, 5, 10, 15, 20, 30, 50, 100, 200]


def naive_nll(model, stream, positions, length) -> torch.Tensor:
    """One forward pass per target on its own (1, L) context."""
    out = []
    for t in positions.tolist():
        logp = model.last_log_probs(stream[t - length : t][None])
        out.append(-logp[0, stream[t]].double())
    return torch.stack(out)


def train_steps(vocab, dims, drops, stream, steps, batch_size, bptt, device) -> float:
    """Tokens per second of `train_language_model` (Adam, all dropouts on) reading about `steps`
    windows of each of `batch_size` streams of the synthetic text: the workflow's own loop."""
    from cvinterp.data.prose import Corpus
    from cvinterp.train_lm import train_language_model

    ids = stream.cpu().numpy()
    held_out = ids[: 4 * bptt]  # a token validation and test split: timing is of training
    corpus = Corpus([str(i) for i in range(vocab)], ids, held_out, held_out, np.ones(vocab))
    _, metrics = train_language_model(
        corpus, arch_args={**dims, **drops}, epochs=1, batch_size=batch_size, bptt=bptt,
        optimizer="adam", lr=1e-3, weight_decay=1.2e-6, clip=0.25, alpha=2, beta=1, nonmono=5,
        eval_batch_size=1, test_batch_size=1, tokens_per_epoch=steps * batch_size * bptt,
        checkpoint_seconds=1e9, seed=0, device=device, progress=False,
    )  # fmt: skip
    return metrics["train_tokens_per_second_this_run"]


def sweep(scorer, model, stream, positions, length, gen, vocab) -> tuple[float, int, float]:
    """(seconds, targets scored) of the batched lm_context conditions, and the seconds of the
    full-context pass."""
    n = len(positions)
    # word classes per stream position (as tags give them), a third function words
    function = (torch.rand(len(stream), generator=gen) < 0.3).to(stream.device)
    content = ~function
    donor = stream.flip(0)  # replacement text: another run of tokens, as the training split
    full_seconds, _ = timed(
        lambda: khandelwal.full_context_loss(model, stream, positions), scorer.stream.device
    )

    def run():
        for k in SWEEP_SIZES:
            khandelwal.restricted_loss(scorer, positions, k)
        index = khandelwal.windows(positions, length)
        scorer.at(index, positions)
        for kind in khandelwal.PERTURBATIONS:
            for b in SWEEP_BOUNDARIES:
                if b < length:
                    ctx, lengths = khandelwal.perturb(
                        kind, index, stream, b, generator=gen, function=function,
                        content=content, donor=donor,
                    )  # fmt: skip
                    scorer.nll(ctx, stream[positions], lengths)

    seconds, _ = timed(run, scorer.stream.device)
    conditions = (
        len(SWEEP_SIZES)
        + 1
        + len(khandelwal.PERTURBATIONS) * sum(b < length for b in SWEEP_BOUNDARIES)
    )
    return seconds, conditions * n, full_seconds


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--targets", type=int, default=256)
    p.add_argument("--context", type=int, default=300)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--naive", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    dev = resolve_device(p, args.device)
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    torch.manual_seed(0)
    dims = {k: size[k] for k in ("emb", "hidden", "layers")}
    drops = {"dropout": 0.4, "dropouth": 0.25, "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5}
    model = AWDLSTM(size["vocab"], **dims, **drops).to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    stream = torch.randint(0, size["vocab"], (size["tokens"],), generator=gen).to(dev)
    history = max(args.context, 1000 if args.sweep else 0)
    positions = torch.as_tensor(
        khandelwal.sample_targets(len(stream), args.targets, history, 0), device=dev
    )
    scorer = khandelwal.Scorer(model, stream, args.batch)
    index = khandelwal.windows(positions, args.context)
    print(f"device: {device_name(dev)} ({dev}); model {args.size}: {size}; T={len(positions)} "
          f"targets x L={args.context} tokens, batch {args.batch}")  # fmt: skip

    scorer.at(index[: args.batch], positions[: args.batch])  # warm-up
    t_batched, batched = timed(lambda: scorer.at(index, positions), dev)
    n = min(args.naive, len(positions))
    naive_nll(model, stream, positions[:2], args.context)  # warm-up
    t_naive, naive = timed(lambda: naive_nll(model, stream, positions[:n], args.context), dev)
    t_naive_all = t_naive * len(positions) / n
    worst = float((naive - batched[:n]).abs().max())
    agree = worst < 1e-3
    rows = [("path", "seconds", "targets/s", "context tokens/s")]
    for name, s in (
        ("batched", t_batched),
        (f"one at a time (x{len(positions)}/{n})", t_naive_all),
    ):
        rows.append((name, f"{s:.3f}", f"{len(positions) / s:,.0f}",
                     f"{len(positions) * args.context / s:,.0f}"))  # fmt: skip
    print_table(rows)
    print(f"speed-up of batching: {t_naive_all / t_batched:.1f}x; largest NLL difference "
          f"{worst:.2e} ({'agree' if agree else 'DISAGREE'})")  # fmt: skip
    result = {
        "device": device_name(dev), "size": args.size, "targets": len(positions),
        "context": args.context, "batch": args.batch, "batched_seconds": t_batched,
        "naive_seconds_extrapolated": t_naive_all, "speedup": t_naive_all / t_batched,
        "targets_per_second": len(positions) / t_batched, "max_nll_difference": worst,
    }  # fmt: skip
    if args.train_steps:
        tps = train_steps(
            size["vocab"], dims, drops, stream, args.train_steps, size["batch_size"],
            size["bptt"], dev,
        )  # fmt: skip
        result["train_tokens_per_second"] = tps
        print(f"training: {tps:,.0f} tokens/s (batch {size['batch_size']}, bptt {size['bptt']})")
    if args.sweep:
        seconds, scored, full = sweep(
            scorer, model, stream, positions, args.context, gen, size["vocab"]
        )
        rate = scored / seconds
        result |= {"sweep_seconds": seconds, "sweep_targets_per_second": rate,
                   "full_context_seconds": full}  # fmt: skip
        print(f"condition sweep: {seconds:.1f} s, {scored:,} targets scored, {rate:,.0f} targets/s")
        print(f"full-context pass (stream read once, up to the last target): {full:.1f} s")
    if args.out:
        write_json(result, args.out)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
