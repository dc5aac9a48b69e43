"""The lm_context experiment: claims from the measured curves, and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from cvinterp.data import DataError
from cvinterp.data.prose import corpus_from_tokens
from cvinterp.experiments.lm_context import context_claims, context_of_model
from cvinterp.models import CheckpointError
from cvinterp.models.awd_lstm import AWDLSTM, save_lm

SIZES = [1, 10, 100, 1000]
BOUNDARIES = [1, 20, 200]


def result(eff, order, content, function, n=(5, 5)):
    return {
        "effective_context": {"all": eff, "content": content, "function": function},
        "insensitive_beyond": {"shuffle_global": order},
        "groups": {"content": {"n": n[0]}, "function": {"n": n[1]}},
        "perturbation": {"context": 300},
    }


def trained(corpus, ppl):
    return {"corpus": corpus, "test_perplexity": ppl, "valid_perplexity": ppl + 2, "history": [1]}


def test_claims_take_the_model_farthest_from_the_paper():
    results = {"a": result(200, 30, 100, 10), "b": result(30, None, None, 20)}
    models = {"a": trained("ptb", 60.0), "b": trained("wikitext2", 80.0)}
    claims = context_claims(results, SIZES, BOUNDARIES, models, 0.01)
    assert claims["effective_context"]["value"] == 30  # b is farther from 200 than a
    assert "b: 30 tokens" in claims["effective_context"]["ours"]
    # "never" counts as infinite, and b decides
    assert claims["order_matters_only_nearby"]["value"] == math.inf
    assert "more than 1% still at boundary 200" in claims["order_matters_only_nearby"]["ours"]
    # b's content targets never settle: inf / 20; a: 100 / 10 = 10 -> the smaller decides
    assert claims["content_needs_more_context"]["value"] == 10
    assert claims["ptb_test_perplexity"]["value"] == 60.0
    assert claims["wt2_test_perplexity"]["value"] == 80.0


def test_claims_without_the_papers_corpora_or_groups_are_na():
    results = {"a": result(None, 5, 1, 1, n=(0, 7))}
    claims = context_claims(results, SIZES, BOUNDARIES, {"a": trained("prose", 100.0)}, 0.01)
    assert claims["effective_context"]["value"] == math.inf  # fails any between-rule
    assert "not within 1% up to 1000 tokens" in claims["effective_context"]["ours"]
    assert "na" in claims["content_needs_more_context"]
    assert "prose corpus is not comparable" in claims["ptb_test_perplexity"]["na"]
    assert "na" in claims["wt2_test_perplexity"]


def test_a_checkpoint_of_another_vocabulary_is_refused(tmp_path, monkeypatch):
    words = [f"w{i}" for i in range(20)]
    corpus = corpus_from_tokens(words * 60, words * 20, words * 20)
    monkeypatch.setattr(
        "cvinterp.experiments.lm_context.corpus_of", lambda spec, folder, austen: corpus
    )
    torch.manual_seed(0)
    path = tmp_path / "lm.pt"
    save_lm(path, AWDLSTM(len(corpus.vocab), emb=4, hidden=8, layers=1), corpus.vocab[::-1], {})
    settings = dict(
        corpus_dir=None,
        austen_dir=None,
        tags_dir=None,
        split="test",
        targets=5,
        sizes=[1, 2],
        boundaries=[1],
        perturb_context=4,
        span=2,
        perturbations=["shuffle_global"],
        frequent_count=10,
        rare_count=2,
        tolerance=0.01,
        batch_size=4,
        seed=0,
        dev=torch.device("cpu"),
    )
    with pytest.raises(CheckpointError, match="another vocabulary"):
        context_of_model("lm", str(path), {"corpus": "prose"}, **settings)
    save_lm(path, AWDLSTM(len(corpus.vocab), emb=4, hidden=8, layers=1), corpus.vocab, {})
    r = context_of_model("lm", str(path), {"corpus": "prose"}, **settings)
    assert r["targets"] == 5 and len(r["restriction"]["increase"]) == 2
    assert r["speed"]["targets_scored"] == 5 * (2 + 1 + 1)
    # a perturbation window that is also a restriction size is scored once, not twice
    again = context_of_model("lm", str(path), {"corpus": "prose"}, **{**settings, "sizes": [1, 4]})
    assert again["speed"]["targets_scored"] == 5 * (2 + 0 + 1)
    assert again["perturbation"]["base_loss"] == again["restriction"]["loss"][1]
    settings["sizes"] = [1, 2000]  # more history than the 400-token test split has
    with pytest.raises(DataError, match="too few for targets with 2000 tokens of history"):
        context_of_model("lm", str(path), {"corpus": "prose"}, **settings)


def test_ptb_is_analysed_with_the_authors_tag_files(tmp_path):
    """The paper profile's corpora: word classes from Khandelwal et al.'s tag files (one line of
    tags per line of text), named in the metrics; replacement text from the training split."""
    from pathlib import Path

    from cvinterp.data import load_corpus

    sample = (Path(__file__).parent / "fixtures" / "ptb_sample.txt").read_text()
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(sample)
    corpus = load_corpus("ptb", folder=tmp_path, vocab_size=None)
    # a determiner for "the" / "a", a noun for every other word: 2 classes, known counts
    tags = [
        " ".join("DT" if w in ("the", "a") else "NN" for w in line.split())
        for line in sample.splitlines()
    ]
    (tmp_path / "ptb.pos.valid.txt").write_text("\n".join(tags) + "\n")
    torch.manual_seed(0)
    path = tmp_path / "lm.pt"
    save_lm(path, AWDLSTM(len(corpus.vocab), emb=4, hidden=8, layers=1), corpus.vocab, {})
    r = context_of_model(
        "lm", str(path), {"corpus": "ptb", "vocab_size": None}, corpus_dir=str(tmp_path),
        austen_dir=None, tags_dir=str(tmp_path), split="valid", targets=20, sizes=[1, 2],
        boundaries=[1], perturb_context=6, span=2,
        perturbations=["drop_function", "drop_content", "replace"], frequent_count=3,
        rare_count=2, tolerance=0.01, batch_size=8, seed=0, dev=torch.device("cpu"),
    )  # fmt: skip
    words = sample.split()
    function = sum(w in ("the", "a") for w in words)
    assert r["tags"]["source"].startswith("Khandelwal et al.'s tag files")
    assert r["tags"]["function_tokens"] == function
    assert r["tags"]["content_tokens"] == len(words) - function
    assert r["split"] == "valid" and set(r["perturbation"]["increase"]) == {
        "drop_function", "drop_content", "replace",
    }  # fmt: skip
    (tmp_path / "ptb.pos.valid.txt").unlink()
    with pytest.raises(DataError, match="Khandelwal et al.'s own files"):
        context_of_model(
            "lm", str(path), {"corpus": "ptb", "vocab_size": None}, corpus_dir=str(tmp_path),
            austen_dir=None, tags_dir=str(tmp_path), split="valid", targets=20, sizes=[1, 2],
            boundaries=[1], perturb_context=6, span=2, perturbations=["replace"],
            frequent_count=3, rare_count=2, tolerance=0.01, batch_size=8, seed=0,
            dev=torch.device("cpu"),
        )  # fmt: skip
