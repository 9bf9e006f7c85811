"""RAKE keywords from queries, with the Quest paper's filters.

RAKE comes from ``rake-nltk`` with an explicit stopword list and plain regex tokenizers, so no
NLTK data is needed (or downloaded) at run time. A keyword survives when

* its RAKE score (degree / frequency, summed over its words) is >= ``min_score`` [3.0],
* it has >= ``min_chars`` [4] characters once punctuation is stripped, and
* it is not a stop keyword (the paper's Table 7 list plus any the user adds).
"""
from __future__ import annotations

import random
import re
import string
import unicodedata
from collections.abc import Iterable

from rake_nltk import Rake

# NLTK's English stopword list (nltk.corpus.stopwords.words("english"), 179 words), copied so
# that no NLTK data download is needed.
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves what which who whom this that that'll these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of at
by for with about against between into through during before after above below to from up down
in out on off over under again further then once here there when where why how all any both
each few more most other some such no nor not only own same so than too very s t can will just
don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't
doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't
needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())

# Stop keywords reported in the Quest paper (Table 7).
STOP_KEYWORDS = frozenset([
    "best way", "get rid", "bad idea", "good way", "main differences", "valid way",
    "following sentence", "two sentences", "better way", "mean", "passage mean", "following data",
    "good idea", "best ways", "correct way", "sentence mean", "next word", "following passage",
    "part 1", "current state", "following equation",
])

# Generic keywords, stopped by default on top of Table 7 (``--no-stop-generic`` keeps them): on
# the sample corpus, frequent keywords that name no subject, so they would group unrelated
# documents ("What is the latest version of X?" for any package X), found the way the paper grew
# its list: from the most frequent keywords (documents and sources holding them, as
# `longforge analyze` lists them) of Gemma 3 270M's few-shot queries over the whole corpus,
# Qwen2.5-Coder-0.5B-Instruct's queries on a sample, and the documents' own keywords.
GENERIC_KEYWORDS = frozenset([
    # versions and releases, of whatever package
    "latest version", "current version", "new version", "version number",
    "upstream version number", "new upstream release", "new upstream version",
    "upstream release", "non-maintainer upload",
    # the text itself rather than its subject
    "following file", "following code", "following statement", "source code", "code snippet",
    "given code", "given python code snippet", "python code snippet", "see also",
    "commit message", "command-line options", "command line options", "options available",
    "two types", "main tokens",
])

_SENT = re.compile(r"(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n+")  # also CJK 。！？
_JOINERS = frozenset("'-\u2010.")  # inside a word: don't (also don\u2019t), x-ray, c.d.e, 3.11
_DELIMITER = "."                          # what any punctuation or symbol becomes for RAKE
_PUNCT = set(string.punctuation) | {"``", "''", "--"}


def _sentences(text: str) -> list[str]:
    return [s for s in _SENT.split(text) if s.strip()]


def _is_word_char(ch: str) -> bool:
    """Letters, marks and digits of any script (Unicode categories L*, M*, N*) and ``_``."""
    return ch == "_" or unicodedata.category(ch)[0] in "LMN"


def _words(sentence: str) -> list[str]:
    """Unicode-aware words: runs of word characters (NFC-normalized, so an accent is part of its
    letter), joined across a single ``'``, ``\u2019``, ``-`` or ``.`` between word characters.
    Every other non-space character (punctuation, symbols of any script) becomes one delimiter
    token, which RAKE treats as a phrase boundary. Text without spaces (CJK) gives one word per
    run between punctuation."""
    text = unicodedata.normalize("NFC", sentence).replace("\u2019", "'")
    out, start, n = [], None, len(text)
    for i, ch in enumerate(text):
        if _is_word_char(ch):
            if start is None:
                start = i
            continue
        if (ch in _JOINERS and start is not None and i + 1 < n and _is_word_char(text[i + 1])):
            continue
        if start is not None:
            out.append(text[start:i])
            start = None
        if not ch.isspace():
            out.append(_DELIMITER)
    if start is not None:
        out.append(text[start:])
    return out


def is_punctuation(ch: str) -> bool:
    """ASCII punctuation (``string.punctuation``, symbols included) or any Unicode P* character."""
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def strip_punctuation(phrase: str) -> str:
    return "".join(ch for ch in phrase if not is_punctuation(ch))


class KeywordExtractor:
    """RAKE + the paper's filters. ``extra_stop_keywords`` extend the paper's list."""

    def __init__(self, min_score: float = 3.0, min_chars: int = 4,
                 extra_stop_keywords: Iterable[str] = ()):
        self.min_score, self.min_chars = min_score, min_chars
        self.stop_keywords = STOP_KEYWORDS | {k.strip().lower() for k in extra_stop_keywords}
        self._rake = Rake(stopwords=set(STOPWORDS), punctuations=_PUNCT,
                          sentence_tokenizer=_sentences, word_tokenizer=_words)

    def scored(self, query: str) -> list[tuple[str, float]]:
        """All RAKE phrases of ``query`` with their scores (before filtering)."""
        if not query.strip():
            return []
        self._rake.extract_keywords_from_text(query)
        return [(p, s) for s, p in self._rake.get_ranked_phrases_with_scores()]

    def keep(self, phrase: str, score: float) -> bool:
        return (score >= self.min_score
                and len(strip_punctuation(phrase).strip()) >= self.min_chars
                and phrase.strip().lower() not in self.stop_keywords)

    def keywords(self, query: str) -> list[str]:
        """Surviving keywords of one query, best score first (ties: alphabetical)."""
        kept = [(p, s) for p, s in self.scored(query) if self.keep(p, s)]
        return [p for p, _ in sorted(kept, key=lambda ps: (-ps[1], ps[0]))]

    def document_keywords(self, queries: Iterable[str]) -> list[str]:
        """Surviving keywords over all of a document's queries, deduplicated, in order."""
        seen: dict[str, None] = {}
        for q in queries:
            for k in self.keywords(q):
                seen.setdefault(k, None)
        return list(seen)


def representative_keyword(candidates: list[str], seed: int, doc_id: str) -> str | None:
    """One keyword at random among ``candidates``; the draw depends only on (seed, doc id), so
    it does not change with sharding or document order."""
    if not candidates:
        return None
    return random.Random(f"{seed}:{doc_id}").choice(sorted(candidates))


class PromptEcho:
    """Keywords that echo the few-shot questions of the causal predictor's prompt.

    A small base model often copies an example question, exactly or nearly ("How do I undo the
    last commit without losing changes?" for the example "... the last git commit without losing
    changes?"). Exact copies of a question are dropped before RAKE; this catches the near ones:
    the RAKE keywords of the example questions (:attr:`keywords`, same filters) are stop
    keywords, and so is any keyword of two or more words whose words are all words of one of
    them, or that shares at least half of the words of the two together (Jaccard >= 0.5).
    """

    def __init__(self, extractor: KeywordExtractor, questions: Iterable[str], jaccard: float = 0.5):
        self.keywords = sorted({k for q in questions for k in extractor.keywords(q)})
        self._sets = [frozenset(k.split()) for k in self.keywords]
        self.jaccard = jaccard

    def __call__(self, keyword: str) -> bool:
        words = frozenset(keyword.split())
        return any((len(words) >= 2 and words <= e) or len(words & e) >= self.jaccard * len(words | e)
                   for e in self._sets)
