"""Prompt builders, scoring, the resumable grid runner, reports and perplexity."""
import json
import math

import pytest
import torch

from longforge.evals import niah, passkey, ppl, runner
from longforge.evals.report import write_report
from longforge.evals.runner import Method, parse_methods, run_grid
from longforge.models import load_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gemma-3-270m")


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("tiny-llama", vocab_size=len(tok))


def test_passkey_prompt(tok):
    ids, key = passkey.build(tok, 1024, 0.5, seed=3)
    text = tok.decode(ids)
    assert 1024 - 30 <= len(ids) <= 1024
    assert text.count(f"The pass key is {key}.") == 1 and text.endswith("The pass key is")
    i = text.index("pass key is")
    assert 0.4 < i / len(text) < 0.6
    assert passkey.score(f" {key}. Good", key) and not passkey.score(" 1" + str(key), key)


def test_niah_prompt_uses_corpus_text_and_depth(tok, tmp_path):
    hay = tmp_path / "hay.txt"
    hay.write_text("Alpha beta gamma. Delta epsilon.\n" * 400)
    ids, value = niah.build(tok, 800, 0.25, seed=1, haystack=niah.Haystack(str(hay), None))
    text = tok.decode(ids)
    assert len(ids) == 800 and "grass is green" not in text
    needle = text.index(f"is: {value}.")
    assert 0.15 < needle / len(text) < 0.35
    assert text[text.index("One of the special") - 2] in ".\n"  # at a sentence or line end
    assert niah.score(f" {value}.", value) and not niah.score(" 123", value)


def test_niah_answers_hold_the_value_as_a_whole_number():
    assert niah.score(" 5477900.", "5477900") and niah.score("is:5477900\n", "5477900")
    # RULER's substring match would count these: the value inside a longer number
    assert not niah.score(" 54779000000", "5477900") and not niah.score(" 15477900", "5477900")
    assert niah.score(" 12, 34 and 56.", ["12", "34", "56"])
    assert not niah.score(" 12, 345 and 56.", ["12", "34", "56"])
    assert niah.recall(" 12, 345 and 56.", ["12", "34", "56"]) == 2 / 3


