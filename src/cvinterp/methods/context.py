"""How an LSTM language model uses its context (Khandelwal, He, Qi & Jurafsky 2018).

Every condition scores the same target tokens; only the context each target sees changes:

- context restriction: the last k tokens only, read from a zero state (`restricted_loss`),
  against the full context, i.e. the whole split read from its start with the state carried
  through (`full_context_loss`); the effective context is the smallest k whose mean loss is
  within a tolerance (1%) of the full-context loss (`effective_context`);
- perturbations of the context beyond a boundary b, i.e. of all but the nearest b tokens of a
  fixed-length window (`perturb`): shuffle or reverse within consecutive spans (counted back
  from the boundary), shuffle or reverse all of it, drop its function words or its content
  words, or replace it with a run of text from elsewhere in the split.

Contexts are index matrices into one token stream kept on the device; a condition is one batched
gather plus batched forward passes (`Scorer`), with contexts of different lengths (after
dropping words) packed into the same batch.
"""

from __future__ import annotations

import re
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

# Closed-class English words: determiners, pronouns, prepositions, conjunctions, auxiliaries and
# modals, particles and wh-words (a generic stop-word list would also take nouns and verbs such as
# "bill", "interest", "system", "find" or "give").
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those each every either neither some any no all both half
    several many much more most few fewer less least other another such what which whose
    whatever whichever own
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him
    his himself she her hers herself it its itself they them their theirs themselves one
    oneself who whom whoever somebody someone something anybody anyone anything nobody
    everybody everyone everything nothing none
    about above across after against along amid amidst among amongst around as at before
    behind below beneath beside besides between beyond but by concerning despite down during
    except for from in inside into like near of off on onto out outside over past per round
    since than through throughout till to toward towards under underneath unlike until unto
    up upon via with within without
    and or nor so yet because although though if unless whether while whilst whereas lest
    once when whenever where wherever whereby wherein why how however therefore thus hence
    then also too only just even still already not never ever very rather quite almost
    here there now
    be am is are was were been being have has had having do does did doing done shall should
    will would may might must can could ought need dare
    """.split()
)
# Function words the King James Bible uses that modern lists lack.
ARCHAIC_FUNCTION_WORDS = frozenset(
    "thee thou thy thine ye hath hast doth dost shalt art wast wilt hither thither whither "
    "thence whence wherefore whereof thereof therein thereon therewith yea nay lo o oh".split()
)
_WORD = re.compile(r"^[^\W\d_]+(?:['-][^\W\d_]+)*$")
_CLITICS = frozenset({"n't", "'s", "'ll", "'re", "'ve", "'d", "'m"})


def word_classes(vocab: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(function, content) boolean masks over the vocabulary.

    Function words: the closed-class words of `FUNCTION_WORDS` plus archaic ones (thee, hath,
    ...); content words: every other alphabetic word. Punctuation, numbers (N), clitics
    ('s, n't) and the special tokens (<unk>, <eos>) are neither.
    """
    closed = FUNCTION_WORDS | ARCHAIC_FUNCTION_WORDS
    function = np.array([w in closed for w in vocab])
    alphabetic = np.array([bool(_WORD.match(w)) and w not in _CLITICS | {"N"} for w in vocab])
    return function, alphabetic & ~function


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Contexts (T, L) for stream windows `index` (T, L) with all but the nearest `boundary`
    tokens perturbed; returns (tokens, lengths or None when every context keeps length L).

    `generator` draws the shuffles and the replacement text (a CPU generator: the same draws
    on every device); `function` / `content` are boolean masks over the vocabulary.
    """
    tokens = stream[index]
    n, length = index.shape
    far = length - boundary
    if far <= 0:
        return tokens, None
    dev = tokens.device
    col = torch.arange(far, device=dev)
    if kind in ("shuffle_local", "reverse_local"):
        # spans counted back from the boundary; the farthest one may be shorter
        span_id = ((far - 1 - col) // span).expand(n, far)
        if kind == "shuffle_local":  # spans 2 apart, a uniform draw in [0, 1) within each
            keys = -2.0 * span_id + torch.rand(n, far, generator=generator).to(dev)
        else:  # integer keys: spans in place, each one reversed
            keys = -span_id * far - col
        return _reorder(tokens, far, keys), None
    if kind == "shuffle_global":
        return _reorder(tokens, far, torch.rand(n, far, generator=generator).to(dev)), None
    if kind == "reverse_global":
        return _reorder(tokens, far, (-col).expand(n, far)), None
    if kind in ("drop_function", "drop_content"):
        words = function if kind == "drop_function" else content
        keep = torch.ones_like(tokens, dtype=torch.bool)
        keep[:, :far] = ~words.to(dev)[tokens[:, :far]]
        return _compact(tokens, keep)
    if kind == "replace":
        start = _donor_starts(index[:, 0], far, length, len(stream), generator).to(dev)
        out = tokens.clone()
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


def effective_context(
    sizes: Sequence[int], losses: Sequence[float], full: float, tolerance: float = 0.01
) -> int | None:
    """The smallest context size whose mean loss is within `tolerance` (relative, either side)
    of the full-context loss, from there on for every larger size; None if no size gets there."""
    within = [abs(loss - full) <= tolerance * abs(full) for loss in losses]
    for i, size in enumerate(sizes):
        if all(within[i:]):
            return int(size)
    return None


def insensitive_boundary(
    boundaries: Sequence[int], increases: Sequence[float], full: float, tolerance: float = 0.01
) -> int | None:
    """The smallest boundary beyond which a perturbation changes the mean loss by no more than
    `tolerance` (relative to the full-context loss), from there on; None if none does."""
    return effective_context(boundaries, [full + d for d in increases], full, tolerance)
