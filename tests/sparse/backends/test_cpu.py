"""The CPU backends (``torch``, ``c``) equal the reference backend; how ``auto`` chooses."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from longforge.bench.attention import dense_sdpa
from longforge.sparse import backends
from longforge.sparse.attention import attend
from longforge.sparse.backends import c_cpu as ck
from longforge.sparse.backends import get_backend
from longforge.sparse.backends.reference import gather_pages
from longforge.sparse.selection import criticality, top_pages, top_pages_by_rank, union_pages
from longforge.sparse.store import PagedKV

REF, TORCH, DEFAULT = get_backend("reference"), get_backend("torch"), get_backend()


def _store(b, hkv, d, n, P=4, cap=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    st = PagedKV(b, hkv, d, capacity=cap, page_size=P)
    st.append(torch.randn(b, hkv, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g))
    return st


CASES = [  # (batch, query heads, kv heads, length, budget): partial last page, GQA, batch > 1
    (1, 4, 4, 64, 16),
    (2, 8, 2, 37, 12),
    (3, 6, 3, 61, 20),
    (2, 4, 1, 50, 2),  # budget below one page: the last page only
    (2, 4, 2, 37, 64),  # budget >= context: dense
]


@pytest.mark.parametrize("b,hq,hkv,n,budget", CASES)
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_quest_fast_equals_reference(b, hq, hkv, n, budget, softcap):
    st = _store(b, hkv, 8, n)
    q = torch.randn(b, hq, 8)
    want = REF.quest(q, st, budget, 0.3, softcap=softcap)
    assert torch.allclose(TORCH.quest(q, st, budget, 0.3, softcap=softcap), want, atol=1e-5)
    assert torch.allclose(DEFAULT.quest(q, st, budget, 0.3, softcap=softcap), want, atol=1e-5)


@pytest.mark.parametrize("b,hq,hkv,n,budget", CASES)
def test_quest_fast_equals_reference_with_key_mask(b, hq, hkv, n, budget):
    st = _store(b, hkv, 8, n, seed=1)
    q = torch.randn(b, hq, 8)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, :7] = False  # left padding in the last row
    want = REF.quest(q, st, budget, 0.3, key_mask=mask)
    assert torch.allclose(TORCH.quest(q, st, budget, 0.3, key_mask=mask), want, atol=1e-5)


@pytest.mark.parametrize("b,hq,hkv,n,budget", CASES)
def test_dense_fast_and_sdpa_equal_reference(b, hq, hkv, n, budget):
    st = _store(b, hkv, 8, n, seed=2)
    q = torch.randn(b, hq, 8)
    want = REF.dense(q, st, 0.3)
    assert torch.allclose(TORCH.dense(q, st, 0.3), want, atol=1e-5)
    assert torch.allclose(DEFAULT.dense(q, st, 0.3), want, atol=1e-5)
    assert torch.allclose(dense_sdpa(q, st, 0.3), want, atol=1e-5)
    mask = torch.rand(b, n) > 0.3
    mask[:, -1] = True
    assert torch.allclose(TORCH.dense(q, st, 0.3, key_mask=mask),
                          REF.dense(q, st, 0.3, key_mask=mask), atol=1e-5)


def test_fast_path_selects_the_reference_pages():
    st = _store(2, 2, 8, 77, seed=3)
    q = torch.randn(2, 8, 8)
    fast = top_pages(TORCH.group_scores(q, st), 5).sort(-1).values
    assert torch.equal(fast, top_pages(criticality(q, st).amax(dim=2), 5).sort(-1).values)


def test_gather_returns_whole_pages_in_order():
    x = torch.arange(2 * 1 * 16 * 1.0).view(2, 1, 16, 1)
    got = TORCH.gather(x, torch.tensor([[[3, 1]], [[0, 2]]]), 4, "test")
    assert got[0, 0, :, 0].tolist() == [12, 13, 14, 15, 4, 5, 6, 7]
    assert got[1, 0, :, 0].tolist() == [16, 17, 18, 19, 24, 25, 26, 27]


def test_set_length_rebuilds_metadata_like_append():
    ref = _store(2, 2, 8, 45, seed=4)
    st = PagedKV(2, 2, 8, capacity=80, page_size=4)
    st.k[:, :, :45], st.v[:, :, :45] = ref.keys(), ref.values()
    st.set_length(45)
    assert torch.equal(st.meta[:, :, : st.n_pages], ref.meta[:, :, : ref.n_pages])
    with pytest.raises(ValueError):
        st.set_length(81)


# ------------------------------------------------------------------ the opt-in C kernel
needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None,
                              reason="no C compiler")


@needs_cc
@pytest.mark.parametrize("b,hq,hkv,n,budget", CASES + [(1, 4, 1, 64, 16)])  # last: split pages
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("masked", [False, True])
def test_c_kernel_equals_reference(b, hq, hkv, n, budget, softcap, masked):
    st = _store(b, hkv, 8, n, seed=5)
    q = torch.randn(b, hq, 8)
    mask = None
    if masked:
        mask = torch.ones(b, n, dtype=torch.bool)
        mask[-1, :7] = False
    want = REF.quest(q, st, budget, 0.3, key_mask=mask, softcap=softcap)
    got = get_backend("c").quest(q, st, budget, 0.3, key_mask=mask, softcap=softcap)
    assert torch.allclose(got, want, atol=1e-5)


@needs_cc
@pytest.mark.parametrize("g,d", [(4, 8), (1, 16), (6, 20)])  # one head; > 4 heads; a tail
def test_c_kernel_pieces_equal_torch_ops(g, d):
    st = _store(2, 2, d, 77, seed=6)
    q = torch.randn(2, 2 * g, d)
    qg = q.view(2, 2, g, d)
    q2 = torch.cat([qg.clamp(min=0), qg.clamp(max=0)], dim=-1).contiguous()
    per_head = criticality(q, st)  # [B, H_kv, G, n]
    assert torch.allclose(ck.group_criticality(q2, st.meta, st.n_pages), per_head.amax(dim=2),
                          atol=1e-5)
    assert torch.allclose(ck.group_criticality(q2, st.meta, st.n_pages, per_head=True), per_head,
                          atol=1e-5)
    pages = torch.tensor([[[3, 1, 19], [0, 2, 5]], [[7, 8, 9], [19, 4, 6]]])
    k, v = gather_pages(st.k, pages, 4), gather_pages(st.v, pages, 4)
    valid = torch.rand(2, 2, 12) > 0.2
    valid[..., 0] = True
    for mask, softcap in ((None, None), (valid, 5.0)):
        got = ck.sparse_attention(qg.contiguous(), st.k, st.v, pages, 4, mask, 0.3, softcap)
        want = attend(qg, k, v, None if mask is None else mask[:, :, None, :], 0.3, softcap)
        assert torch.allclose(got, want, atol=1e-5)


def test_unknown_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown sparse backend"):
        get_backend("fortran")
    monkeypatch.setenv("LONGFORGE_SPARSE_BACKEND", "fortran")
    with pytest.raises(ValueError, match="from the environment"):
        get_backend()


def test_c_kernel_that_cannot_be_built_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path))
    ck.library.cache_clear()
    try:
        with pytest.raises(ck.KernelBuildError, match="C compiler"):
            get_backend("c")
    finally:
        ck.library.cache_clear()


def test_auto_backend_without_a_compiler_warns_and_uses_torch(monkeypatch, tmp_path, caplog):
    """``auto`` (the default) takes the C kernel when it builds; otherwise the PyTorch backend,
    same method, with a warning that says why -- never silently."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path))
    backends._auto.cache_clear()
    ck.library.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="longforge.sparse.backends"):
            assert get_backend("auto").name == "torch"
        assert "C kernel cannot be built" in caplog.text and "no-such-compiler" in caplog.text
    finally:
        backends._auto.cache_clear()
        ck.library.cache_clear()


