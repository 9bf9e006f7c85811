"""Quest inside stock HF generate on tiny models of each architecture."""
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import longforge
from longforge.models import cache_kw, tiny_model
from longforge.sparse import policies
from longforge.sparse.hf import ATTN_NAME, PagedLayer, SparseCache
from longforge.sparse.policies import QuestCache

ARCHS = ["tiny-gemma3", "tiny-llama", "tiny-qwen2"]
GEN = dict(do_sample=False, output_logits=True, return_dict_in_generate=True)


def _inputs(b=2, t=70, pad=(0, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (b, t), generator=g)
    mask = torch.ones_like(ids)
    for row, p in enumerate(pad[:b]):
        mask[row, :p] = 0
    return ids, mask


def _gen(model, ids, mask, n=10):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, **GEN)


def _maxdiff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("t", [63, 64, 65, 70])  # page boundaries (P=16); > sliding window 32
def test_full_budget_equals_stock_model(arch, t):
    m = tiny_model(arch)
    ids, mask = _inputs(t=t)  # batch 2, second row left-padded; GQA 4 query / 2 KV heads
    ref = _gen(m, ids, mask)
    with longforge.quest(m, token_budget=4096, page_size=16, dense_layers=0):
        out = _gen(m, ids, mask)
    assert _maxdiff(ref, out) < 1e-4
    assert torch.equal(ref.sequences, out.sequences)


def test_gemma_scaling_is_honoured():
    m = tiny_model("tiny-gemma3", query_pre_attn_scalar=64)  # scaling 1/8, not head_dim**-0.5
    ids, mask = _inputs(t=50)
    ref = _gen(m, ids, mask)
    with longforge.quest(m, token_budget=4096, dense_layers=0):
        out = _gen(m, ids, mask)
    assert _maxdiff(ref, out) < 1e-4


def test_softcap_is_honoured():
    from transformers import AutoModelForCausalLM, Gemma2Config

    cfg = Gemma2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       sliding_window=32, attn_logit_softcapping=5.0,
                       attn_implementation="eager")
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    ids, mask = _inputs(t=50)
    ref = _gen(m, ids, mask)
    with longforge.quest(m, token_budget=4096, dense_layers=0):
        out = _gen(m, ids, mask)
    assert _maxdiff(ref, out) < 1e-4


def _spy(monkeypatch):
    """Record the decode steps the policies ask their backend for."""
    calls = []
    real = policies.get_backend

    class Spy:
        def __init__(self, backend):
            self.backend = backend

        def quest(self, qv, store, budget, *a, **k):
            calls.append(("quest", store.length, budget))
            return self.backend.quest(qv, store, budget, *a, **k)

        def dense(self, qv, store, *a, **k):
            calls.append(("dense", store.length, None))
            return self.backend.dense(qv, store, *a, **k)

    monkeypatch.setattr(policies, "get_backend", lambda *a, **k: Spy(real(*a, **k)))
    return calls


def test_small_budget_routes_full_layers_to_quest_and_keeps_sliding_stock(monkeypatch):
    calls = _spy(monkeypatch)
    m = tiny_model("tiny-gemma3")  # layers 2 and 5 are full attention, the rest sliding
    ids, mask = _inputs(t=80)
    with longforge.quest(m, token_budget=32, dense_layers=3):
        out = _gen(m, ids, mask, n=4)
    # 3 decode steps (the first new token comes from prefill) x 2 full layers; layer 2 < 3 dense
    assert [c[0] for c in calls] == ["dense", "quest"] * 3
    assert all(c[2] == 32 for c in calls if c[0] == "quest")
    ref = _gen(m, ids, mask, n=4)
    assert _maxdiff(ref, out) > 1e-4  # the sparse path really changed the output


def test_budget_below_one_page_attends_to_the_last_page_only():
    torch.manual_seed(0)
    layer = PagedLayer(max_len=64, page_size=16)
    k, v = torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8)
    layer.update(k, v)
    q = torch.randn(1, 4, 8)
    out = policies.Quest(token_budget=5, page_size=16, dense_layers=0).decode(
        0, layer, q, None, 0.3, None)
    qg = q.view(1, 2, 2, 8)
    ref = torch.softmax(qg @ k[:, :, 32:].transpose(-1, -2) * 0.3, -1) @ v[:, :, 32:]
    assert torch.allclose(out, ref.reshape(1, 4, 8), atol=1e-6)


