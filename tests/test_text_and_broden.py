"""Prose corpus, PTB-format reader and Broden reader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cvinterp.data.broden import BrodenDataset, primary_categories
from cvinterp.data.prose import (
    EOS,
    build_corpus,
    corpus_from_tokens,
    find_austen_dir,
    prose_tokens,
    tokenize,
)
from cvinterp.data.text import corpus_from_files, read_lm_text

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PTB = FIXTURES / "ptb_sample.txt"


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_broden", FIXTURES / "make_broden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- prose
def test_kjv_text():
    from cvinterp.data.prose import kjv_text

    text = kjv_text()
    assert len(text.split()) > 700_000
    assert " ".join(tokenize(text[:200])[:5]) == "in the beginning god created"
    assert text.rstrip().endswith("Amen.")


def test_austen_text():
    from cvinterp.data.fetch import austen_rdata_dir
    from cvinterp.data.prose import austen_text

    text = austen_text(austen_rdata_dir(REPO / "resources" / "packages"))
    assert len(text.split()) > 700_000
    assert "It is a truth universally acknowledged" in text
    assert text.startswith("SENSE AND SENSIBILITY")
    assert text.index("PRIDE AND PREJUDICE") < text.index("EMMA") < text.index("Persuasion")


def test_find_austen_dir_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get download r-cran-janeaustenr"):
        find_austen_dir([tmp_path / "nothing"])
    (tmp_path / "Rdata.rdx").write_bytes(b"")
    (tmp_path / "Rdata.rdb").write_bytes(b"")
    assert find_austen_dir([tmp_path / "nothing", tmp_path]) == tmp_path


def test_tokenize():
    text = "\"I don't know,\" said Mr. Darcy--in 1811, at the [king's] _Hall_; o'clock!"
    assert tokenize(text) == [
        '"', "i", "do", "n't", "know", ",", '"', "said", "mr.", "darcy", "--", "in", "N", ",",
        "at", "the", "king", "'s", "hall", ";", "o'clock", "!",
    ]  # fmt: skip
    assert tokenize("Verse 3:16 and 10,000 men") == ["verse", "N", "and", "N", "men"]
    assert tokenize("it\u2019s") == ["it", "'s"]


def test_prose_tokens_sentences():
    text = 'He left. "Is it?" she said. Mr. Bennet came\n\nCHAPTER II\nNext line'
    assert prose_tokens(text) == [
        "he", "left", ".", EOS, '"', "is", "it", "?", '"', EOS, "she", "said", ".", EOS,
        "mr.", "bennet", "came", EOS, "chapter", "ii", "next", "line", EOS,
    ]  # fmt: skip


def test_build_corpus_split_and_vocab():
    sentence = "b a c. a b. c d b."
    corpus = build_corpus([sentence] * 10, vocab_size=5, split=(0.75, 0.15, 0.1))
    # per text: "b a c . <eos> a b . <eos> c d b . <eos>" = 14 tokens, 140 in all; the cut at
    # round(0.75 * 140) = 105 falls inside a sentence and moves on to the next start (107)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (107, 19, 14)
    for part in (corpus.train, corpus.valid, corpus.test):
        assert part.dtype == np.int64 and part[-1] == 1  # each split ends with <eos>
    # train counts: '.' 23, b 23, a 16, c 15, d 7 -> tie broken alphabetically, c and d cut off
    assert corpus.vocab == ["<unk>", "<eos>", ".", "b", "a"]
    assert corpus.counts.tolist() == [15 + 7, 23, 23, 23, 16]
    assert corpus.decode(corpus.train[:4]) == ["b", "a", "<unk>", "."]


def test_corpus_from_tokens_unknown():
    corpus = corpus_from_tokens(["x", "y", "x", EOS], ["z", "x", EOS], ["y", EOS])
    assert corpus.vocab == ["<unk>", "<eos>", "x", "y"]
    assert corpus.valid.tolist() == [0, 2, 1]
    assert corpus.encode(["y", "q"]).tolist() == [3, 0]


# --------------------------------------------------------------------------- PTB format
def test_read_lm_text_ptb():
    tokens = read_lm_text(PTB)
    lines = PTB.read_text().splitlines()
    assert len(lines) == 30
    assert len(tokens) == 290 + 30
    assert tokens.count(EOS) == len(lines)
    assert tokens.count("<unk>") == 5
    assert tokens.count("N") == 12
    assert tokens[:3] == ["the", "city", "council"]
    assert tokens[tokens.index(EOS) - 1] == "winter"


def test_read_lm_text_empty_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(" \n = Title = \n \n the <unk> cat sat \n")
    assert read_lm_text(path) == ["=", "Title", "=", EOS, "the", "<unk>", "cat", "sat", EOS]
    assert read_lm_text(path, skip_empty=False).count(EOS) == 4


def test_corpus_from_files(tmp_path):
    valid = tmp_path / "valid.txt"
    valid.write_text(" the zebra said N \n")
    corpus = corpus_from_files(PTB, valid, PTB)
    assert len(corpus.vocab) == 189  # 188 distinct words (incl. <unk>) + <eos>
    assert corpus.vocab[:3] == ["<unk>", "<eos>", "the"]
    assert corpus.counts[:3].tolist() == [5, 30, 35]
    assert corpus.decode(corpus.valid) == ["the", "<unk>", "said", "N", EOS]
    assert len(corpus.test) == 320 and np.array_equal(corpus.train, corpus.test)
    small = corpus_from_files(PTB, valid, PTB, vocab_size=20)
    assert len(small.vocab) == 20
    assert small.counts.sum() == 320 and small.counts[0] > 5


# --------------------------------------------------------------------------- Broden
@pytest.fixture
def broden_root(tmp_path):
    return _load_fixture_module().write_fixture(tmp_path / "broden", rng_seed=0)


def test_primary_category_is_the_highest_coverage_ties_to_the_later_category():
    """The authors' rule (NetDissect's primary_categories_per_index), not label.csv's counts."""
    cats = ["object", "part", "texture"]
    coverage = {"object": {1: 3.0, 2: 0.5, 3: 2.0}, "part": {1: 0.2, 2: 4.0, 3: 2.0}, "texture": {}}
    primary = primary_categories(cats, coverage, [1, 2, 3, 4])
    assert primary == {1: "object", 2: "part", 3: "part", 4: "texture"}  # 4: coded nowhere


