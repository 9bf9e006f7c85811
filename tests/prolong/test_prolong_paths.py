"""The fast path gives the reference path's perplexities (tiny models of each architecture)."""
import numpy as np
import pytest
import torch

from longforge.models import TINY_MODELS, tiny_model
from longforge.prolong.fast import FastScorer
from longforge.prolong.lds import doc_rng, sample_pairs
from longforge.prolong.reference import ReferenceScorer

RTOL = 1e-5  # fp32 on CPU; measured max relative difference ~1e-6


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("c", [16, 40])  # tiny-gemma3's sliding window is 32: 2c = 32 and 80
def test_fast_matches_reference(name, c):
    model = tiny_model(name)
    rng = np.random.default_rng(1)
    chunks = rng.integers(0, 512, size=(7, c))
    pi, pj = sample_pairs(7, 15, doc_rng(0, name))  # 15 of the 21 pairs
    s_ref, p_ref = ReferenceScorer(model, batch_size=3).perplexities(chunks, pi, pj)
    # batch_tokens=100 -> 2 pairs per batch when c=40: several batches, one partial; the
    # 512-entry vocabulary in blocks of 96: five whole blocks and a partial one
    fast = FastScorer(model, batch_tokens=100, head_rows=50, vocab_block=96)
    s_fast, p_fast = fast.perplexities(chunks, pi, pj)
    np.testing.assert_allclose(s_fast, s_ref, rtol=RTOL)
    np.testing.assert_allclose(p_fast, p_ref, rtol=RTOL)
    # the context matters (otherwise the comparison proves little)
    assert np.abs(p_ref / s_ref[pi] - 1).max() > 1e-3


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("vocab_block", [96, 512, 4096])
def test_blocked_head_nll_equals_log_softmax(softcap, vocab_block):
    """The online log-sum-exp over vocabulary blocks gives the NLL of the full log-softmax,
    whatever the block (partial last block, one block, a block wider than the vocabulary)."""
    model = tiny_model("tiny-gemma3", final_logit_softcapping=softcap)
    fast = FastScorer(model, head_rows=7, vocab_block=vocab_block)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, model.config.hidden_size, generator=g) * 3
    targets = torch.randint(0, 512, (20,), generator=g)
    with torch.no_grad():
        logits = model.get_output_embeddings()(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    want = -torch.log_softmax(logits.double(), -1).gather(1, targets[:, None]).squeeze(1)
    with torch.inference_mode():
        got = fast._nll(hidden, targets).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sliding_window_is_in_effect_for_tiny_gemma3():
    """With 2c > window, a model without the window gives other pair perplexities: both paths
    must follow the model's own sliding-window attention."""
    chunks = np.random.default_rng(2).integers(0, 512, size=(3, 40))
    pi, pj = np.array([1, 2, 2]), np.array([0, 0, 1])
    windowed = FastScorer(tiny_model("tiny-gemma3")).perplexities(chunks, pi, pj)[1]
    unwindowed = FastScorer(tiny_model("tiny-gemma3", sliding_window=4096)).perplexities(chunks, pi, pj)[1]
    assert np.abs(windowed / unwindowed - 1).max() > 1e-3


def test_fast_path_refuses_models_whose_logits_it_cannot_reproduce():
    model = tiny_model("tiny-llama")

    def scale_logits(module, args, output):  # like a model with a logit scale (e.g. Cohere)
        output.logits = output.logits * 3.0
        return output

    model.register_forward_hook(scale_logits)
    with pytest.raises(TypeError, match="--path reference"):
        FastScorer(model)


def test_empty_pair_list():
    model = tiny_model("tiny-llama")
    chunks = np.random.default_rng(3).integers(0, 512, size=(2, 8))
    single, pair = FastScorer(model).perplexities(chunks, np.zeros(0, int), np.zeros(0, int))
    assert single.shape == (2,) and pair.shape == (0,)
