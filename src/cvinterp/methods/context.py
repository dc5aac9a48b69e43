"""How an LSTM language model uses its context (Khandelwal, He, Qi & Jurafsky 2018).

Every condition scores the same target tokens; only the context each target sees changes:

- context restriction: the last k tokens only, read from a zero state (`restricted_loss`),
  against the full context, i.e. the whole split read from its start with the state carried
  through (`full_context_loss`); the effective context is the smallest k whose mean loss is
  within a tolerance (1%) of the full-context loss (`effective_context`);
- perturbations of the context beyond a boundary b, i.e. of all but the nearest b tokens of a
  fixed-length window L (`perturb`), as the authors' `perturbations.py` does them: shuffle or
  reverse the one span of 20 tokens just beyond the boundary, [L - b - 20, L - b); shuffle or
  reverse all of the far part; drop its function words or its content words (by each token's
  part-of-speech tag, `cvinterp.data.pos`); or replace it with a run of the training split.

Contexts are index matrices into one token stream kept on the device; a condition is one batched
gather plus batched forward passes (`Scorer`), with contexts of different lengths (after
dropping words) packed into the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Perturbations of the context beyond the boundary, in the order of the figures.
PERTURBATIONS = (
    "shuffle_local",
    "reverse_local",
    "shuffle_global",
    "reverse_global",
    "drop_function",
    "drop_content",
    "replace",
)


def sample_targets(n_tokens: int, n: int, history: int, seed: int) -> np.ndarray:
    """`n` sorted target positions, each with at least `history` tokens before it (seeded)."""
    available = n_tokens - history
    if available < 1:
        raise ValueError(
            f"the split has {n_tokens} tokens: too few for targets with {history} tokens of "
            "history (lower the largest context size or use a longer split)"
        )
    rng = np.random.default_rng(seed)
    picked = rng.choice(available, size=min(n, available), replace=False)
    return np.sort(picked) + history


def windows(positions: torch.Tensor, length: int) -> torch.Tensor:
    """(T, length) stream positions of the `length` tokens right before each target."""
    return positions[:, None] - length + torch.arange(length, device=positions.device)


class Scorer:
    """Negative log-likelihood of each target given its context, many targets per pass."""

    def __init__(self, model, stream: torch.Tensor, batch_size: int = 256):
        self.model, self.stream, self.batch_size = model.eval(), stream, batch_size

    def nll(
        self,
        contexts: torch.Tensor,
        targets: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """contexts (T, L) token ids, right-padded when `lengths` (T,) is given; targets (T,)
        token ids. Returns (T,) float64 NLL in nats."""
        out = []
        for i in range(0, len(targets), self.batch_size):
            sl = slice(i, i + self.batch_size)
            lens = None if lengths is None else lengths[sl]
            ctx = contexts[sl] if lens is None else contexts[sl, : int(lens.max())]
            logp = self.model.last_log_probs(ctx, lens)
            out.append(-logp.gather(1, targets[sl, None])[:, 0].cpu())
        return torch.cat(out).double()  # on the CPU: MPS has no float64

    def at(self, index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """NLL of the tokens at `positions` given the stream tokens at `index` (T, L)."""
        return self.nll(self.stream[index], self.stream[positions])


def restricted_loss(scorer: Scorer, positions: torch.Tensor, k: int) -> torch.Tensor:
    """(T,) NLL of each target seeing only its last k tokens, from a zero state."""
    return scorer.at(windows(positions, k), positions)


def full_context_loss(model, stream: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(T,) NLL of each target given everything before it: the stream read from its start with
    the state carried through (as language models are evaluated)."""
    hidden = model.stream_hidden(stream, positions - 1)
    with torch.no_grad():
        logp = torch.log_softmax(model.decoder(hidden), dim=-1)
    return -logp.gather(1, stream[positions][:, None])[:, 0].cpu().double()


def _reorder(tokens: torch.Tensor, far: int, keys: torch.Tensor) -> torch.Tensor:
    """Sort the first `far` columns of each row by `keys` (T, far); the rest stay."""
    order = keys.argsort(dim=1, stable=True)
    out = tokens.clone()
    out[:, :far] = tokens[:, :far].gather(1, order)
    return out


