"""Part-of-speech tags and word classes (cvinterp.data.pos), as Khandelwal et al. define them:
a token's class comes from its Penn Treebank tag where it stands, not from a word list."""

from __future__ import annotations

import numpy as np
import pytest

from cvinterp.data import DataError
from cvinterp.data.pos import read_tag_file, split_tags, tag_tokens, word_classes
from cvinterp.data.prose import corpus_from_tokens


def classes(tags):
    function, content = word_classes(tags)
    return ["f" if f else "c" if c else "-" for f, c in zip(function, content, strict=True)]


def test_word_classes_follow_the_penn_tags():
    tags = ["DT", "NN", "VBZ", "VBN", "RB", "JJR", "IN", "PRP$", "MD", "CD", "<unk>", "<eos>"]
    tags += ["WDT", "TO", "POS", "RP", "UH", "$", ",", "NNPS", "EX", "PDT", "CC", "WRB"]
    assert "".join(classes(tags)) == "fcccccfff---" + "ffff---cffff"


def test_auxiliaries_and_adverbs_are_content_by_their_tags():
    """The word list called is / was / has / been and adverbs function words; by their tags
    (VBZ, VBD, VBN, RB) they are verbs and adverbs: content words."""
    tokens = "the deal was n't done because prices have been rising very fast <eos>".split()
    tags = tag_tokens(tokens)
    got = dict(zip(tokens, classes(tags), strict=True))
    assert got["was"] == got["been"] == got["have"] == "c"
    assert got["very"] == got["fast"] == got["rising"] == "c"
    assert got["the"] == got["because"] == "f"


def test_tagging_a_ptb_style_stream():
    tokens = "the company said it will sell its <unk> unit for $ N million <eos> ".split()
    tokens += "mr. smith is N years old <eos>".split()
    tags = tag_tokens(tokens)
    assert len(tags) == len(tokens)
    assert tags[tokens.index("<unk>")] == "<unk>" and tags[tokens.index("N")] == "CD"
    assert [t for t, w in zip(tags, tokens, strict=True) if w == "<eos>"] == ["<eos>", "<eos>"]
    # the company said it will sell its <unk> unit for $ N million: N and million are CD
    assert "".join(classes(tags[:13])) == "fccffcf-cf---"
    assert tag_tokens(tokens) == tags  # deterministic


def test_archaic_forms_get_their_tags_and_art_depends_on_its_neighbour():
    tokens = "and thou art the man that hath done this unto thee <eos>".split()
    tokens += "thy god doth know <eos> she had a taste for art and music <eos>".split()
    tags = tag_tokens(tokens)
    by_position = list(zip(tokens, tags, strict=True))
    assert by_position[1] == ("thou", "PRP") and by_position[2] == ("art", "VBP")
    assert by_position[6] == ("hath", "VBZ") and by_position[12] == ("thy", "PRP$")
    assert by_position[-4] == ("art", "NN")  # the noun, after "for"


def test_read_tag_file(tmp_path):
    path = tmp_path / "valid.txt"
    path.write_text("DT NN \n \nPRP VBD\n")
    assert read_tag_file(path, skip_empty=True) == ["DT", "NN", "<eos>", "PRP", "VBD", "<eos>"]
    assert read_tag_file(path, skip_empty=False) == [
        "DT", "NN", "<eos>", "<eos>", "PRP", "VBD", "<eos>",
    ]  # fmt: skip


def test_split_tags_reads_the_authors_files_and_checks_they_line_up(tmp_path):
    valid = "the cat sat <eos> a dog ran <eos>".split()
    corpus = corpus_from_tokens(valid * 5, valid, valid)
    (tmp_path / "ptb.pos.valid.txt").write_text("DT NN VBD\nDT NN VBD\n")
    tags = split_tags(corpus, "ptb", "valid", tmp_path)
    assert tags == ["DT", "NN", "VBD", "<eos>"] * 2
    (tmp_path / "ptb.pos.valid.txt").write_text("DT NN VBD\nDT NN\n")
    with pytest.raises(DataError, match="do not belong together"):
        split_tags(corpus, "ptb", "valid", tmp_path)
    (tmp_path / "ptb.pos.valid.txt").write_text("DT NN\nDT NN VBD VBD\n")
    with pytest.raises(DataError, match="do not line up"):
        split_tags(corpus, "ptb", "valid", tmp_path)
    with pytest.raises(DataError, match="the paper profile downloads them"):
        split_tags(corpus, "ptb", "test", tmp_path)
    # any other corpus is tagged
    prose = split_tags(corpus, "prose", "valid", None)
    assert len(prose) == len(corpus.valid) and prose[3] == "<eos>"
    assert np.array(classes(prose))[[0, 1]].tolist() == ["f", "c"]