def test_the_report_scores_stored_answers_again(tmp_path):
    rows = [dict(task="niah", method=m, budget=b, length=100, depth=0.0, trial=0,
                 expected="5477900", output=out, correct=True)
            for m, b, out in (("dense", "-", " 5477900."), ("quest", "64", " 54779000000"))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = write_report(tmp_path)
    acc = {r["method"]: r["value"] for r in s["overall"]}
    assert acc == {"dense": 1.0, "quest": 0.0}
    assert json.loads((tmp_path / "summary.json").read_text())["rescored"] == 1


def test_parse_methods_and_budgets():
    ms = parse_methods("dense,quest,h2o", "1/8,512")
    assert [m.label for m in ms] == ["dense", "quest@1/8", "quest@512", "h2o@1/8", "h2o@512"]
    assert Method("quest", "1/8").tokens(4096) == 512 and Method("dense").tokens(10) is None
    # fractions are rounded to whole pages, at least one: every policy gets the same tokens
    # and Quest's K = budget / P pages hold all of them
    assert Method("quest", "1/8").tokens(2033, 16) == 256  # 254.1 tokens = 15.9 pages
    assert Method("quest", "1/16").tokens(2033, 16) == 128  # 7.9 pages
    assert Method("h2o", "1/4").tokens(200, 8) == 48  # 6.25 pages
    assert Method("quest", "1/64").tokens(100, 16) == 16  # never below one page
    assert Method("quest", "100").tokens(2033, 16) == 100  # tokens given are kept as given
    with pytest.raises(ValueError):
        parse_methods("quest", "half")
    with pytest.raises(ValueError):
        parse_methods("pyramidkv", "1/8")  # not a policy here


def test_grid_runs_resumes_and_reports(tok, model, tmp_path, monkeypatch):
    methods = parse_methods("dense,quest,streaming,h2o", "1/4")
    args = dict(tail=8, max_new=3, page_size=8, dense_layers=1)
    res = run_grid("passkey", model, tok, passkey.build, passkey.score, [200], [0.0, 1.0], 1,
                   methods, tmp_path, **args)
    assert len(res.rows) == 8
    n = len(passkey.build(tok, 200, 0.0, 0)[0])
    assert {r["budget_tokens"] for r in res.rows if r["method"] != "dense"} == {
        8 * round(n / 4 / 8)}
    monkeypatch.setattr(runner, "run_sample", lambda *a, **k: pytest.fail("recomputed"))
    res = run_grid("passkey", model, tok, passkey.build, passkey.score, [200], [0.0, 1.0], 1,
                   methods, tmp_path, **args)
    assert len(res.rows) == 8
    s = write_report(tmp_path)
    assert len(s["by_length"]) == 4
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["page_size"] == 8 and summary["dense_layers"] == 1 and summary["tail"] == 8
    assert (tmp_path / "summary.md").read_text().count("| quest | 1/4 |") == 3
    assert sorted(p.name for p in tmp_path.glob("heatmap_*.png")) == [
        "heatmap_dense.png", "heatmap_h2o.png", "heatmap_quest.png", "heatmap_streaming.png"]
    assert json.loads((tmp_path / "summary.json").read_text())["task"] == "passkey"


def test_a_rerun_with_other_settings_is_refused(tok, model, tmp_path):
    """Resume skips finished cells, so results made with other settings must not be mixed in."""
    methods = parse_methods("quest", "1/4")
    args = dict(tail=8, max_new=2, dense_layers=1)
    run_grid("passkey", model, tok, passkey.build, passkey.score, [120], [0.5], 1, methods,
             tmp_path, page_size=8, **args)
    for change in (dict(page_size=4, settings=None), dict(page_size=8, settings={"model": "x"})):
        with pytest.raises(ValueError, match="other settings.*page_size|other settings.*model"):
            run_grid("passkey", model, tok, passkey.build, passkey.score, [120], [0.5], 1,
                     methods, tmp_path, **args, **change)
    (tmp_path / "settings.json").unlink()  # results whose settings are unknown
    with pytest.raises(ValueError, match="no settings.json"):
        run_grid("passkey", model, tok, passkey.build, passkey.score, [120], [0.5], 1, methods,
                 tmp_path, page_size=8, **args)


def test_a_grid_runs_every_depth_of_a_trial_before_the_next_trial(tok, model, tmp_path):
    """A run stopped part way has then covered the depths evenly."""
    run_grid("passkey", model, tok, passkey.build, passkey.score, [120], [0.0, 1.0], 2,
             parse_methods("dense", "1/4"), tmp_path, page_size=8, tail=8, max_new=2,
             dense_layers=1)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["trial"], r["depth"]) for r in rows] == [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]


def _rows(folder) -> dict:
    return {runner.Results.key(r): r for r in runner.Results.folder(folder).rows}


def test_the_shards_of_a_grid_write_the_rows_of_one_run_into_one_folder(tok, model, tmp_path,
                                                                        monkeypatch):
    grid = ("passkey", model, tok, passkey.build, passkey.score, [120], [0.0, 0.5, 1.0], 2,
            parse_methods("dense,quest", "1/4"))
    args = dict(page_size=8, tail=8, max_new=2, dense_layers=1)
    run_grid(*grid, tmp_path / "one", **args)
    for k in (1, 0):
        run_grid(*grid, tmp_path / "sharded", shard=(k, 2), **args)
    # round robin over the samples in grid order: shard 0 has samples 0, 2, 4 of the six
    part = [json.loads(x) for x in (tmp_path / "sharded" / "results.0-of-2.jsonl").open()]
    assert [(r["trial"], r["depth"]) for r in part][::2] == [(0, 0.0), (0, 1.0), (1, 0.5)]
    assert not (tmp_path / "sharded" / "results.jsonl").exists()
    one, sharded = _rows(tmp_path / "one"), _rows(tmp_path / "sharded")
    assert len(one) == 12 and one == sharded
    # resume reads every shard's file: nothing is decoded again, sharded or not
    monkeypatch.setattr(runner, "run_sample", lambda *a, **k: pytest.fail("recomputed"))
    run_grid(*grid, tmp_path / "sharded", shard=(0, 3), **args)
    run_grid(*grid, tmp_path / "sharded", **args)
    assert write_report(tmp_path / "sharded")["overall"] == write_report(tmp_path / "one")["overall"]
    # a cell written twice (two commands into one folder at once) counts once, its first row
    again = {**part[0], "correct": not part[0]["correct"]}
    (tmp_path / "sharded" / "results.1-of-3.jsonl").write_text(json.dumps(again) + "\n")
    assert _rows(tmp_path / "sharded") == one


