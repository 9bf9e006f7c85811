import pytest

from longforge.synth.keywords import (STOP_KEYWORDS, KeywordExtractor, representative_keyword,
                                      strip_punctuation)


def test_scores_are_rake_degree_over_frequency():
    scored = dict(KeywordExtractor().scored("How do I import a new upstream patch?"))
    assert scored["new upstream patch"] == pytest.approx(9.0)  # 3 words x degree 3
    assert scored["import"] == pytest.approx(1.0)


def test_score_threshold_keeps_phrases_of_three_or_more():
    ex = KeywordExtractor()
    # "license" alone scores 1.0 (< 3.0), "gnu general public license" 16.0
    assert ex.keywords("What is in the GNU General Public License?") == [
        "gnu general public license"]
    assert ex.keywords("What is a license?") == []
    assert KeywordExtractor(min_score=1.0).keywords("What is a license?") == ["license"]


def test_min_chars_counts_after_punctuation_stripped():
    ex = KeywordExtractor(min_score=0.0)
    assert strip_punctuation("c.d.e") == "cde"
    assert "c.d.e" not in ex.keywords("Why c.d.e?")          # 3 chars once dots are gone
    assert "c.d.e.f" in ex.keywords("Why c.d.e.f?")          # 4 chars


def test_stop_keywords_from_the_paper_and_user_extension():
    assert "best way" in STOP_KEYWORDS and "following equation" in STOP_KEYWORDS
    q = "What is the best way to parse command line arguments?"
    ex = KeywordExtractor()
    got = ex.keywords(q)
    assert "best way" not in got and "parse command line arguments" in got
    extended = KeywordExtractor(extra_stop_keywords=["Parse Command Line Arguments"])
    assert extended.keywords(q) == []


def test_works_without_nltk_data(monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])  # any lookup of NLTK data would now fail
    assert KeywordExtractor().keywords("How are shared library symbols versioned?") == [
        "shared library symbols versioned"]


def test_representative_keyword_is_seeded_and_order_free():
    cands = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota", "kappa lambda mu"]
    a = representative_keyword(cands, 0, "doc-1")
    assert a == representative_keyword(list(reversed(cands)), 0, "doc-1")
    picks = {representative_keyword(cands, s, "doc-1") for s in range(20)}
    assert len(picks) > 1
    assert representative_keyword([], 0, "doc-1") is None


@pytest.mark.parametrize("query, keyword", [
    ("How do I write a naïve résumé template?", "naïve résumé template"),
    ("Wann kommt die Müllabfuhr nach Köln?", "wann kommt die müllabfuhr nach köln"),
    # the same word decomposed (e + combining acute): NFC makes it one word again
    ("How do I write a nai\u0308ve re\u0301sume\u0301 template?", "naïve résumé template"),
])
def test_accented_words_stay_whole(query, keyword):
    assert KeywordExtractor().keywords(query) == [keyword]


def test_unicode_punctuation_splits_phrases_and_is_stripped():
    ex = KeywordExtractor(min_score=0.0)
    # « » — ¿ are punctuation in any script: phrase boundaries, never part of a keyword
    got = ex.keywords("¿Qué «naïve résumé format» — données brutes?")
    assert "naïve résumé format" in got and "données brutes" in got
    assert not any(ch in k for k in got for ch in "«»—¿")
    assert strip_punctuation("«ab»") == "ab" and strip_punctuation("c.d.e") == "cde"
    assert "ab" not in KeywordExtractor(min_score=0.0, min_chars=3).keywords("Why «ab»?")
    # CJK has no spaces: a run between punctuation is one word, never one word per character
    phrases = [p for p, _ in ex.scored("什么是机器学习，深度学习？")]
    assert sorted(phrases) == ["什么是机器学习", "深度学习"]
    assert "don't" not in " ".join(ex.keywords("Why don’t tests pass?"))  # ’ is an apostrophe
