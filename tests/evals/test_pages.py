"""eval pages: where each needle's value lies, what Quest's selection holds, the traced run."""
import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from longforge.cli import app
from longforge.evals import niah, pages
from longforge.evals.grid import score_for, stop_for
from longforge.evals.runner import decode, parse_methods, prefill, run_grid
from longforge.models import tiny_model
from longforge.sparse import Dense, Quest, sparse_attention


@pytest.fixture(scope="module")
def tok(gemma_tokenizer):
    return gemma_tokenizer


@pytest.fixture(scope="module")
def model(tok):
    """A GQA model whose every layer is global, as Qwen's (two KV heads)."""
    return tiny_model("tiny-qwen2", vocab_size=len(tok))


@pytest.mark.parametrize("variant", ["single", "multikey", "multivalue"])
def test_the_layout_says_where_each_needles_value_lies(tok, variant):
    ids, expected, where = niah.layout(tok, 900, 0.3, seed=5, variant=variant, needles=3)
    assert (ids, expected) == niah.build(tok, 900, 0.3, seed=5, variant=variant, needles=3)
    assert len(where) == (1 if variant == "single" else 3)
    assert [n.start for n in where] == sorted(n.start for n in where)
    for n in where:
        assert tok.decode(ids[n.value_start:n.value_end]).strip() == n.value
        assert n.start < n.value_start < n.value_end < n.end
        assert tok.decode(ids[n.start:n.end]).strip().startswith("One of the special magic")
    targets = [n.value for n in where if n.target]
    assert sorted(targets) == sorted(expected if variant == "multivalue" else [expected])


def test_a_page_set_holds_a_value_only_with_every_page_of_it():
    trace, store = pages.PageTrace(token_budget=32, page_size=4), type("S", (), {"page_size": 4})
    group = torch.tensor([[1, 2], [3, 5]])  # [H_kv, K]
    assert trace._holds(group, 4, 8, store).tolist() == [1.0, 0.0]  # page 1
    assert trace._holds(group, 6, 10, store).tolist() == [1.0, 0.0]  # pages 1-2
    assert trace._holds(group, 10, 14, store).tolist() == [0.0, 0.0]  # pages 2-3: neither
    heads = torch.tensor([[[1, 2], [1, 3]], [[3, 5], [0, 3]]])  # [H_kv, G, K]
    assert trace._holds(heads, 4, 8, store).tolist() == [1.0, 0.0]
    assert trace._holds(heads, 12, 16, store).tolist() == [0.5, 1.0]


def _trace(model, tok, policy, tail=8, max_new=3):
    """The same decode under ``policy`` and under its trace."""
    ids, _, where = niah.layout(tok, 400, 0.3, seed=1, variant="multikey", needles=3)
    traced = pages.trace_policy(policy, [(n.value_start, n.value_end) for n in where])
    with sparse_attention(model, Dense()):
        base = prefill(model, ids[:-tail], len(ids) + max_new, False, 8)
        plain = decode(model, copy.deepcopy(base), policy, ids[-tail:], max_new)
        out = decode(model, base, traced, ids[-tail:], max_new)
    return plain, out, traced, where


def test_tracing_does_not_change_the_decode_and_records_every_layer(tok, model):
    n_layers = model.config.num_hidden_layers
    for policy in (Quest(token_budget=64, page_size=8, dense_layers=1), Dense(page_size=8)):
        plain, out, traced, where = _trace(model, tok, policy)
        assert out == plain
        steps = traced.steps(n_layers)
        assert len(steps) == 8 - 1 + len(out)  # the tail's tokens, then each answer token
        for step in steps:
            assert [li for li, _, _ in step] == list(range(n_layers))
            for li, kept, mass in step:
                assert len(mass) == 2 and all(len(g) == len(where) for g in mass)  # values
                assert all(0 <= x <= 1 for g in mass for x in g)
                if isinstance(policy, Dense) or li == 0:
                    assert kept is None  # the dense layers read everything
                else:
                    assert all(x in (0.0, 1.0) for g in kept for x in g)


def test_one_page_keeps_no_needle_and_a_budget_over_the_context_keeps_all(tok, model):
    n_layers = model.config.num_hidden_layers
    _, _, small, _ = _trace(model, tok, Quest(token_budget=8, page_size=8, dense_layers=1))
    _, _, large, _ = _trace(model, tok, Quest(token_budget=4096, page_size=8, dense_layers=1))
    for trace, want in ((small, 0.0), (large, 1.0)):
        kept = [x for step in trace.steps(n_layers) for _, k, _ in step if k is not None
                for g in k for x in g]
        assert kept and set(kept) == {want}


