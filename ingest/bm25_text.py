"""What BM25 sees of a chunk and of a query: one analyzer for both (lowercase, English stopwords,
Snowball stemming via PyStemmer), and a chunk's text with its title as a weighted field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class Analyzer:
    """Text -> BM25 terms. `title_weight` repeats the title's terms (BM25F-style field weighting)."""

    title_weight: int = 1
    stem: bool = True

    @property
    def signature(self) -> str:
        """Changes whenever stored terms would change, so a persisted index knows to re-analyze."""
        return f"v1:en-stop:{'snowball' if self.stem else 'none'}:title{self.title_weight}"

    @cached_property
    def _stopwords(self) -> frozenset[str]:
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)

    @cached_property
    def _stem_words(self) -> Any:
        import Stemmer

        return Stemmer.Stemmer("english").stemWords

    def terms(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stopwords]
        return list(self._stem_words(words)) if self.stem else words

    def chunk_terms(self, text: str, metadata: dict[str, Any]) -> list[str]:
        """Terms of a chunk: its title `title_weight` times, its section, then its text."""
        title = str(metadata.get("title") or "")
        section = str(metadata.get("section") or "")
        terms = self.terms(title) * self.title_weight if title else []
        if section and section != title:
            terms += self.terms(section)
        return terms + self.terms(text)
