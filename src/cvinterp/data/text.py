"""Readers for pre-tokenised word-level LM text (Penn Treebank, WikiText-2)."""

from __future__ import annotations

from pathlib import Path

from cvinterp.data.prose import EOS, Corpus, corpus_from_tokens


def read_lm_text(path: str | Path, skip_empty: bool = True) -> list[str]:
    """Whitespace tokens of each line followed by ``<eos>`` (PTB convention).

    Tokens are kept as written (WikiText's and PTB's own ``<unk>`` included).  Empty lines
    are skipped; AWD-LSTM's reader instead gives each one a lone ``<eos>`` (``skip_empty=False``).
    """
    tokens: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            words = line.split()
            if words or not skip_empty:
                tokens.extend(words)
                tokens.append(EOS)
    return tokens


def corpus_from_files(
    train: str | Path,
    valid: str | Path,
    test: str | Path,
    vocab_size: int | None = None,
    skip_empty: bool = True,
) -> Corpus:
    """A :class:`Corpus` from train/valid/test files; vocab from train, unknown -> ``<unk>``."""
    splits = [read_lm_text(p, skip_empty=skip_empty) for p in (train, valid, test)]
    return corpus_from_tokens(*splits, vocab_size=vocab_size)
