"""Part-of-speech tags of a corpus split, and the function / content word classes they define.

Khandelwal et al. 2018 tell function from content words by each token's part-of-speech tag in
context (their repository ships the Penn Treebank tags of PTB and WikiText-2 under
`data/*_pos_only/`, one line of tags per line of text; `drop_pos` drops the tokens whose tag is
in a list). Here:

- PTB and WikiText-2 (paper profile): the authors' own tag files, downloaded with checksums
  and read with `read_tag_file`; a file that does not line up with the split's tokens is an
  error, never silently shifted;
- any other corpus (the offline prose): `tag_tokens`, TextBlob's Brill tagger (Pattern's
  lexicon and contextual rules from the Wall Street Journal, shipped inside the `textblob`
  wheel), sentence by sentence. Its lexicon lacks Early Modern English, so the forms of
  `ARCHAIC_TAGS` get their Penn tags ("art" only after "thou"). On PTB validation it agrees with
  the authors' tags on the function / content / other class of 99.3% of tokens.

Classes (Penn tag set): content words are the open classes the paper names, nouns, verbs,
adjectives and adverbs (NN*, VB*, JJ*, RB*); function words the closed classes (determiners,
prepositions, pronouns, conjunctions, modals, particles, wh-words: `FUNCTION_TAGS`). Numbers,
symbols, foreign words, interjections, punctuation, `<unk>` and `<eos>` are neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvinterp.data.images import DataError
from cvinterp.data.prose import EOS, UNK
from cvinterp.data.text import read_lm_text

#: The tagger behind `tag_tokens`, named in metrics and captions.
TAGGER = "TextBlob PatternTagger (Brill, WSJ lexicon)"
#: Penn Treebank tags of the closed-class (function) words.
FUNCTION_TAGS = frozenset("CC DT EX IN MD PDT POS PRP PRP$ RP TO WDT WP WP$ WRB".split())
#: Prefixes of the Penn tags of the open-class (content) words.
CONTENT_PREFIXES = ("NN", "VB", "JJ", "RB")
#: Early Modern English forms (the King James Bible) the modern lexicon lacks or mis-tags.
ARCHAIC_TAGS = {
    "thou": "PRP",
    "thee": "PRP",
    "ye": "PRP",
    "thy": "PRP$",
    "thine": "PRP$",
    "hath": "VBZ",
    "doth": "VBZ",
    "saith": "VBZ",
    "hast": "VBP",
    "dost": "VBP",
    "shalt": "MD",
    "wilt": "MD",
    "unto": "IN",
}


def word_classes(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(function, content) boolean masks, one entry per tag."""
    function = np.array([t in FUNCTION_TAGS for t in tags], dtype=bool)
    content = np.array([t.startswith(CONTENT_PREFIXES) for t in tags], dtype=bool)
    return function, content


def tag_tokens(tokens: Sequence[str]) -> list[str]:
    """One Penn tag per token of a tokenised stream (lower-case, PTB-style, `<eos>` after each
    sentence), tagged a sentence at a time. `N` (a number) is CD, `<unk>` and `<eos>` keep
    their own names as tags, as in the authors' files."""
    from textblob.en import tag

    out: list[str] = []
    sentence: list[str] = []

    def flush() -> None:
        if not sentence:
            return
        tagged = tag(" ".join(sentence), tokenize=False)
        if len(tagged) != len(sentence):
            raise DataError(f"the tagger split a sentence differently: {' '.join(sentence)}")
        for i, (word, (_, t)) in enumerate(zip(sentence, tagged, strict=True)):
            if word == UNK:
                t = UNK
            elif word == "N":
                t = "CD"
            elif word == "art" and i and sentence[i - 1] == "thou":
                t = "VBP"
            else:
                t = ARCHAIC_TAGS.get(word, t)
            out.append(t)
        sentence.clear()

    for token in tokens:
        if token == EOS:
            flush()
            out.append(EOS)
        else:
            sentence.append(token)
    flush()
    return out


def read_tag_file(path: str | Path, skip_empty: bool) -> list[str]:
    """The tags of a `*_pos_only` file (the authors' format: one line of space-separated tags
    per line of text), with `<eos>` after each line and empty lines skipped or kept exactly as
    the corpus's own reader, `read_lm_text`, does for the text: the same reader."""
    return read_lm_text(path, skip_empty=skip_empty)


#: The authors' tag files of each corpus: (the name `cvinterp.data.fetch.DOWNLOADS` gives a
#: split's file, the folder of their repository it comes from).
TAG_FILES = {
    "ptb": ("ptb.pos.{}.txt", "penn_pos_only"),
    "wikitext2": ("wikitext-2.pos.{}.txt", "wikitext-2_pos_only"),
}


def tag_source(corpus_name: str) -> str:
    """Where `split_tags` takes a corpus's tags from, in words (for metrics and captions)."""
    if corpus_name in TAG_FILES:
        return f"Khandelwal et al.'s tag files (data/{TAG_FILES[corpus_name][1]})"
    return TAGGER


def split_tags(corpus, corpus_name: str, split: str, tags_dir: str | Path | None) -> list[str]:
    """The tag of every token of `split` of `corpus`: the authors' files for PTB and WikiText-2
    (in `tags_dir`), the tagger for any other corpus."""
    ids = getattr(corpus, split)
    if corpus_name not in TAG_FILES:
        return tag_tokens(corpus.decode(ids))
    path = Path(tags_dir or ".") / TAG_FILES[corpus_name][0].format(split)
    if not path.is_file():
        raise DataError(
            f"{path} is missing: the part-of-speech tags of {corpus_name}'s {split} split "
            "(Khandelwal et al.'s own files; the paper profile downloads them)"
        )
    tags = read_tag_file(path, skip_empty=corpus_name == "ptb")
    if len(tags) != len(ids):
        raise DataError(
            f"{path} has {len(tags)} tags (with one <eos> per line) for the {len(ids)} tokens "
            f"of {corpus_name}'s {split} split: the files do not belong together"
        )
    eos = np.asarray(ids) == corpus.word_to_id[EOS]
    if not np.array_equal(eos, np.array([t == EOS for t in tags])):
        raise DataError(f"{path}: its lines do not line up with {corpus_name}'s {split} split")
    return tags