LEFT_PADDED = {  # policy -> (its context on a model, left padding of row 1, prompt length)
    # StreamingLLM's kept set is defined on real tokens
    "streaming": (lambda m: longforge.streaming_llm(m, token_budget=24, sinks=4,
                                                    dense_layers=0), 7, 70),
    # Quest never spends a page slot on padding (one whole page of it here; 2 of 5 pages read)
    "quest": (lambda m: longforge.quest(m, token_budget=32, page_size=16, dense_layers=0), 16, 80),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("policy", sorted(LEFT_PADDED))
def test_sparse_decode_with_left_padding_matches_unpadded_row(arch, policy):
    """A left-padded row decodes as it does alone, at a budget far below its context."""
    context, pad, t = LEFT_PADDED[policy]
    m = tiny_model(arch)
    ids, mask = _inputs(t=t, pad=(0, pad))
    with context(m):
        both = _gen(m, ids, mask)
        alone = _gen(m, ids[1:, pad:], mask[1:, pad:])
    diff = max((a[1] - b[0]).abs().max().item() for a, b in zip(both.logits, alone.logits))
    assert diff < 1e-4
    assert _maxdiff(_gen(m, ids[1:, pad:], mask[1:, pad:]), alone) > 1e-4  # sparse, not dense


def test_draft_and_verify_decoding_is_refused_not_run_densely():
    """Assisted / prompt-lookup decoding verifies drafts in multi-token forwards, which would
    run densely: refused with a reason, not silently dense."""
    m = tiny_model("tiny-llama")
    ids, mask = _inputs(b=1, t=40)
    with longforge.quest(m, token_budget=16):
        with pytest.raises(ValueError, match="prompt_lookup_num_tokens.*densely"):
            m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4,
                       prompt_lookup_num_tokens=3)


def test_context_manager_restores_everything():
    m = tiny_model("tiny-llama")
    ids, mask = _inputs(t=40)
    before = m(input_ids=ids, attention_mask=mask).logits
    impl = m.config._attn_implementation
    with longforge.quest(m, token_budget=16):
        assert m.config._attn_implementation == ATTN_NAME
        assert AttentionMaskInterface._global_mapping[ATTN_NAME] is sdpa_mask
        assert "generate" in vars(m)
    assert m.config._attn_implementation == impl
    assert "generate" not in vars(m) and not hasattr(m, "_longforge_active")
    assert ATTN_NAME not in AttentionInterface._global_mapping
    assert ATTN_NAME not in AttentionMaskInterface._global_mapping
    assert all(not mod._forward_pre_hooks and not mod._forward_hooks for mod in m.modules())
    assert torch.equal(before, m(input_ids=ids, attention_mask=mask).logits)
    with pytest.raises(RuntimeError, match="boom"):  # restored on errors too
        with longforge.quest(m, token_budget=16):
            raise RuntimeError("boom")
    assert m.config._attn_implementation == impl and "generate" not in vars(m)


def test_user_cache_and_forward_calls():
    m = tiny_model("tiny-qwen2")
    ids, mask = _inputs(b=1, t=50)
    with longforge.quest(m, token_budget=4096, dense_layers=0):
        cache = QuestCache(m, token_budget=4096)
        out = m.generate(input_ids=ids, max_new_tokens=3, **cache_kw(m, cache), **GEN)
        assert isinstance(cache.layers[0], PagedLayer) and cache.get_seq_length() == 52
        from transformers import DynamicCache
        with pytest.raises(TypeError, match="SparseCache"):
            m.generate(input_ids=ids, max_new_tokens=2, **cache_kw(m, DynamicCache()))
    assert torch.equal(out.sequences, m.generate(input_ids=ids, max_new_tokens=3,
                                                 do_sample=False))


def test_cache_grows_past_its_preallocation():
    m = tiny_model("tiny-llama")
    ids, _ = _inputs(b=1, t=30)
    with longforge.dense(m):
        cache = SparseCache(m, max_len=8)
        out = m.generate(input_ids=ids, max_new_tokens=5, **cache_kw(m, cache), **GEN)
    assert cache.layers[0].store.capacity >= 34
    ref = m.generate(input_ids=ids, max_new_tokens=5, **GEN)
    assert _maxdiff(ref, out) < 1e-4


@pytest.mark.parametrize("ctx", ["streaming_llm", "h2o"])
def test_other_policies_at_full_budget_equal_dense(ctx):
    m = tiny_model("tiny-gemma3")
    ids, mask = _inputs(t=60)
    ref = _gen(m, ids, mask)
    with getattr(longforge, ctx)(m, token_budget=4096, dense_layers=0):
        out = _gen(m, ids, mask)
    assert _maxdiff(ref, out) < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("selection", ["head", "rank"])
def test_other_selections_in_generate(arch, selection):
    """``selection="head"`` / ``"rank"`` equal the stock model at full budget, and at a small
    budget they are other methods than the default (the GQA groups have 2 query heads)."""
    m = tiny_model(arch)
    ids, mask = _inputs(t=70)
    ref = _gen(m, ids, mask)
    with longforge.quest(m, token_budget=4096, dense_layers=0, selection=selection):
        out = _gen(m, ids, mask)
    assert _maxdiff(ref, out) < 1e-4
    with longforge.quest(m, token_budget=16, page_size=4, dense_layers=0, selection=selection):
        head = _gen(m, ids, mask)
    with longforge.quest(m, token_budget=16, page_size=4, dense_layers=0):
        group = _gen(m, ids, mask)
    assert _maxdiff(head, group) > 1e-3
    with pytest.raises(ValueError, match="selection"):
        longforge.quest(m, selection="token")
