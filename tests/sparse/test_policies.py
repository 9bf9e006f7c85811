"""Kept sets of StreamingLLM and H2O, and the prefill attention scores H2O starts from."""
import pytest
import torch

from longforge.models import cache_kw, tiny_model
from longforge.sparse import hf, policies
from longforge.sparse.hf import PagedLayer, _accumulate_scores
from longforge.sparse.policies import H2O, StreamingLLM, make_policy


def test_streaming_keeps_sinks_of_real_tokens_and_recent_window():
    p = StreamingLLM(token_budget=8, sinks=2)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    kept = p.kept(20, mask)
    assert kept[0].nonzero().flatten().tolist() == [0, 1, *range(14, 20)]
    assert kept[1].nonzero().flatten().tolist() == [3, 4, *range(14, 20)]
    assert kept.sum(-1).tolist() == [8, 8]


def _layer(scores, length):
    layer = PagedLayer(max_len=32, page_size=4, track_scores=True)
    layer.update(torch.zeros(1, 1, length, 2), torch.zeros(1, 1, length, 2))
    layer.scores[0, 0, :length] = torch.tensor(scores, dtype=torch.float)
    return layer


def test_h2o_keeps_recent_plus_heavy_hitters_and_evictions_are_permanent():
    p = H2O(token_budget=4)  # 2 recent + 2 heavy
    layer = _layer([5, 1, 9, 0, 7, 3, 2, 4], 8)
    mask = torch.ones(1, 8, dtype=torch.bool)
    kept = p.kept(layer, mask)[0, 0]
    assert kept.nonzero().flatten().tolist() == [2, 4, 6, 7]  # heavy 9 and 7, recent 6, 7
    # one more token; token 0 (score 5) was evicted and must not come back even when heaviest
    layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    layer.scores[0, 0, 0] = 100.0
    kept = p.kept(layer, torch.ones(1, 9, dtype=torch.bool))[0, 0]
    assert 0 not in kept.nonzero().flatten().tolist()
    assert kept.nonzero().flatten().tolist() == [2, 4, 7, 8]  # 6 (score 2) left the window
    assert kept.sum() == 4


def test_h2o_without_scores_fails_clearly():
    layer = PagedLayer(max_len=8)
    layer.update(torch.zeros(1, 1, 8, 2), torch.zeros(1, 1, 8, 2))
    try:
        H2O(token_budget=2).kept(layer, torch.ones(1, 8, dtype=torch.bool))
    except RuntimeError as e:
        assert "track_scores" in str(e)
    else:
        raise AssertionError("no error")