@needs_cc
def test_auto_backend_is_c_when_it_builds_and_the_environment_sets_the_default(monkeypatch):
    backends._auto.cache_clear()
    assert get_backend("auto").name == "c"
    env = {k: v for k, v in os.environ.items()
           if k not in ("LONGFORGE_CPU_KERNEL", "LONGFORGE_SPARSE_BACKEND")}
    code = "from longforge.sparse.backends import get_backend; print(get_backend().name)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["c"], out.stderr  # the default
    for var in ("LONGFORGE_SPARSE_BACKEND", "LONGFORGE_CPU_KERNEL"):  # the setting's default
        out = subprocess.run([sys.executable, "-c", code], env={**env, var: "torch"},
                             capture_output=True, text=True)
        assert out.stdout.split() == ["torch"], out.stderr


def test_rank_selection_lets_each_head_take_its_best_pages_in_turn():
    # one group of 2 heads over 6 pages; page 5 is the last (always kept)
    crit = torch.tensor([[[[9., 1., 8., 0., 2., 0.],     # head 0: pages 0, 2, 4, ...
                           [0., 1., 2., 3., 4., 0.]]]])  # head 1: pages 4, 3, 2, ...
    got = sorted(top_pages_by_rank(crit, 3)[0, 0].tolist())
    assert got == [0, 4, 5]  # the last page, head 0's best, head 1's best
    assert sorted(top_pages_by_rank(crit, 4)[0, 0].tolist()) == [0, 2, 4, 5]  # 0's second
    assert sorted(top_pages_by_rank(crit, 5)[0, 0].tolist()) == [0, 2, 3, 4, 5]  # 2 taken
    # the max over heads would take pages 0, 2 and 5: head 1's best page is left out
    assert sorted(top_pages(crit.amax(2), 3)[0, 0].tolist()) == [0, 2, 5]


