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