def _compact(tokens: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the tokens where `keep` is False, keeping order; right-pad with 0.

    Returns (tokens, lengths)."""
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)
    out = tokens.gather(1, order)
    lengths = keep.sum(1)
    out[torch.arange(tokens.shape[1], device=tokens.device)[None] >= lengths[:, None]] = 0
    return out, lengths


def perturb(
    kind: str,
    index: torch.Tensor,
    stream: torch.Tensor,
    boundary: int,
    *,
    generator: torch.Generator,
    span: int = 20,
    function: torch.Tensor | None = None,
    content: torch.Tensor | None = None,
    donor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Contexts (T, L) for stream windows `index` (T, L) with the context beyond the nearest
    `boundary` tokens perturbed; returns (tokens, lengths or None when every context keeps
    length L).

    - shuffle_local / reverse_local: only the `span` tokens just beyond the boundary,
      [L - boundary - span, L - boundary) (cut at the window's start), as the authors'
      `shuffle_within_spans` / `reverse_within_spans`;
    - shuffle_global / reverse_global: all of [0, L - boundary);
    - drop_function / drop_content: the far tokens whose tag is of that class; `function` and
      `content` are boolean masks over the *stream positions* (a token's class comes from its
      part-of-speech tag in context, as the authors' `drop_pos`);
    - replace: the far part becomes a run of `donor` (the authors draw it from the training
      split), drawn uniformly; without a `donor`, a run of `stream` clear of the target's
      window.

    `generator` draws the shuffles and the replacement text (a CPU generator: the same draws
    on every device).
    """
    tokens = stream[index]
    n, length = index.shape
    far = length - boundary
    if far <= 0:
        return tokens, None
    dev = tokens.device
    col = torch.arange(far, device=dev)
    if kind in ("shuffle_local", "reverse_local"):
        lo = max(0, far - span)  # one span, just beyond the boundary
        width = far - lo
        if kind == "shuffle_local":
            keys = torch.rand(n, width, generator=generator).to(dev)
        else:
            keys = (-torch.arange(width, device=dev)).expand(n, width)
        out = tokens.clone()
        out[:, lo:far] = _reorder(tokens[:, lo:far], width, keys)
        return out, None
    if kind == "shuffle_global":
        return _reorder(tokens, far, torch.rand(n, far, generator=generator).to(dev)), None
    if kind == "reverse_global":
        return _reorder(tokens, far, (-col).expand(n, far)), None
    if kind in ("drop_function", "drop_content"):
        words = function if kind == "drop_function" else content
        if words is None or len(words) != len(stream):
            raise ValueError(
                f"{kind} needs `{kind[5:]}`: a boolean mask over the {len(stream)} stream "
                "positions (one per token, from its part-of-speech tag)"
            )
        keep = torch.ones_like(tokens, dtype=torch.bool)
        keep[:, :far] = ~words.to(dev)[index[:, :far]]
        return _compact(tokens, keep)
    if kind == "replace":
        out = tokens.clone()
        if donor is not None:
            if len(donor) < far:
                raise ValueError(
                    f"the donor text has {len(donor)} tokens: too few to replace {far}"
                )
            # any run of the donor (the authors draw the start in [0, len - L) and take
            # L - b tokens: the same text up to the last L - b starts)
            start = torch.randint(0, len(donor) - far + 1, (n,), generator=generator)
            out[:, :far] = donor.to(dev)[start.to(dev)[:, None] + col]
            return out, None
        start = _donor_starts(index[:, 0], far, length, len(stream), generator).to(dev)
        out[:, :far] = stream[start[:, None] + col]
        return out, None
    raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")


def _donor_starts(
    window_start: torch.Tensor, far: int, length: int, n_tokens: int, generator: torch.Generator
) -> torch.Tensor:
    """Starts of `far`-token runs of the stream that overlap neither the target's window nor the
    target (window_start .. window_start + length)."""
    ws = window_start.cpu()
    if n_tokens - far < 2 * (length + 1):
        raise ValueError(f"a {n_tokens}-token split is too short to draw replacement text")
    start = torch.randint(0, n_tokens - far + 1, ws.shape, generator=generator)
    for _ in range(1000):
        bad = (start < ws + length + 1) & (start + far > ws)
        if not bad.any():
            return start
        start[bad] = torch.randint(0, n_tokens - far + 1, (int(bad.sum()),), generator=generator)
    raise RuntimeError("could not draw non-overlapping replacement text")


def settled(sizes: Sequence[float], increases: np.ndarray, tolerance) -> np.ndarray:
    """The smallest size (context size k, or boundary b) from which on, for every larger size
    too, the mean increase in loss stays within `tolerance` nats either side of 0; +inf where no
    size of the grid gets there (it settles beyond the grid, if at all).

    `increases` is (sizes, ...): one curve per column (the resamples of a bootstrap), and
    `tolerance` a number or one per column (in nats: the same for every curve compared)."""
    inc = np.asarray(increases, dtype=np.float64)
    within = np.abs(inc) <= np.asarray(tolerance, dtype=np.float64)
    # tail[i]: within at i and at every larger size
    tail = np.flip(np.logical_and.accumulate(np.flip(within, 0), axis=0), 0)
    first = np.argmax(tail, axis=0)
    return np.where(tail.any(0), np.asarray(sizes, dtype=np.float64)[first], np.inf)


def effective_context(
    sizes: Sequence[int], losses: Sequence[float], full: float, tolerance: float = 0.01
) -> int | None:
    """The smallest context size whose mean loss is within `tolerance` (relative to `full`,
    either side) of the full-context loss, from there on for every larger size; None if no
    size gets there."""
    inc = np.asarray(losses, dtype=np.float64) - full
    k = float(settled(sizes, inc, tolerance * abs(full)))
    return None if np.isinf(k) else int(k)


def insensitive_boundary(
    boundaries: Sequence[int], increases: Sequence[float], full: float, tolerance: float = 0.01
) -> int | None:
    """The smallest boundary beyond which a perturbation changes the mean loss by no more than
    `tolerance` (relative to the full-context loss), from there on; None if none does."""
    b = float(settled(boundaries, np.asarray(increases, dtype=np.float64), tolerance * abs(full)))
    return None if np.isinf(b) else int(b)