@pytest.mark.parametrize("kernel", ["torch", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("b,hq,hkv,n,budget", CASES)
def test_rank_combine_equals_reference(kernel, b, hq, hkv, n, budget):
    st = _store(b, hkv, 8, n, seed=7)
    q = torch.randn(b, hq, 8)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, :5] = False
    want = REF.quest(q, st, budget, 0.3, key_mask=mask, selection="rank")
    got = get_backend(kernel).quest(q, st, budget, 0.3, key_mask=mask, selection="rank")
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="selection"):
        get_backend(kernel).quest(q, st, budget, 0.3, selection="sum")


@pytest.mark.parametrize("k", [1, 5, 13, 40])
def test_rank_selection_equals_taking_turns_by_hand(k):
    crit = torch.randn(2, 3, 4, 40, generator=torch.Generator().manual_seed(k))
    got = top_pages_by_rank(crit, k)
    for b in range(2):
        for h in range(3):
            c = crit[b, h].clone()
            c[:, -1] = float("inf")
            orders = [c[g].argsort(descending=True).tolist() for g in range(4)]
            taken = []
            for r in range(40):
                for g in range(4):
                    if len(taken) < k and orders[g][r] not in taken:
                        taken.append(orders[g][r])
            assert sorted(got[b, h].tolist()) == sorted(taken)


def test_union_pages_reads_each_chosen_page_once_and_masks_the_others_per_head():
    top = torch.tensor([[[[3, 1], [1, 4]],     # row 0: union {1, 3, 4}
                         [[2, 0], [0, 2]]]])   # row 1: union {0, 2}, padded to 3
    pages, mine = union_pages(top, n_pages=5)
    assert pages[0, 0].tolist() == [1, 3, 4]
    assert mine[0, 0].tolist() == [[True, True, False], [True, False, True]]
    assert pages[0, 1, :2].tolist() == [0, 2]
    assert mine[0, 1].tolist() == [[True, True, False], [True, True, False]]  # pad: no head