def test_prefill_scores_equal_brute_force_attention_sums():
    torch.manual_seed(0)
    b, hq, hkv, t, d = 2, 4, 2, 37, 8
    q, k = torch.randn(b, hq, t, d), torch.randn(b, hkv, t, d)
    layer = PagedLayer(max_len=t, page_size=4, track_scores=True)
    layer.update(k, torch.zeros_like(k))
    mask = torch.ones(b, 1, t, t, dtype=torch.bool).tril()
    mask[1, :, :, :5] = False  # padding keys of row 1
    _accumulate_scores(layer, q, k, mask, 0.5, None, chunk=8)
    kk = k.repeat_interleave(hq // hkv, dim=1)
    s = (q @ kk.transpose(-1, -2) * 0.5).masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # fully masked rows add nothing
    ref = p.sum(2).view(b, hkv, hq // hkv, t).sum(2)
    assert torch.allclose(layer.scores[..., :t], ref, atol=1e-5)
    # without a mask the causal pattern is built
    layer2 = PagedLayer(max_len=t, page_size=4, track_scores=True)
    layer2.update(k, torch.zeros_like(k))
    _accumulate_scores(layer2, q, k, None, 0.5, None, chunk=5)
    s = (q @ kk.transpose(-1, -2) * 0.5).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(),
                                                     float("-inf"))
    ref = torch.softmax(s, -1).sum(2).view(b, hkv, hq // hkv, t).sum(2)
    assert torch.allclose(layer2.scores[..., :t], ref, atol=1e-5)


def test_policies_share_one_prefill_and_differ_only_in_decode():
    """The eval harness' shared prefill: a copied cache decodes as a fresh one would."""
    import copy

    m = tiny_model("tiny-llama")
    ids = torch.randint(0, 512, (1, 60), generator=torch.Generator().manual_seed(1))
    with policies.dense(m), torch.no_grad():
        base = hf.SparseCache(m, max_len=64, page_size=4, track_scores=True)
        m.base_model(input_ids=ids[:, :-1], **cache_kw(m, base))
        outs = {}
        for name in ["dense", "quest", "streaming", "h2o"]:
            c = copy.deepcopy(base)
            c.policy = make_policy(name, 16, page_size=4, dense_layers=1)
            outs[name] = m(input_ids=ids[:, -1:], **cache_kw(m, c)).logits[0, -1]
        ref = m(input_ids=ids).logits[0, -1]
    assert torch.allclose(outs["dense"], ref, atol=1e-4)
    for name in ["quest", "streaming", "h2o"]:
        assert not torch.allclose(outs[name], ref, atol=1e-4), name


def test_dense_layers_rules_on_hybrid_and_all_global_models():
    from longforge.sparse.policies import dense_layer_ids, normalize_dense_layers

    gemma3 = ["sliding_attention"] * 5 + ["full_attention"] + (
        ["sliding_attention"] * 5 + ["full_attention"]) * 2
    qwen2 = ["full_attention"] * 24
    assert dense_layer_ids("auto", qwen2) == {0, 1}  # the paper's first two layers
    assert dense_layer_ids("auto", gemma3) == {0, 1, 5}  # + the first global layer
    assert dense_layer_ids(2, gemma3) == {0, 1}  # by index: no global layer of Gemma 3 dense
    assert dense_layer_ids("full:2", gemma3) == {5, 11}
    assert dense_layer_ids("full:2", qwen2) == dense_layer_ids(2, qwen2) == {0, 1}
    assert dense_layer_ids(0, qwen2) == frozenset() and dense_layer_ids("full:0", gemma3) == set()
    assert normalize_dense_layers("3") == 3 and normalize_dense_layers("full:1") == "full:1"
    for bad in ("two", "full:", "full:-1", -1, True, "1.5"):
        with pytest.raises(ValueError, match="dense_layers"):
            normalize_dense_layers(bad)


def test_auto_keeps_tiny_gemma3s_first_global_layer_dense(monkeypatch):
    """On tiny-gemma3 (global layers 2 and 5) 'auto' decodes layer 2 densely, layer 5 sparsely."""
    from longforge.sparse.policies import Quest

    seen, sparse = [], Quest.sparse_decode
    monkeypatch.setattr(Quest, "sparse_decode",
                        lambda self, layer, *a: seen.append(layer) or sparse(self, layer, *a))
    m = tiny_model("tiny-gemma3")
    cache = hf.SparseCache(m, Quest(16, page_size=4), max_len=48)
    ids = torch.randint(0, 512, (1, 40))
    with hf.sparse_attention(m, cache.policy):
        m(input_ids=ids, **cache_kw(m, cache), use_cache=True)
        m(input_ids=ids[:, -1:], **cache_kw(m, cache), use_cache=True)
    assert seen == [cache.layers[5]]


# ---------------------------------------------------------------- TOVA and SnapKV
def _filled(length, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = PagedLayer(max_len=length + 8, page_size=4)
    k, v = torch.randn(1, hkv, length, d, generator=g), torch.randn(1, hkv, length, d, generator=g)
    layer.update(k, v)
    return layer, k, v


def test_tova_keeps_the_budget_by_mean_attention_and_evictions_are_permanent():
    from longforge.sparse.policies import TOVA

    layer, k, v = _filled(20)
    q = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1))
    p = TOVA(token_budget=6, dense_layers=0)
    out = p.decode(0, layer, q, None, 0.5, None)
    probs = torch.softmax(q.view(1, 2, 2, 8) @ k.transpose(-1, -2) * 0.5, -1)  # [1, 2, 2, 20]
    want = (probs @ v).reshape(1, 4, 8)
    assert torch.allclose(out, want, atol=1e-5)  # this step attended every token, then evicted
    kept = layer.state["tova_kept"][0]
    assert kept.sum() == 6
    assert set(kept.nonzero().flatten().tolist()) == set(probs.mean((1, 2))[0].topk(6).indices.tolist())
    evicted = (~kept).nonzero().flatten().tolist()
    layer.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))  # a new token
    p.decode(0, layer, q, None, 0.5, None)
    kept2 = layer.state["tova_kept"][0]
    assert kept2.sum() == 6 and not kept2[evicted].any()  # evicted tokens never return