def test_broden_missing_coverage_is_one_clear_error(broden_root):
    path = broden_root / "c_object.csv"
    path.write_text(path.read_text().replace(",0.5\n", ",\n", 1))
    with pytest.raises(ValueError, match=r"c_object\.csv: label 3 has coverage ''"):
        BrodenDataset(broden_root)


def test_broden_reader(broden_root):
    ds = BrodenDataset(broden_root)
    assert len(ds) == 4
    assert ds.categories == ["color", "object", "scene", "texture"]
    assert (300, "lamp", "object") in ds.labels
    assert (4, "grass", "texture") in ds.labels
    assert ds.codes["object"] == {1: 3, 2: 4, 3: 300}

    item = ds[0]
    assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8
    assert set(item["masks"]) == {"color", "object"}
    obj = item["masks"]["object"]
    assert obj.shape == (2, 8, 8) and obj.dtype == np.int32
    assert np.unique(obj[0]).tolist() == [0, 3]
    assert np.unique(obj[1]).tolist() == [0, 300]
    assert obj[1, 7, 7] == 300 and obj[1, 0, 0] == 0
    assert item["masks"]["color"][0, 0, 0] == 1 and item["masks"]["color"][0, 0, 7] == 2
    assert item["image_labels"] == {"scene": [5]}

    item = ds[1]
    assert item["image_labels"] == {"scene": [5, 6]}
    assert np.unique(item["masks"]["object"]).tolist() == [4, 300]
    assert np.unique(item["masks"]["texture"]).tolist() == [4, 7]

    item = ds[2]
    assert item["masks"] == {}
    assert item["image_labels"] == {"scene": [6], "texture": [7]}


def test_broden_split(broden_root):
    val = BrodenDataset(broden_root, split="val")
    assert len(val) == 1 and val[0]["split"] == "val"
    assert np.unique(val[0]["masks"]["object"]).tolist() == [0, 3]
    assert len(BrodenDataset(broden_root, split="train")) == 3


def test_broden_missing_files(tmp_path, broden_root):
    with pytest.raises(FileNotFoundError, match=r"index\.csv.*broden1_227"):
        BrodenDataset(tmp_path / "absent")
    (broden_root / "c_texture.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"c_texture\.csv"):
        BrodenDataset(broden_root)


def test_broden_missing_image(broden_root):
    ds = BrodenDataset(broden_root)
    (broden_root / "images" / "fixt" / "img0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img0.jpg"):
        ds[0]