@pytest.mark.parametrize("kernel", ["torch", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("b,hq,hkv,n,budget", CASES + [(1, 4, 1, 64, 16)])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_per_head_fast_path_equals_reference(kernel, b, hq, hkv, n, budget, softcap):
    st = _store(b, hkv, 8, n, seed=11)
    q = torch.randn(b, hq, 8)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, :6] = False
    want = REF.quest(q, st, budget, 0.3, key_mask=mask, softcap=softcap, selection="head")
    got = get_backend(kernel).quest(q, st, budget, 0.3, key_mask=mask, softcap=softcap,
                                    selection="head")
    assert torch.allclose(got, want, atol=1e-5)


# ------------------------------------------------------------ left padding and the budget rule
DECODERS = {  # every Quest step a user can reach, by name (fast: the backend under test)
    "reference": lambda be, *a, **k: REF.quest(*a, **k),
    "rank reference": lambda be, *a, **k: REF.quest(*a, selection="rank", **k),
    "per-head reference": lambda be, *a, **k: REF.quest(*a, selection="head", **k),
    "fast": lambda be, *a, **k: be.quest(*a, **k),
    "fast rank": lambda be, *a, **k: be.quest(*a, selection="rank", **k),
    "fast per-head": lambda be, *a, **k: be.quest(*a, selection="head", **k),
}


def _padded_pair(pad: int, n: int, P: int = 4, hkv: int = 2, d: int = 8, seed: int = 21):
    """Row 0: ``n`` real keys; row 1: ``pad`` large padding keys (strong criticality, so that a
    selection blind to padding would take them) then the same ``n`` keys. Also row 0 alone."""
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(1, hkv, n, d, generator=g), torch.randn(1, hkv, n, d, generator=g)
    kp = torch.cat([10 * torch.randn(1, hkv, pad, d, generator=g), k], 2)
    vp = torch.cat([torch.randn(1, hkv, pad, d, generator=g), v], 2)
    both = PagedKV(2, hkv, d, capacity=pad + n, page_size=P)
    both.append(torch.cat([torch.cat([k, torch.zeros(1, hkv, pad, d)], 2), kp]),
                torch.cat([torch.cat([v, torch.zeros(1, hkv, pad, d)], 2), vp]))
    alone = PagedKV(1, hkv, d, capacity=n, page_size=P)
    alone.append(k, v)
    mask = torch.ones(2, pad + n, dtype=torch.bool)
    mask[0, n:] = False  # row 0's tail is unused (masked) so both rows share one cache
    mask[1, :pad] = False
    return both, alone, mask


@pytest.mark.parametrize("kernel", ["torch", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_padding_pages_never_take_a_slot_from_real_pages(kernel, name):
    """A left-padded row (padding a whole number of pages) selects among its real pages exactly
    as the same row alone does: its output is the same, at a budget far below its context."""
    both, alone, mask = _padded_pair(pad=24, n=40)
    q = torch.randn(1, 4, 8)
    be = get_backend(kernel)
    want = DECODERS[name](be, q, alone, 12, 0.3)
    got = DECODERS[name](be, q.repeat(2, 1, 1), both, 12, 0.3, key_mask=mask)
    assert torch.allclose(got[1], want[0], atol=1e-5)


@pytest.mark.parametrize("kernel", ["torch", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_a_row_whose_real_tokens_fit_the_budget_is_dense(kernel, name):
    """Row 1 holds 12 real tokens over 4 pages (padding 30, not a whole number of pages); at a
    budget of 12 tokens (3 pages) it is attended densely while row 0 (42 tokens) is sparse."""
    g = torch.Generator().manual_seed(3)
    st = PagedKV(2, 2, 8, capacity=42, page_size=4)
    st.append(torch.randn(2, 2, 42, 8, generator=g), torch.randn(2, 2, 42, 8, generator=g))
    mask = torch.ones(2, 42, dtype=torch.bool)
    mask[1, :30] = False
    q = torch.randn(2, 4, 8)
    dense = REF.dense(q, st, 0.3, key_mask=mask)
    got = DECODERS[name](get_backend(kernel), q, st, 12, 0.3, key_mask=mask)
    assert torch.allclose(got[1], dense[1], atol=1e-5)
    assert not torch.allclose(got[0], dense[0], atol=1e-3)  # row 0 really is sparse


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_context_that_fits_a_budget_of_no_whole_pages_is_dense(name):
    """20 tokens, budget 20, 16-token pages: the context fits, so the step is dense (a page
    count rule would attend the last page's 4 tokens only)."""
    st = _store(1, 2, 8, 20, P=16, cap=32)
    q = torch.randn(1, 4, 8)
    assert torch.allclose(DECODERS[name](DEFAULT, q, st, 20, 0.3), REF.dense(q, st, 0.3),
                          atol=1e-5)
    assert not torch.allclose(DECODERS[name](DEFAULT, q, st, 19, 0.3),
                              REF.dense(q, st, 0.3), atol=1e-3)
