import json

import pytest

from longforge.synth.cache import QueryCache
from longforge.synth.queries import build_prompt, first_line, segment_text


def test_segments_are_exact_substrings_and_capped(gemma_tokenizer):
    text = "alpha beta gamma delta. " * 200
    segs = segment_text(text, gemma_tokenizer, 64, None)
    assert len(segs) > 3 and all(s in text for s in segs)
    assert all(len(gemma_tokenizer(s, add_special_tokens=False)["input_ids"]) <= 66 for s in segs)
    assert segment_text(text, gemma_tokenizer, 64, 2) == segs[:2]


def test_prompt_and_answer_parsing():
    p = build_prompt("  Some passage.  ")
    assert p.endswith("Passage: Some passage.\nQuestion:") and p.count("Passage:") == 4
    assert first_line(" What is it?\nPassage: more") == "What is it?"


def test_cache_survives_a_torn_line_and_is_keyed_by_settings(tmp_path):
    c = QueryCache(tmp_path, {"model": "m", "k": 1})
    c.put_many({("h1", 0): "q1", ("h2", 0): "q2", ("h2", 1): "q3"})
    c.close()
    with open(c.path, "a") as fh:
        fh.write('{"hash": "h3", "seg": 0, "quer')  # killed mid-write
    again = QueryCache(tmp_path, {"model": "m", "k": 1}, shard=1)
    assert [again.get("h2", i) for i in range(3)] == ["q2", "q3", None]
    assert again.get("h3", 0) is None and len(again) == 3
    assert QueryCache(tmp_path, {"model": "m", "k": 2}).get("h1", 0) is None
    settings = json.loads((c.dir / "settings.json").read_text())
    assert settings == {"model": "m", "k": 1}
    assert not list(c.dir.glob(".*tmp*"))  # written to a temporary name, then renamed


@pytest.mark.real_model
def test_gemma_writes_a_question_for_a_passage():
    from longforge.synth.queries import CausalLMPredictor

    p = CausalLMPredictor(device="cpu", batch_size=2, max_new_tokens=24)
    qs = p.predict(["The tar command creates and extracts archive files. Use -x to extract "
                    "and -c to create an archive.",
                    "Photosynthesis converts light energy into chemical energy in plants."])
    assert len(qs) == 2 and all(q and "\n" not in q for q in qs)
    assert qs == p.predict(qs and ["The tar command creates and extracts archive files. Use -x "
                                   "to extract and -c to create an archive.",
                                   "Photosynthesis converts light energy into chemical energy "
                                   "in plants."])  # greedy: reproducible