def test_dense_token_by_token_ppl_equals_teacher_forcing(tok, model, tmp_path):
    hay = tmp_path / "doc.txt"
    hay.write_text(" ".join(f"word{i % 37} is next." for i in range(300)))
    haystack = niah.Haystack(str(hay), None)
    res = ppl.run(model, tok, [64], 16, parse_methods("dense,quest", "16"), tmp_path,
                  page_size=4, dense_layers=0, haystack=haystack)
    doc = niah.longest_document_ids(tok, haystack)
    ids = torch.tensor([[tok.bos_token_id, *doc[: 64 + 16 - 1]]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    ref = -logp[63:-1].gather(1, ids[0, 64:, None]).mean().item()
    dense = next(r for r in res.rows if r["method"] == "dense")
    quest = next(r for r in res.rows if r["method"] == "quest")
    assert dense["tokens"] == 16 and math.isclose(dense["nll"], ref, rel_tol=1e-4)
    assert quest["nll"] != dense["nll"]


def test_demo_stage_with_a_tiny_model(tok, model, tmp_path):
    from longforge.evals.demo import DEPTHS, sparse_stage
    from longforge.models import LoadedModel

    line = sparse_stage(tmp_path, LoadedModel(model, tok, "tiny-llama"))
    rows = [json.loads(x) for x in (tmp_path / "sparse" / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["depth"]) for r in rows} == {(m, d) for m in ("dense", "quest")
                                                        for d in DEPTHS}
    assert all(r["budget_tokens"] in (None, 16 * round(r["context_tokens"] / 8 / 16))
               for r in rows)
    assert "dense" in line and "Quest" in line and (tmp_path / "sparse" / "summary.md").exists()


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-llama"])
def test_chunked_prefill_equals_one_pass(arch, capsys):
    """Prefill in chunks (the runner's memory bound) = one pass: same cache, same H2O scores,
    same next-token logits; on Gemma 3 the chunks cross its sliding window (32 tokens). Only
    the chunked one shows a progress bar."""
    from longforge.models import cache_kw
    from longforge.sparse.hf import PagedLayer, sparse_attention
    from longforge.sparse.policies import Dense

    m = tiny_model(arch, vocab_size=300)
    ids = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    caches, logits = [], []
    with sparse_attention(m, Dense()):
        for chunk in (1000, 48):
            c = runner.prefill(m, ids[:-1], 200, track_scores=True, page_size=4, chunk=chunk)
            out = m(input_ids=torch.tensor([ids[-1:]]), **cache_kw(m, c), use_cache=True)
            caches.append(c)
            logits.append(out.logits[0, -1])
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    assert capsys.readouterr().err.count("prefill:   0%") == 1  # the 48-token chunks' bar
    paged = [(a, b) for a, b in zip(caches[0].layers, caches[1].layers)
             if isinstance(a, PagedLayer)]
    assert paged
    for a, b in paged:
        assert a.store.length == b.store.length == 150 and a.scores is not None
        torch.testing.assert_close(b.store.keys(), a.store.keys(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- RULER variants, bank, reports
def test_multikey_and_multivalue_needles(tok):
    ids, value = niah.build(tok, 900, 0.3, seed=5, variant="multikey", needles=3)
    text = tok.decode(ids)
    assert len(ids) == 900 and text.count("One of the special magic numbers for") == 3
    keys = [text.split("magic numbers for ", i + 1)[-1].split(" is:")[0] for i in range(3)]
    assert len(set(keys)) == 3  # distractors have other keys
    asked = text.rsplit("magic number for ", 1)[-1].split(" mentioned")[0]
    assert f"for {asked} is: {value}." in text
    ids, values = niah.build(tok, 900, 0.3, seed=5, variant="multivalue", needles=3)
    text = tok.decode(ids)
    assert len(values) == 3 and all(f"is: {v}." in text for v in values)
    assert text.endswith("mentioned in the provided text are")
    assert niah.score(" ".join(values), values) and not niah.score(values[0], values)
    with pytest.raises(ValueError, match="variant"):
        niah.build(tok, 900, 0.3, seed=5, variant="triple")


def test_a_listed_multivalue_answer_is_not_cut_at_its_list_markers(tok):
    """"1. 9035508\n2. 4917937\n" holds two values, not four numbers: the multi-value stop
    rule counts numbers of the values' length only; the report gives the share recalled."""
    from longforge.evals.report import markdown, summarize

    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    two, four = "1. 9035508\n2. 4917937\n", "1. 9035508\n2. 4917937\n3. 1234567\n4. 7654321\n"
    stop = runner.numbers_done(tok, 4, digits=niah.VALUE_DIGITS)
    assert not stop(enc(two)) and stop(enc(four))
    assert runner.numbers_done(tok, 4)(enc(two))  # counting every number stops too early
    values = ["9035508", "4917937", "1234567", "7654321"]
    assert niah.recall(two, values) == 0.5 and niah.recall(four, values) == 1.0
    rows = [dict(task="niah-multivalue", method=m, budget=b, length=100, depth=0.5, trial=t,
                 expected=values, output=out, correct=niah.score(out, values))
            for t in range(2) for m, b, out in (("dense", "-", four), ("quest", "64", two))]
    s = summarize(rows)
    assert [(r["method"], r["value"]) for r in s["recall"]] == [("dense", 1.0), ("quest", 0.5)]
    assert "| quest | 64 | 50% |" in markdown("niah-multivalue", s)


def test_the_prefix_bank_gives_each_sample_what_its_own_prefill_gives(tok):
    """Samples that share the instruction + haystack prefix reuse one prefill: the decoded
    outputs of every policy (H2O's prefill scores too) equal those of a whole prefill."""
    from longforge.sparse import Dense, sparse_attention

    m = tiny_model("tiny-qwen2", vocab_size=len(tok))
    methods = parse_methods("dense,quest,h2o,snapkv,tova", "32")
    with sparse_attention(m, Dense()):
        bank = runner.PrefixBank(m, passkey.needle_free(tok, 400), 8, track_scores=True,
                                 align=64)
        for depth in (0.2, 0.9):
            ids, _ = passkey.build(tok, 380, depth, seed=2)
            _, start = bank.start(ids[:-8], 400)
            assert start >= 64  # the prefix really was reused
            alone = runner.run_sample(m, ids, methods, 8, 3, 8, 0)
            shared = runner.run_sample(m, ids, methods, 8, 3, 8, 0, bank=bank)
            assert shared == alone


def test_a_kept_prefix_bank_is_read_back_instead_of_prefilled(tok, tmp_path, monkeypatch,
                                                              caplog):
    """A resumed grid reads the shared prefill from disk: the same decodes as the bank that was
    prefilled; a damaged file is prefilled again (with a warning), other settings get their own
    file."""
    from longforge.sparse import Dense, sparse_attention

    m = tiny_model("tiny-qwen2", vocab_size=len(tok))
    free, methods = passkey.needle_free(tok, 400), parse_methods("dense,quest,h2o", "32")
    ids, _ = passkey.build(tok, 380, 0.6, seed=3)
    real, calls = runner.prefill, []
    monkeypatch.setattr(runner, "prefill", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    with sparse_attention(m, Dense()):
        made = runner.PrefixBank(m, free, 8, track_scores=True, align=64, directory=tmp_path)
        assert not made.loaded and made.path.exists() and calls == [len(free)]
        read = runner.PrefixBank(m, free, 8, track_scores=True, align=64, directory=tmp_path)
        assert read.loaded and calls == [len(free)]  # no second prefill
        assert runner.run_sample(m, ids, methods, 8, 3, 8, 0, bank=read) == \
            runner.run_sample(m, ids, methods, 8, 3, 8, 0, bank=made)
        other = runner.PrefixBank(m, free, 16, track_scores=True, align=64, directory=tmp_path)
        assert not other.loaded and other.path != made.path
        made.path.write_bytes(made.path.read_bytes()[:1000])
        again = runner.PrefixBank(m, free, 8, track_scores=True, align=64, directory=tmp_path)
    assert not again.loaded and "prefilling again" in caplog.text


def test_a_grid_makes_a_prefix_bank_only_when_a_sample_left_can_reuse_it(tok, tmp_path,
                                                                         monkeypatch):
    """A sample whose needle is at depth 0 shares only the instruction with the haystack; a
    resumed grid with only such samples left prefills each whole, without a bank."""
    m = tiny_model("tiny-qwen2", vocab_size=len(tok))
    made = []
    real = runner.PrefixBank
    monkeypatch.setattr(runner, "PrefixBank",
                        lambda *a, **k: made.append(len(a[1])) or real(*a, **k))
    methods = parse_methods("dense,quest", "64")
    args = dict(tail=8, max_new=2, page_size=8, dense_layers=0, needle_free=passkey.needle_free)
    ids, _ = passkey.build(tok, 1400, 0.0, runner._seed(0, "passkey", 1400, 0.0, 0))
    assert runner.shared_prefix(ids, passkey.needle_free(tok, 1400)) == 0
    run_grid("passkey", m, tok, passkey.build, passkey.score, [1400], [0.0], 1, methods,
             tmp_path / "a", **args)
    assert made == []
    run_grid("passkey", m, tok, passkey.build, passkey.score, [1400], [0.0, 1.0], 1, methods,
             tmp_path / "a", **args)
    assert made == [len(passkey.needle_free(tok, 1400))]


def test_one_policy_at_the_same_tokens_is_decoded_once(tok, model, monkeypatch):
    calls = []
    real = runner.decode
    monkeypatch.setattr(runner, "decode", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    ids, _ = passkey.build(tok, 256, 0.5, seed=1)
    methods = [Method("dense"), Method("quest", "1/4"), Method("quest", "64"),
               Method("tova", "64")]
    from longforge.sparse import Dense, sparse_attention

    with sparse_attention(model, Dense()):
        out = runner.run_sample(model, ids, methods, 8, 2, 16, 0)
    assert Method("quest", "1/4").tokens(len(ids), 16) == 64
    assert len(calls) == 3 and out[Method("quest", "1/4")] == out[Method("quest", "64")]


def test_intervals_and_paired_differences():
    from longforge.evals.report import markdown, paired_difference, summarize, wilson

    lo, hi = wilson(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.84  # 20 of 20: [83.9%, 100%]
    lo, hi = wilson(5, 10)
    assert 0.23 < lo < 0.24 and 0.76 < hi < 0.77
    d = paired_difference([(1, 1)] * 18 + [(0, 1)] * 2)
    assert d["difference"] == -0.1 and d["ci"][0] < -0.1 < 0 < d["ci"][1]
    # two policies that agree on every sample: the interval is the Wilson margin, not [0, 0]
    for n, width in ((11, 0.26), (44, 0.08)):
        d = paired_difference([(1, 1)] * n)
        assert d["difference"] == 0 and d["ci"] == [-(1 - wilson(n, n)[0]), 1 - wilson(n, n)[0]]
        assert abs(d["ci"][1] - width) < 0.01
    with pytest.raises(ValueError):
        paired_difference([(0.5, 1)])
    rows = [dict(task="niah", method=m, budget=b, length=100, depth=0.5, trial=t,
                 correct=ok) for t in range(4)
            for m, b, ok in (("dense", "-", True), ("quest", "1/8", t != 0))]
    s = summarize(rows)
    assert s["vs_dense"] == [dict(method="quest", budget="1/8", length=100,
                                  **paired_difference([(0, 1), (1, 1), (1, 1), (1, 1)]))]
    assert s["by_length"][0]["ci"] == list(wilson(4, 4))
    assert "quest_vs" not in s  # no other policy at Quest's budget

    # Quest against another policy at the same budget: paired on the samples both ran
    rows += [dict(task="niah", method="snapkv", budget="1/8", length=100, depth=0.5, trial=t,
                  correct=t == 3) for t in range(4)]
    rows += [dict(task="niah", method="tova", budget="1/4", length=100, depth=0.5, trial=0,
                  correct=False)]  # no Quest at 1/4: no row
    s = summarize(rows)
    assert s["quest_vs"] == [dict(method="snapkv", budget="1/8", length=100,
                                  **paired_difference([(0, 0), (1, 0), (1, 0), (1, 1)]))]
    text = markdown("niah", s)
    assert "| quest@1/8 - snapkv@1/8 | +50 [" in text


def test_stream_perplexity_gives_every_policy_the_same_context_window(tok, model, tmp_path):
    """text=stream: the haystack's documents in a row; each method prefills the last WINDOW
    context tokens itself (SnapKV chooses there); at a budget above the context every policy
    scores exactly as dense."""
    hay = tmp_path / "docs"
    hay.mkdir()
    for i in range(3):
        (hay / f"{i}.txt").write_text(" ".join(f"word{(i * 7 + j) % 41} is next." for j in range(60)))
    res = ppl.run(model, tok, [300], 12, parse_methods("dense,snapkv,tova,quest", "4096"),
                  tmp_path / "out", page_size=4, dense_layers=0,
                  haystack=niah.Haystack(str(hay), None), text="stream")
    nll = {r["method"]: r["nll"] for r in res.rows}
    assert set(nll) == {"dense", "snapkv", "tova", "quest"}
    assert all(math.isclose(v, nll["dense"], rel_tol=1e-4) for v in nll.values())
    with pytest.raises(ValueError, match="text"):
        ppl.run(model, tok, [300], 12, parse_methods("dense", "1"), tmp_path / "x", text="words")


def test_methods_can_name_their_own_budget():
    got = [m.label for m in parse_methods("dense,quest,tova@1/16,snapkv@1024,tova@1/16", "256,1/8")]
    assert got == ["dense", "quest@256", "quest@1/8", "tova@1/16", "snapkv@1024"]
    with pytest.raises(ValueError, match="budget"):
        parse_methods("quest@lots", "256")


def test_snapkv_context_compresses_the_context_before_the_question(tok, monkeypatch):
    """snapkv chooses with the tail (the question) as its last prefill chunk; snapkv-context
    chooses from the context's last ``window`` tokens, before any tail token is seen, and then
    decodes the tail one token at a time. The other methods decode as they do without it, from
    a prefix bank too."""
    from longforge.sparse import Dense, sparse_attention
    from longforge.sparse.policies import SnapKV

    m = tiny_model("tiny-qwen2", vocab_size=len(tok))
    seen = []
    real = SnapKV.prefill

    def spy(self, layer_idx, layer, query, key, *a, **k):
        seen.append((query.shape[2], key.shape[2]))
        return real(self, layer_idx, layer, query, key, *a, **k)

    monkeypatch.setattr(SnapKV, "prefill", spy)
    ids, _ = passkey.build(tok, 380, 0.5, seed=4)
    tail, n = 8, len(ids)
    with sparse_attention(m, Dense()):
        for name, chunk in (("snapkv", (tail - 1, n - 1)), ("snapkv-context", (64, n - tail))):
            seen.clear()
            runner.run_sample(m, ids, parse_methods(name, "96"), tail, 3, 8, 0)
            assert set(seen) == {chunk}  # every sparse layer chose there, and only there
        base = parse_methods("dense,quest,h2o", "32")
        alone = runner.run_sample(m, ids, base, tail, 3, 8, 0)
        both = runner.run_sample(m, ids, base + parse_methods("snapkv-context", "32"), tail, 3,
                                 8, 0)
        assert {k: both[k] for k in alone} == alone
        bank = runner.PrefixBank(m, passkey.needle_free(tok, 400), 8, track_scores=True,
                                 align=64)
        assert runner.run_sample(m, ids, base + parse_methods("snapkv-context", "32"), tail, 3,
                                 8, 0, bank=bank) == both
        # a budget above the context keeps everything: dense's answer
        wide = runner.run_sample(m, ids, parse_methods("dense,snapkv-context", "4096"), tail, 3,
                                 8, 0)
        assert len(set(map(tuple, wide.values()))) == 1


def test_only_a_policy_that_compresses_at_prefill_has_a_context_form():
    assert [m.label for m in parse_methods("snapkv,snapkv-context", "1/16")] == [
        "snapkv@1/16", "snapkv-context@1/16"]
    assert Method("snapkv-context", "64").policy(400, 8, 0).name == "snapkv"
    for bad in ("quest-context", "tova-context", "nothing-context"):
        with pytest.raises(ValueError):
            parse_methods(bad, "1/16")


def test_the_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Seeded simulation of correlated pairs (two policies that mostly agree, as a sparse policy
    and dense do): Newcombe's interval holds the true difference in about 95% of the draws."""
    import random

    from longforge.evals.report import paired_difference

    rng = random.Random(0)
    # P(both right) .80, (a only) .02, (b only) .10, (neither) .08: p_a - p_b = -.08
    cells = [((1, 1), 0.80), ((1, 0), 0.02), ((0, 1), 0.10), ((0, 0), 0.08)]
    truth, hits, draws = -0.08, 0, 1000
    for _ in range(draws):
        pairs = rng.choices([c for c, _ in cells], [w for _, w in cells], k=44)
        lo, hi = paired_difference(pairs)["ci"]
        hits += lo <= truth <= hi
    assert 0.93 <= hits / draws <= 0.99
