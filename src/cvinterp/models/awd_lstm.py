"""A word-level LSTM language model with the AWD-LSTM ingredients (Merity, Keskar & Socher 2018).

Every ingredient is an option, so the same class is the paper-size model (3 layers, 1150
hidden, 400 embedding) and the small one of the default profile:

- weight drop: DropConnect on each layer's hidden-to-hidden weights, one mask per forward pass;
- embedding dropout: whole word types dropped from the embedding matrix (``dropoute``);
- variational ("locked") dropout: one mask per sequence on the embeddings (``dropouti``),
  between layers (``dropouth``) and on the last layer's output (``dropout``);
- tied input and output embeddings (the last layer's width is then the embedding size).

Scoring (``last_log_probs``) runs cuDNN's LSTM where available and accepts contexts of
different lengths in one batch (packed sequences), returning the next-token log-probabilities
after each context's last token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from cvinterp.models import CheckpointError, read_checkpoint

FORMAT = "cvinterp-lm-1"


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout on (batch, time, features): one mask per sequence for all steps."""
    if not training or p == 0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedding_dropout(embed: nn.Embedding, tokens: torch.Tensor, p: float, training: bool):
    """Drop whole word types: a dropped word's vector is zero wherever it occurs."""
    weight = embed.weight
    if training and p > 0:
        mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return nn.functional.embedding(tokens, weight)


class AWDLSTM(nn.Module):
    """Embedding -> stacked LSTMs -> (tied) decoder; batch-first throughout."""

    def __init__(
        self,
        vocab_size: int,
        emb: int = 400,
        hidden: int = 1150,
        layers: int = 3,
        dropout: float = 0.4,
        dropouth: float = 0.2,
        dropouti: float = 0.65,
        dropoute: float = 0.1,
        wdrop: float = 0.5,
        tie: bool = True,
    ):
        super().__init__()
        self.vocab_size, self.emb, self.hidden, self.tie = vocab_size, emb, hidden, tie
        self.dropout, self.dropouth, self.dropouti = dropout, dropouth, dropouti
        self.dropoute, self.wdrop = dropoute, wdrop
        self.encoder = nn.Embedding(vocab_size, emb)
        sizes = [emb] + [hidden] * (layers - 1) + [emb if tie else hidden]
        self.rnns = nn.ModuleList(
            nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(layers)
        )
        self.decoder = nn.Linear(sizes[-1], vocab_size)
        if tie:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def _rnn(self, i: int, x, state):
        """Layer i, with DropConnect on its hidden-to-hidden weights while training."""
        rnn = self.rnns[i]
        if self.training and self.wdrop > 0:
            dropped = nn.functional.dropout(rnn.weight_hh_l0, self.wdrop, True)
            return functional_call(rnn, {"weight_hh_l0": dropped}, (x, state), strict=False)
        return rnn(x, state)

    def forward(self, tokens: torch.Tensor, state: list | None = None):
        """tokens (B, T) -> (logits (B, T, V), new state, last layer's output before and after
        its dropout: what AWD-LSTM's temporal activation regularisers read)."""
        x = embedding_dropout(self.encoder, tokens, self.dropoute, self.training)
        x = locked_dropout(x, self.dropouti, self.training)
        state = state or [None] * len(self.rnns)
        new_state, raw = [], x
        for i in range(len(self.rnns)):
            raw, s = self._rnn(i, x, state[i])
            new_state.append(s)
            last = i == len(self.rnns) - 1
            x = locked_dropout(raw, self.dropout if last else self.dropouth, self.training)
        return self.decoder(x), new_state, raw, x

    @torch.no_grad()
    def last_log_probs(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None):
        """Log-probabilities of the next token after each context, from a zero state.

        tokens (B, L) hold right-padded contexts; `lengths` (B,) their true lengths (None:
        all are L long). Returns (B, V).
        """
        x = self.encoder(tokens)
        if lengths is not None:
            x = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        for rnn in self.rnns:
            x, (h, _) = rnn(x)
        return torch.log_softmax(self.decoder(h[-1]), dim=-1)

    @torch.no_grad()
    def stream_hidden(self, ids: torch.Tensor, keep: torch.Tensor, chunk: int = 4096):
        """The last layer's output at positions `keep` of one long stream read from its start
        with the state carried through (the "full context" of every position).

        ids (N,), keep (K,) sorted positions; returns (K, width).
        """
        keep = keep.to(ids.device)
        out, state = [], [None] * len(self.rnns)
        for start in range(0, int(keep[-1]) + 1, chunk):
            x = self.encoder(ids[start : start + chunk][None])
            for i, rnn in enumerate(self.rnns):
                x, state[i] = rnn(x, state[i])
            sel = keep[(keep >= start) & (keep < start + chunk)]
            out.append(x[0, sel - start])
        return torch.cat(out)

    def arch_args(self) -> dict:
        return {
            "emb": self.emb,
            "hidden": self.hidden,
            "layers": len(self.rnns),
            "dropout": self.dropout,
            "dropouth": self.dropouth,
            "dropouti": self.dropouti,
            "dropoute": self.dropoute,
            "wdrop": self.wdrop,
            "tie": self.tie,
        }


def save_lm(path: str | Path, model: AWDLSTM, vocab: list[str], meta: dict) -> None:
    """Write a language-model checkpoint atomically (weights, vocabulary, settings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "arch": "awd_lstm",
        "arch_args": model.arch_args(),
        "vocab": list(vocab),
        "meta": dict(meta),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_lm(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode on `device`, vocabulary, checkpoint dict), loaded weights-only."""
    ckpt = read_checkpoint(path, FORMAT, "cvinterp language-model checkpoint")
    try:
        model = AWDLSTM(len(ckpt["vocab"]), **ckpt["arch_args"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:  # missing entries, unknown or wrong shapes
        raise CheckpointError(
            f"{path} does not hold a language model this version can build ({err}); delete it "
            "and run the workflow again to recreate it"
        ) from err
    return model.to(device).eval(), ckpt["vocab"], ckpt
