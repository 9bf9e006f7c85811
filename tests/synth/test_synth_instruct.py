"""The instruct query source and the generation engines, on tiny models: prompt building,
post-processing, stop rules, cache keys, prefix-KV reuse, llama.cpp, and whole runs (determinism,
resume, accounting)."""
import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longforge.synth.engines import HFEngine, Stop
from longforge.synth.queries import (InstructPredictor, clean_query, instruct_parts,
                                     instruct_request, parse_queries, settings_key)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run thousands of small ops: on shared cores, one thread avoids the waits of
    several at every op."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    """A tiny Qwen2 GGUF with a chat template, and the model loaded from it (dequantized into a
    cache of its own)."""
    spec = importlib.util.spec_from_file_location(
        "gguf_writer", Path(__file__).resolve().parents[1] / "models" / "gguf_writer.py")
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    from longforge import models

    d = tmp_path_factory.mktemp("tiny-chat")
    path = writer.write_tiny_qwen2(d / "tiny-chat.gguf", models.tiny_model("tiny-qwen2", seed=3))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LONGFORGE_CACHE", str(d / "cache"))
        lm = models.load_model(str(path), device="cpu")
    return path, lm


# ---------------------------------------------------------------- prompt and post-processing
def test_instruct_prompt_is_the_chat_template_around_the_segment(tiny_chat):
    path, lm = tiny_chat
    head, tail = instruct_parts(lm.tokenizer, 3)
    assert head.startswith("<|im_start|>system\n") and "three different questions" in head
    assert head.endswith("Passage:\n") and tail == "<|im_end|>\n<|im_start|>assistant\n"
    assert "one question that" in instruct_request(1)
    p = InstructPredictor(str(path), 3, model=lm, max_new_tokens=4)
    seg = "the tar command makes archives"
    whole = lm.tokenizer(head + seg + tail, add_special_tokens=False).input_ids
    assert p.prefix + p.rest("  " + seg + "\n") == whole  # the fixed part is a prefix of the ids


def test_post_processing_keeps_questions_and_drops_code_urls_and_headings():
    answer = "\n".join([
        "Here are three questions:",
        "1. What is the `tar` command used for?",
        "2) `pkgconf --atleast-pkgconfig-version=1.20`",
        "- https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        '**Query 3:** "apache license version 2.0"',
        "4. what is the TAR command used for?",
        "5. " + "word " * 25,
        "6. How do I read a zlib stream?"])
    qs, dropped = parse_queries(answer, 3)
    assert qs == ["What is the tar command used for?", "apache license version 2.0",
                  "How do I read a zlib stream?"]
    assert dropped == {"heading": 1, "code": 1, "url": 1, "duplicate": 1, "long": 1}
    qs, dropped = parse_queries(answer, 1)
    assert qs == ["What is the tar command used for?"] and dropped["extra"] == 2
    assert clean_query("warnings.showwarning") == (None, "code")
    assert clean_query("   ") == (None, None)


def test_stop_rules():
    assert Stop(1).reached("What?\n") and not Stop(1).reached("What?") and Stop(1).reached("\n")
    two = Stop(2, skip_blank=True)
    assert not two.reached("\nq1\n\n") and two.reached("q1\n\nq2\n")
    from longforge.synth.queries import _query_count

    count = Stop(2, skip_blank=True, count=_query_count(2))
    assert not count.reached("1. What is zlib?\n2. `zlib.compress()`\n")  # code does not count
    assert count.reached("1. What is zlib?\n2. `x`\n3. How is zlib used?\n")
    assert count.reached("`a`\n`b`\n`c`\n`d`\n")  # 2k lines: a model writing code stops


def test_cache_key_changes_with_prompt_decoding_engine_and_k(tiny_chat, monkeypatch):
    import longforge.synth.queries as Q

    path, lm = tiny_chat
    base = InstructPredictor(str(path), 3, model=lm).settings
    assert base["engine"] == "hf" and base["queries_per_segment"] == 3
    keys = {settings_key(base)}
    keys.add(settings_key(InstructPredictor(str(path), 2, model=lm).settings))
    keys.add(settings_key(InstructPredictor(str(path), 3, model=lm, max_new_tokens=16).settings))
    keys.add(settings_key({**base, "engine": "llamacpp"}))
    monkeypatch.setattr(Q, "INSTRUCT_PROMPT_VERSION", "instruct-v0")
    monkeypatch.setattr(Q.InstructPredictor, "prompt_version", "instruct-v0")
    keys.add(settings_key(InstructPredictor(str(path), 3, model=lm).settings))
    monkeypatch.setattr(Q, "INSTRUCT_REQUEST", Q.INSTRUCT_REQUEST.replace("web", "internet"))
    keys.add(settings_key(InstructPredictor(str(path), 3, model=lm).settings))  # prompt_sha
    assert len(keys) == 6
    # the few-shot predictor keeps the key older versions wrote (hf: no engine entry)
    from longforge.synth.queries import CausalLMPredictor

    few = CausalLMPredictor(str(path), model=lm).settings
    assert few == {"kind": "causal", "model": str(path), "prompt": "fewshot-v1",
                   "max_new_tokens": 32, "segment_tokens": 256, "decoding": "greedy"}


def test_precision_other_than_fp32_keys_the_cache_and_fp32_keeps_the_old_key(tiny_chat, tmp_path,
                                                                           monkeypatch):
    import torch

    from longforge.synth.config import SynthConfig
    from longforge.synth.queries import CausalLMPredictor

    path, lm = tiny_chat
    monkeypatch.setenv("LONGFORGE_CACHE", str(path.parent / "cache"))   # the fixture's
    fp32 = CausalLMPredictor(str(path), model=lm).settings
    assert "dtype" not in fp32
    bf16 = CausalLMPredictor(str(path), dtype="bf16", device="cpu").settings
    assert bf16 == {**fp32, "dtype": "bfloat16"}
    assert next(CausalLMPredictor(str(path), dtype="bf16").engine.model.parameters()).dtype == torch.bfloat16
    inst = InstructPredictor(str(path), 3, dtype="bf16", max_new_tokens=4)
    assert inst.settings["dtype"] == "bfloat16"
    assert len(inst.predict(["the tar command makes archives"])) == 1   # it generates in bf16
    with pytest.raises(ValueError, match="dtype 'bf16' asked for, but the predictor given is loaded in torch.float32"):
        CausalLMPredictor(str(path), model=lm, dtype="bf16")   # never ignored silently
    assert CausalLMPredictor(str(path), model=lm, dtype="fp32").settings == fp32
    with pytest.raises(ValueError, match="dtype applies to the hf engine"):
        CausalLMPredictor(str(path), engine="llamacpp", dtype="bf16")
    # the option: checked before any work; auto keeps the fingerprint older versions wrote
    kw = dict(inputs=["x.jsonl"], output=tmp_path / "o", query_source="instruct")
    auto = SynthConfig(**kw)
    assert "dtype" not in auto.fingerprinted()
    assert SynthConfig(**kw, dtype="bf16").fingerprint() != auto.fingerprint()
    with pytest.raises(ValueError, match="--dtype must be one of auto, fp32, bf16, fp16, not 'int4'"):
        SynthConfig(**kw, dtype="int4")
    with pytest.raises(ValueError, match="--dtype applies to --engine hf"):
        SynthConfig(**kw, dtype="bf16", engine="llamacpp")


# ---------------------------------------------------------------- engines
@pytest.mark.parametrize("spec", ["tiny-qwen2", "tiny-gemma3"])
def test_prefix_kv_reuse_gives_the_queries_of_plain_generation(spec, tiny_chat):
    from types import SimpleNamespace

    from longforge.models import tiny_model

    tok = tiny_chat[1].tokenizer   # 512 tokens: the tiny models' vocabulary
    lm = SimpleNamespace(model=tiny_model(spec, seed=1))
    prefix = tok("A fixed prefix shared by every prompt: passage follows.").input_ids
    texts = ["short one", "a much longer segment of text about kernels, licences and parsers "
             "that goes on for a while", "mid length text here", "x"]
    rests = [tok(t, add_special_tokens=False).input_ids for t in texts]
    plain = HFEngine(lm.model, tok, batch_size=1, reuse_prefix=False, sort_by_length=False)
    want = plain.generate(prefix, rests, 10, Stop(1))
    for batch in (1, 3, 4):
        fast = HFEngine(lm.model, tok, batch_size=batch)
        assert fast.generate(prefix, rests, 10, Stop(1)) == want, batch
        # the prefix is prefilled once, then only each prompt's own tokens
        assert fast.stats["prefill_tokens"] == len(prefix) + sum(map(len, rests))
    assert plain.stats["prefill_tokens"] == 4 * len(prefix) + sum(map(len, rests))
    if spec == "tiny-gemma3":  # window 32: rows of other lengths are not padded together
        assert HFEngine(lm.model, tok, batch_size=4)._batches([0, 1, 2, 3], [3, 20, 20, 9], 20, 10) \
            == [[0], [1, 2], [3]]


def test_llamacpp_engine_is_deterministic_and_order_free(tiny_chat):
    from longforge.synth.engines import LlamaCppEngine

    path, lm = tiny_chat
    tok = lm.tokenizer
    eng = LlamaCppEngine(path, n_ctx=256, threads=1)
    prefix = tok("a fixed prefix for every prompt", add_special_tokens=False).input_ids
    rests = [tok(t, add_special_tokens=False).input_ids for t in ("alpha beta", "gamma", "delta x")]
    a = eng.generate(prefix, rests, 8, Stop(1))
    assert len(a) == 3 and all(isinstance(t, str) for t in a)
    assert eng.generate(prefix, rests[::-1], 8, Stop(1))[::-1] == a
    again = LlamaCppEngine(path, n_ctx=256, threads=1)
    assert [again.generate(prefix, [r], 8, Stop(1))[0] for r in rests] == a
    assert eng.stats["prompts"] == 6 and 0 < eng.stats["decode_tokens"] <= 6 * 8
    with pytest.raises(ValueError, match="do not fit"):
        eng.generate(prefix, [rests[0] * 200], 8, Stop(1))


# ---------------------------------------------------------------- whole runs
def _corpus(path: Path) -> Path:
    topics = ["kernel scheduler", "licence terms", "json parser"]
    lines = [json.dumps({"id": f"t{t}/{i}", "source": f"s{t}",
                         "text": " ".join(f"{topic} part{j} note{i}" for j in range(12))})
             for t, topic in enumerate(topics) for i in range(3)]
    lines.append(json.dumps({"id": "empty", "text": ""}))  # skipped, with its reason
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(tmp_path, out, path, **kw):
    from longforge.synth.config import SynthConfig

    base = dict(inputs=[str(_corpus(tmp_path / "c.jsonl"))], output=tmp_path / out,
                method="quest", query_source="instruct", predictor=str(path), context_length=256,
                seed=0, segment_tokens=48, max_segments=2, max_new_tokens=6,
                query_cache=tmp_path / "qcache", no_keyword="standard", engine_threads=1)
    return SynthConfig(**{**base, **kw})


@pytest.mark.parametrize("engine", ["hf", "llamacpp"])
def test_instruct_runs_are_deterministic_resumable_and_accounted(tmp_path, tiny_chat, engine):
    from longforge.synth.pipeline import run

    path, lm = tiny_chat
    m = run(_cfg(tmp_path, "a", path, engine=engine), model=lm)
    assert (m["read"], m["skipped"]) == (9, 1)  # the empty record: skipped, with its reason
    assert m["used"] + sum(m["dropped_by_reason"].values()) == m["read"]
    assert m["parameters"]["queries_per_segment"] == 3 and m["parameters"]["engine"] == engine
    t = json.loads((tmp_path / "a" / "timings.json").read_text())["query_cache"]
    assert t == {"queries_from_cache": 0, "queries_generated": 18}  # 9 documents x 2 segments
    # the documents' queries are the post-processed cached answers
    cached = {}
    for f in (tmp_path / "qcache").glob("*/segments-*.jsonl"):
        cached.update({(r["hash"], r["seg"]): r["query"] for r in map(json.loads, f.open())})
    rows = pq.read_table(tmp_path / "a" / "work" / "docs-00000.parquet").to_pylist()
    for r in rows:
        assert r["queries"] == [q for i in range(2) for q in parse_queries(cached[r["hash"], i], 3)[0]]
    assert m["counts"].get("answers_without_query", 0) == sum(
        not parse_queries(a, 3)[0] for a in cached.values())
    settings = json.loads(next((tmp_path / "qcache").glob("*/settings.json")).read_text())
    assert settings["kind"] == "instruct" and settings["engine"] == engine
    # warm cache: nothing generated, the same bytes
    run(_cfg(tmp_path, "b", path, engine=engine), model=lm)
    t = json.loads((tmp_path / "b" / "timings.json").read_text())["query_cache"]
    assert t == {"queries_from_cache": 18, "queries_generated": 0}
    # cold cache elsewhere: generated again, the same bytes (same seed and engine)
    run(_cfg(tmp_path, "c", path, engine=engine, query_cache=tmp_path / "cold"), model=lm)
    for f in ("manifest.json", "sequences-00000.jsonl.gz", "index-00000.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() \
            == (tmp_path / "c" / f).read_bytes(), f


def test_instruct_keywords_of_every_query_are_candidates(tmp_path, monkeypatch):
    """k queries per segment, each one's keywords in the document's candidate set."""
    from longforge.synth.config import SynthConfig, cached_tokenizer
    from longforge.synth.pipeline import run

    class Listing:
        tokenizer = cached_tokenizer("gemma-3-270m")
        settings = {"kind": "fake-instruct"}

        def predict(self, segments):
            return [f"1. What is the {s.split()[0]} {s.split()[1]} about?\n2. `{s.split()[0]}()`\n"
                    "3. How does the license agreement work?" for s in segments]

    monkeypatch.setattr(SynthConfig, "make_predictor", lambda self, model=None: Listing())
    m = run(_cfg(tmp_path, "k", "qwen", max_segments=1))
    rows = pq.read_table(tmp_path / "k" / "work" / "docs-00000.parquet").to_pylist()
    kernel = next(r for r in rows if r["id"] == "t0/0")
    assert kernel["queries"] == ["What is the kernel scheduler about?",
                                 "How does the license agreement work?"]
    assert kernel["keywords"] == ["kernel scheduler", "license agreement work"]
    assert m["counts"]["query_lines_dropped_code"] == 9


def test_instruct_options_are_checked_before_any_work(tmp_path):
    from longforge.synth.config import SynthConfig

    base = dict(inputs=["c.jsonl"], output=tmp_path / "o")
    assert SynthConfig(**base, query_source="instruct").predictor == "qwen2.5-coder-0.5b-instruct"
    assert SynthConfig(**base, query_source="instruct").queries_per_segment == 3
    assert SynthConfig(**base).query_source == "instruct"  # measured best: docs/synth.md
    assert SynthConfig(**base, query_source="causal").predictor == "gemma-3-270m"
    assert SynthConfig(**base, query_source="causal").queries_per_segment == 1
    for kw, msg in ((dict(query_source="causal", queries_per_segment=3),
                     "--queries-per-segment applies to"),
                    (dict(engine="vllm"), "--engine must be one of"),
                    (dict(engine="llamacpp", predictor="some/hf-folder"), "needs a GGUF predictor"),
                    (dict(engine="llamacpp", query_source="document"), "causal and instruct"),
                    (dict(query_source="instruct", queries_per_segment=0), "--queries-per-segment")):
        with pytest.raises(ValueError, match=msg):
            SynthConfig(**base, **kw)
    # the shipped generic keywords are stopped unless switched off
    assert "latest version" in SynthConfig(**base).extra_stop_keywords()
    assert SynthConfig(**base, stop_generic=False, stop_keywords=["x y"]).extra_stop_keywords() == ["x y"]
    assert "engine_threads" not in SynthConfig(**base).fingerprinted()


@pytest.mark.real_model
def test_qwen_asks_a_natural_question_about_the_apache_license(qwen):
    from longforge.synth.keywords import GENERIC_KEYWORDS, KeywordExtractor

    p = InstructPredictor(model=qwen, device="cpu", max_new_tokens=32)
    passage = ("Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use "
               "this file except in compliance with the License. You may obtain a copy of the "
               "License at http://www.apache.org/licenses/LICENSE-2.0. Unless required by "
               "applicable law or agreed to in writing, software distributed under the License "
               "is distributed on an \"AS IS\" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY "
               "KIND, either express or implied.")
    answer = p.predict([passage])
    qs, _ = parse_queries(answer[0], 3)
    assert qs and all(len(q.split()) >= 3 and "`" not in q and "http" not in q for q in qs), answer
    kws = KeywordExtractor(extra_stop_keywords=GENERIC_KEYWORDS).document_keywords(qs)
    assert any("apache" in k or "license" in k for k in kws), (qs, kws)
    assert p.predict([passage]) == answer  # greedy: reproducible