def test_tova_within_budget_is_dense():
    from longforge.sparse.policies import TOVA

    layer, k, v = _filled(10)
    q = torch.randn(1, 4, 8)
    got = TOVA(token_budget=16, dense_layers=0).decode(0, layer, q, None, 0.5, None)
    want = torch.softmax(q.view(1, 2, 2, 8) @ k.transpose(-1, -2) * 0.5, -1) @ v
    assert torch.allclose(got, want.reshape(1, 4, 8), atol=1e-5)


def test_snapkv_keeps_the_window_and_the_pooled_top_of_earlier_tokens():
    from longforge.sparse.policies import SnapKV

    g = torch.Generator().manual_seed(2)
    L, w, budget = 40, 8, 20
    q, k = torch.randn(1, 4, L, 8, generator=g), torch.randn(1, 2, L, 8, generator=g)
    layer = PagedLayer(max_len=L + 4, page_size=4)
    layer.update(k, torch.randn(1, 2, L, 8, generator=g))
    p = SnapKV(token_budget=budget, window=w, kernel=5, dense_layers=0)
    p.prefill(0, layer, q, k, None, 0.5, None)
    kept = layer.state["snapkv_kept"][0]  # [H_kv, L]
    assert kept.sum(-1).tolist() == [budget, budget] and kept[:, L - w:].all()
    # by hand: window queries' attention (causal), summed over the window and the group's heads
    s = (q[0, :, L - w:] @ k[0].repeat_interleave(2, 0).transpose(-1, -2)) * 0.5  # [4, w, L]
    causal = torch.arange(L) <= torch.arange(L - w, L)[:, None]
    votes = torch.softmax(s.masked_fill(~causal, float("-inf")), -1).view(2, 2, w, L).sum((1, 2))
    pooled = torch.nn.functional.avg_pool1d(votes[None, :, : L - w], 5, 1, 2,
                                            count_include_pad=False)[0]
    for h in range(2):
        assert set(kept[h, : L - w].nonzero().flatten().tolist()) == set(
            pooled[h].topk(budget - w).indices.tolist())
    layer.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))  # generated after prefill: kept
    qd = torch.randn(1, 4, 8)
    out = p.decode(0, layer, qd, None, 0.5, None)
    keys, vals = layer.store.keys()[0], layer.store.values()[0]
    for h in range(4):
        idx = [*kept[h // 2].nonzero().flatten().tolist(), L]
        want = torch.softmax(keys[h // 2, idx] @ qd[0, h] * 0.5, -1) @ vals[h // 2, idx]
        assert torch.allclose(out[0, h], want, atol=1e-5)


def test_snapkv_without_a_prefill_says_when_it_compresses():
    from longforge.sparse.policies import SnapKV

    layer, _, _ = _filled(20)
    with pytest.raises(RuntimeError, match="end of prefill"):
        SnapKV(token_budget=8, dense_layers=0).decode(0, layer, torch.randn(1, 4, 8), None, 1.0, None)


@pytest.mark.parametrize("name", ["tova", "snapkv", "quest", "streaming", "h2o"])
def test_every_policy_is_a_context_manager_that_generates(name):
    """Press style: ``with policy(model): model.generate(...)``; over budget it changes the
    output of some step, within budget it equals dense."""
    m = tiny_model("tiny-qwen2")
    ids = torch.randint(0, 512, (1, 70), generator=torch.Generator().manual_seed(4))
    with make_policy("dense")(m):
        dense = m.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    with make_policy(name, 4096, page_size=4, dense_layers=0)(m):
        same = m.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True,
                          return_dict_in_generate=True)
    with make_policy(name, 16, page_size=4, dense_layers=0)(m):
        small = m.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    diff = lambda a, b: max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits))  # noqa: E731
    assert diff(dense, same) < 1e-4
    assert diff(dense, small) > 1e-4
