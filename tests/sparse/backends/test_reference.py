"""What a Quest decode step computes, checked by brute force on the default backend (the one the
policies use), with the reference backend's page gather."""
import math

import torch

from longforge.sparse.backends import get_backend
from longforge.sparse.backends.reference import gather_pages
from longforge.sparse.selection import criticality, top_pages
from longforge.sparse.store import PagedKV

STEP = get_backend()  # the default backend
quest_decode, dense_decode = STEP.quest, STEP.dense


def quest_decode_per_head(*args, **kwargs):
    return STEP.quest(*args, selection="head", **kwargs)


def select_pages(q, st, budget_pages):
    return top_pages(criticality(q, st).amax(dim=2), budget_pages)


def _store(b=2, hkv=2, d=8, n=37, P=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    st = PagedKV(b, hkv, d, capacity=64, page_size=P)
    k, v = torch.randn(b, hkv, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g)
    # append in uneven pieces so page boundaries are crossed mid-append
    for lo, hi in [(0, 3), (3, 10), (10, 11), (11, 30), (30, n)]:
        st.append(k[:, :, lo:hi], v[:, :, lo:hi])
    return st, k, v


def test_metadata_is_min_max_of_each_page():
    st, k, _ = _store()
    P = st.page_size
    for p in range(st.n_pages):
        blk = k[:, :, p * P: min((p + 1) * P, k.shape[2])]
        assert torch.equal(st.meta[:, :, p, :8], blk.amax(2))
        assert torch.equal(st.meta[:, :, p, 8:], blk.amin(2))


def test_criticality_matches_brute_force_and_bounds_every_key():
    st, k, _ = _store()
    q = torch.randn(2, 4, 8)  # 4 query heads, 2 KV heads -> G = 2
    crit = criticality(q, st)  # [B, Hkv, G, pages]
    P = st.page_size
    for b in range(2):
        for h in range(4):
            kvh, g = divmod(h, 2)
            for p in range(st.n_pages):
                mx, mn = st.meta[b, kvh, p, :8], st.meta[b, kvh, p, 8:]
                brute = torch.maximum(q[b, h] * mx, q[b, h] * mn).sum()
                assert torch.allclose(crit[b, kvh, g, p], brute, atol=1e-5)
                keys = k[b, kvh, p * P: min((p + 1) * P, k.shape[2])]
                assert (keys @ q[b, h] <= crit[b, kvh, g, p] + 1e-5).all()


def test_full_budget_equals_dense():
    st, k, v = _store()
    q = torch.randn(2, 4, 8)
    dense = dense_decode(q, st, scale=1 / math.sqrt(8))
    ref = torch.softmax(torch.einsum("bhgd,bhtd->bhgt", q.view(2, 2, 2, 8), k) / math.sqrt(8), -1)
    ref = torch.einsum("bhgt,bhtd->bhgd", ref, v).reshape(2, 4, 8)
    assert torch.allclose(dense, ref, atol=1e-5)
    assert torch.allclose(quest_decode(q, st, token_budget=64, scale=1 / math.sqrt(8)), dense)


def test_sparse_attends_exactly_over_selected_pages_and_keeps_last_page():
    st, k, v = _store()
    q = torch.randn(2, 4, 8)
    pages = select_pages(q, st, budget_pages=3)
    assert (pages == st.n_pages - 1).any(-1).all()  # last page always selected
    out = quest_decode(q, st, token_budget=12, scale=0.5)
    P = st.page_size
    for b in range(2):
        for kvh in range(2):
            toks = sorted(t for p in pages[b, kvh].tolist() for t in range(p * P, (p + 1) * P)
                          if t < st.length)
            kk, vv = k[b, kvh, toks], v[b, kvh, toks]
            for g in range(2):
                w = torch.softmax(kk @ q[b, kvh * 2 + g] * 0.5, -1)
                assert torch.allclose(out[b, kvh * 2 + g], w @ vv, atol=1e-5)


def test_budget_below_one_page_keeps_the_last_page():
    st, k, v = _store()  # 37 tokens, pages of 4: the last page holds token 36 only
    q = torch.randn(2, 4, 8)
    out = quest_decode(q, st, token_budget=1, scale=0.5)
    last = (st.n_pages - 1) * st.page_size
    kk, vv = k[:, :, last:], v[:, :, last:]  # [2, 2, 1, 8]
    want = torch.softmax(torch.einsum("bhgd,bhtd->bhgt", q.view(2, 2, 2, 8), kk) * 0.5, -1) @ vv
    assert torch.allclose(out, want.reshape(2, 4, 8), atol=1e-5)


def test_key_mask_excludes_padding():
    st, k, v = _store()
    q = torch.randn(2, 4, 8)
    mask = torch.ones(2, st.length, dtype=torch.bool)
    mask[1, :5] = False  # left padding in row 1
    dense = dense_decode(q, st, 0.5, key_mask=mask)
    full = quest_decode(q, st, 10_000, 0.5, key_mask=mask)
    assert torch.allclose(dense, full)
    sparse = quest_decode(q, st, 16, 0.5, key_mask=mask)
    # a page of padding only weighs on nothing: changing its keys changes nothing (a page that
    # mixes padding and real keys keeps both in its min/max: a looser bound, still a bound)
    st.k[1, :, 0:4:2], st.k[1, :, 1:4:2] = 100.0, -100.0  # the highest criticality for any q
    st.v[1, :, :4] = -100.0
    st.set_length(st.length)
    assert torch.allclose(quest_decode(q, st, 16, 0.5, key_mask=mask), sparse, atol=1e-6)


def test_gather_pages_layout():
    x = torch.arange(2 * 1 * 16 * 1.0).view(2, 1, 16, 1)
    got = gather_pages(x, torch.tensor([[[3, 1]], [[0, 2]]]), 4)
    assert got[0, 0, :, 0].tolist() == [12, 13, 14, 15, 4, 5, 6, 7]
    assert got[1, 0, :, 0].tolist() == [16, 17, 18, 19, 24, 25, 26, 27]


def test_per_head_selection_attends_each_head_over_its_own_top_pages():
    st, k, v = _store()
    q = torch.randn(2, 4, 8)
    crit = criticality(q, st)  # [B, Hkv, G, pages]
    out = quest_decode_per_head(q, st, token_budget=12, scale=0.5)  # 3 pages per head
    P = st.page_size
    chosen = set()
    for b in range(2):
        for h in range(4):
            kvh, g = divmod(h, 2)
            c = crit[b, kvh, g].clone()
            c[-1] = float("inf")  # the last page always kept
            pages = c.topk(3).indices.tolist()
            chosen.add((b, kvh, tuple(sorted(pages))))
            toks = [t for p in pages for t in range(p * P, (p + 1) * P) if t < st.length]
            w = torch.softmax(k[b, kvh, toks] @ q[b, h] * 0.5, -1)
            assert torch.allclose(out[b, h], w @ v[b, kvh, toks], atol=1e-5)
    assert len(chosen) > 4  # heads of one group did choose different pages: the test can fail


def test_per_head_selection_is_per_group_selection_without_gqa_and_dense_at_full_budget():
    st, _, _ = _store()
    q = torch.randn(2, 2, 8)  # one query head per KV head
    mask = torch.ones(2, st.length, dtype=torch.bool)
    mask[0, :6] = False
    assert torch.allclose(quest_decode_per_head(q, st, 12, 0.5, key_mask=mask),
                          quest_decode(q, st, 12, 0.5, key_mask=mask), atol=1e-5)
    q = torch.randn(2, 4, 8)
    assert torch.allclose(quest_decode_per_head(q, st, 10_000, 0.5, key_mask=mask),
                          dense_decode(q, st, 0.5, key_mask=mask), atol=1e-5)
