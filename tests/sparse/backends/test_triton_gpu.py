"""The Triton backend == the reference backend: compiled on a GPU, run by Triton's interpreter on
the CPU (``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is first imported)."""
import os

import pytest
import torch

from longforge.sparse.backends import get_backend
from longforge.sparse.selection import criticality
from longforge.sparse.store import PagedKV

triton = pytest.importorskip("triton")
tk = pytest.importorskip("longforge.sparse.backends.triton_gpu")
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.fail("no GPU and TRITON_INTERPRET is not 1: the kernels cannot run", pytrace=False)
REF = get_backend("reference").quest
TRITON = get_backend("triton", DEVICE)


def _randn(*shape):
    return torch.randn(*shape).to(DEVICE)


def _store(b=2, hkv=2, d=16, n=45, P=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    st = PagedKV(b, hkv, d, capacity=64, page_size=P, dtype=dtype, device=DEVICE)
    st.append(torch.randn(b, hkv, n, d, generator=g).to(DEVICE, dtype),
              torch.randn(b, hkv, n, d, generator=g).to(DEVICE, dtype))
    return st


def test_update_meta_matches_store():
    st = _store()
    meta = torch.zeros_like(st.meta)
    tk.update_meta(st.k, meta, st.page_size, 0, st.length)
    assert torch.equal(meta[:, :, : st.n_pages], st.meta[:, :, : st.n_pages])
    meta2 = meta.clone()
    meta2[:, :, 5:] = 0
    tk.update_meta(st.k, meta2, st.page_size, 5, st.length)  # only pages from 5 on
    assert torch.equal(meta2, meta)


@pytest.mark.parametrize("hq", [2, 6])  # G = 1 and G = 3 (not a power of two)
def test_criticality_group_max(hq):
    st = _store()
    q = _randn(2, hq, 16)
    got = tk.criticality(q, st.meta, st.n_pages, block_pages=4)
    want = criticality(q, st).amax(dim=2)
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("budget", [1, 8, 20, 1000])  # < one page, partial, several, dense
@pytest.mark.parametrize("pad", [None, 7, 30])  # left padding of row 1 (30: its 15 tokens fit 20)
def test_decode_matches_reference(budget, pad):
    st = _store()
    q = _randn(2, 4, 16)
    mask = None
    if pad:
        mask = torch.ones(2, st.length, dtype=torch.bool, device=DEVICE)
        mask[1, :pad] = False
    want = REF(q, st, budget, 0.25, mask)
    got = TRITON.quest(q, st, budget, 0.25, mask)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_softcap_and_split_merge():
    st = _store(n=64)
    q = _randn(2, 4, 16) * 4
    want = REF(q, st, 1000, 0.5, None, softcap=5.0)
    pages = torch.arange(st.n_pages, device=DEVICE).expand(2, 2, -1)
    for per_split in (1, 3, 16):
        got = tk.sparse_attention(q, st.k, st.v, pages, st.page_size, st.length, 0.5,
                                  softcap=5.0, pages_per_split=per_split)
        assert torch.allclose(got, want, atol=1e-5)


def test_half_precision_inputs():
    st = _store(dtype=torch.float16)
    q = _randn(2, 4, 16).half()
    want = REF(q.float(), _store(), 20, 0.25)  # same values in fp32
    got = TRITON.quest(q, st, 20, 0.25)
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), want, atol=2e-2)


@pytest.mark.parametrize("budget", [1, 8, 20, 1000])
@pytest.mark.parametrize("pad", [None, 9, 28])
def test_gqa_selection_ablations_match_reference(budget, pad):
    st = _store(seed=3)
    q = _randn(2, 6, 16)  # G = 3
    mask = None
    if pad:
        mask = torch.ones(2, st.length, dtype=torch.bool, device=DEVICE)
        mask[0, :pad] = False
    want = REF(q, st, budget, 0.25, mask, selection="rank")
    got = TRITON.quest(q, st, budget, 0.25, mask, selection="rank")
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    with pytest.raises(ValueError, match="selection"):
        TRITON.quest(q, st, budget, 0.25, mask, selection="sum")
    want = REF(q, st, budget, 0.25, mask, selection="head")
    got = TRITON.quest(q, st, budget, 0.25, mask, selection="head")
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