def test_pages_runs_the_grids_samples_resumes_and_reports(tok, model, tmp_path, monkeypatch):
    methods = parse_methods("dense,quest@64", "")
    args = dict(tail=8, max_new=3, page_size=8, dense_layers=1, seed=0)
    build = lambda t, L, d, s: niah.build(t, L, d, s, variant="multikey", needles=3)  # noqa: E731
    grid = run_grid("niah-multikey", model, tok, build, niah.score, [300], [0.2, 0.9], 1,
                    methods, tmp_path / "grid", **args)
    run = lambda: pages.run(model, tok, "niah-multikey", "multikey", 3, niah.SAMPLE, [300],  # noqa: E731
                            [0.2, 0.9], 1, methods, tmp_path / "p", stop=stop_for(tok),
                            score=score_for("niah-multikey"), **args)
    rows = run()
    assert len(rows) == 4
    key = lambda r: (r["method"], r["depth"])  # noqa: E731
    assert {key(r): r["output"] for r in rows} == {key(r): r["output"] for r in grid.rows}
    assert {len(g) for r in rows for s in r["steps"] for _, _, ms in s["layers"]
            for g in ms} == {6}  # three values, then three keys
    for r in rows:  # a random model's answer may hold no digit
        lp = r["first_digit_logprobs"]
        assert lp is None or (len(lp) == 3 and all(x <= 0 for x in lp))
    monkeypatch.setattr(pages, "decode", lambda *a, **k: pytest.fail("recomputed"))
    assert len(run()) == 4
    text = pages.write_report(tmp_path / "p")
    assert text.count("| quest@64 |") == 2 and text.count("| dense |") == 2
    assert text.count("| first digit |") == 4
    summary = json.loads((tmp_path / "p" / "pages.json").read_text())
    assert {s["method"] for s in summary} == {"dense", "quest"}
    for s in summary:
        assert set(pages.PHASES) <= set(s) and len(s["answer"]["value"]["mass"]) == 3
        assert (s["question"]["key"]["kept"] == [None] * 3) == (s["method"] == "dense")


def test_phases_and_the_attention_weighted_share_kept():
    steps = [{"emits": None}, {"emits": " The"}, {"emits": " 1"}, {"emits": "2"},
             {"emits": "."}]
    assert pages.phases({"steps": steps}) == {"question": steps[:1], "first digit": steps[2:3],
                                              "answer": steps[2:4]}
    words = [{"emits": None}, {"emits": " none"}]
    assert pages.phases({"steps": words})["answer"] == words[1:]
    # one dense layer (kept None) and one sparse layer of two groups, two needles
    step = {"layers": [[0, None, [[0.5, 0.0], [0.5, 0.0]]],
                       [1, [[1.0, 0.0], [0.0, 1.0]], [[0.3, 0.2], [0.1, 0.0]]]]}
    got = pages.measure([step], range(2))
    assert got["kept"] == pytest.approx([0.75, 0.0])  # 0.3 of 0.4 held; 0 of 0.2
    assert got["mass"] == pytest.approx([1.4 / 4, 0.2 / 4])
    dense = {"layers": [[li, None, ms] for li, _, ms in step["layers"]]}
    assert pages.measure([dense], range(2))["kept"] == [None, None]
    assert pages.measure([step], [1])["kept"] == [0.0]


def test_the_first_digits_log_probabilities_come_from_the_step_that_chose_it(tok, model):
    ids = tok("The pass key is", add_special_tokens=False).input_ids
    logp: list = []
    with pages._log_probs(model, logp):
        first = model(input_ids=torch.tensor([ids])).logits[0, -1]
        model.model(input_ids=torch.tensor([ids]))  # no LM head: nothing recorded
    assert len(logp) == 1 and torch.allclose(logp[0], torch.log_softmax(first, -1))
    model(input_ids=torch.tensor([ids]))  # the hook is gone
    assert len(logp) == 1
    out = [tok.decode([t]) for t in tok(" is 42.", add_special_tokens=False).input_ids]
    steps = [torch.full((len(tok),), -9.0) for _ in out]
    j = next(i for i, t in enumerate(out) if any(c.isdigit() for c in t))
    steps[j][7], steps[j][8] = -0.1, -2.5
    assert pages.first_digit_logprobs(out, steps, [7, 8, 9]) == [-0.1, -2.5, -9.0]
    words = [tok.decode([t]) for t in tok(" none", add_special_tokens=False).input_ids]
    assert pages.first_digit_logprobs(words, steps[:len(words)], [7]) is None


def test_the_cli_traces_dense_and_quest_only(tmp_path):
    args = ["eval", "pages", "--model", "tiny-qwen2", "--lengths", "300", "--depths", "0.5",
            "--tail", "8", "--max-new", "2", "--page-size", "8", "-q"]
    res = CliRunner().invoke(app, [*args, "--methods", "dense,streaming@64",
                                   "-o", str(tmp_path / "a")])
    assert res.exit_code == 2 and "only dense and Quest" in res.output
    res = CliRunner().invoke(app, [*args, "--methods", "dense,quest@64",
                                   "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "| quest@64 |" in (tmp_path / "b" / "pages.md").read_text()
