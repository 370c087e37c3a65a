"""Search by words, part one: a BM25 ranking of the catalog's own text (names and metadata values).

Words are lower-cased, split on anything but letters and digits ("T-shirt" gives "t", "shirt" and
"tshirt", so it meets the articleType "Tshirts"), and stemmed (Snowball English: "jackets" finds
"jacket"). A query word that no product uses is mapped to the closest word that one does
(rapidfuzz, ratio >= FUZZY_CUTOFF), so "jaket" still finds jackets. The index is built in memory
from the items when first searched (about a second for 44k products): it always matches the
snapshot it belongs to, and there is no file to go stale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

import bm25s
import numpy as np
import Stemmer
from rapidfuzz import fuzz, process

NAME = "productDisplayName"
SKIPPED_COLUMNS = frozenset({"year"})  # a number that a shopper does not type into a search box
STOP_WORDS = frozenset({"a", "an", "and", "the", "for", "of", "in", "with", "s", "to", "by", "on"})
FUZZY_CUTOFF = 80  # rapidfuzz ratio (0-100) from which a misspelt word counts as a catalog word
FUZZY_MIN_LENGTH = 4  # shorter words are too easily "corrected" into another word
MAX_QUERY_CHARS = 500  # a longer query is not a shopper's search: refused, with a clear message
WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-case words of a text; a hyphenated word also gives its parts ("t-shirt": t-shirt -> t, shirt, tshirt)."""
    found: list[str] = []
    for word in WORD.findall(text.lower()):
        parts = word.split("-")
        found.extend(part for part in parts if part not in STOP_WORDS)
        if len(parts) > 1:
            found.append("".join(parts))
    return found


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def stems(text: str) -> list[str]:
    """The stemmed words of a text, as the index and the queries both see them."""
    return _stemmer().stemWords(words(text))


def item_text(metadata: Mapping[str, str]) -> str:
    """What a product is found by: its name, then its other metadata values (gender, type, colour, usage...)."""
    values = [metadata.get(NAME, "")]
    values += [v for column, v in metadata.items() if column != NAME and column not in SKIPPED_COLUMNS]
    return " ".join(v for v in values if v and v != "NA")


def check_query(text: str) -> str:
    """The query stripped; a ValueError naming the problem if it is empty or too long."""
    text = text.strip()
    if not text:
        raise ValueError("the search text is empty: type a few words, e.g. 'red tshirt for men'")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"the search text is too long ({len(text):,} characters, limit {MAX_QUERY_CHARS})")
    return text


class TextIndex:
    """BM25 over every item's text, with stemming and misspelt words mapped to the catalog's own words."""

    def __init__(self, texts: Sequence[str]) -> None:
        stemmer = _stemmer()
        tokens = [words(text) for text in texts]
        vocabulary = sorted({word for row in tokens for word in row})
        stem_of = dict(zip(vocabulary, stemmer.stemWords(vocabulary), strict=True))
        self._words = vocabulary  # what a misspelt query word is compared with
        self._stem_of = stem_of
        self._bm25 = bm25s.BM25()
        if vocabulary:  # bm25s cannot index a corpus without a word (an empty index, products without text)
            self._bm25.index([[stem_of[word] for word in row] for row in tokens], show_progress=False)
        self._stems = set(self._bm25.vocab_dict) - {""} if vocabulary else set()
        self.size = len(texts)

    @classmethod
    def of(cls, metadata: Sequence[Mapping[str, str]]) -> TextIndex:
        return cls([item_text(m) for m in metadata])

    def query_stems(self, text: str) -> list[str]:
        """The catalog stems a query stands for: its own stems, or those of the closest catalog words."""
        found: list[str] = []
        for word in words(text):
            stem = _stemmer().stemWord(word)
            if stem not in self._stems and len(word) >= FUZZY_MIN_LENGTH:
                closest = process.extractOne(word, self._words, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF)
                stem = self._stem_of[closest[0]] if closest else stem
            if stem in self._stems:
                found.append(stem)
        return found

    def scores(self, text: str) -> np.ndarray:
        """[N] BM25 score of every item for the query (0: no word in common)."""
        found = self.query_stems(text)
        if not found or not self.size:
            return np.zeros(self.size, dtype=np.float32)
        return self._bm25.get_scores(found)
